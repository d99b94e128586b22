"""Request and response types of the bridge's HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class QARequest(BaseModel):
    """One extractive question over a context (or over several documents)."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, description="The question, in plain text.")
    """The question, in plain text."""
    context: str | None = Field(default=None, min_length=1, description="The text to take the answer from.")
    """The text to take the answer from. Give either this or ``documents``."""
    documents: list[str] | None = Field(
        default=None, min_length=1, description="Several passages instead of one context; ranked by embedding similarity."
    )
    """Several passages instead of one context; the best ones are read."""
    top_k: int = Field(default=1, ge=1, le=20, description="How many distinct answers to return, best first.")
    """How many distinct answers to return, best first."""
    max_answer_len: int | None = Field(default=None, ge=1, le=512, description="Longest answer, in tokens.")
    """Longest answer, in tokens (default: the model's, usually 30)."""
    model: str | None = Field(default=None, description="Which loaded model answers (default: the bridge's default).")
    """Which loaded model answers (see ``GET /api/models``)."""
    top_documents: int | None = Field(
        default=None, ge=1, le=200,
        description="With documents: how many top-ranked passages are read (default: all of them when there are at most 8, else the best 5).",
    )
    """With ``documents``: how many of the top-ranked passages are read for spans."""
    handle_impossible_answer: bool = Field(
        default=False,
        description="Abstain (answer null) when the context does not hold the answer, judged with the model's tuned threshold "
        "or null_threshold. Off by default, as in the transformers pipeline: every question gets a span.",
    )
    """Abstain (``answer: null``) when the text does not answer; off by default."""
    null_threshold: float | None = Field(
        default=None, ge=-100, le=100,
        description="With handle_impossible_answer: abstain iff log p(no answer) - log p(best span) > this "
        "(default: the model's stored threshold, else 0 = the empty answer wins when it is likelier; with documents, "
        "the model's stored documents cut first).",
    )
    """Abstention threshold for this request (a log-probability ratio)."""


class AnswerItem(BaseModel):
    answer: str | None = Field(description="The answer text, exactly ``context[start:end]``; null for 'the text does not say'.")
    score: float = Field(description="Probability of this span (p_start * p_end over the window), 0..1; for null, the no-answer probability.")
    start: int | None = Field(description="Character offset of the answer's first character in the context (null when abstaining).")
    end: int | None = Field(description="Character offset one past the answer's last character (null when abstaining).")
    document: int | None = Field(default=None, description="With documents: index of the document the answer is from.")


class RankedPassage(BaseModel):
    document: int = Field(description="Index of the document the passage is from.")
    start: int = Field(description="Character offset of the passage in its document.")
    end: int = Field(description="Character offset one past the passage's end.")
    similarity: float = Field(description="Cosine similarity between question and passage embeddings.")


class QAResponse(BaseModel):
    answer: str | None = Field(description="The best answer; null when the model abstains (handle_impossible_answer).")
    score: float = Field(description="Probability of the best answer (of no answer, when abstaining).")
    start: int | None = Field(description="Character offset of the best answer (null when abstaining).")
    end: int | None = Field(description="Character offset one past the best answer (null when abstaining).")
    no_answer_probability: float = Field(
        default=0.0, description="p_start([CLS]) * p_end([CLS]), the smallest over the windows read: how likely the text does not answer."
    )
    abstained: bool = Field(default=False, description="True when handle_impossible_answer made the answer null.")
    null_threshold: float | None = Field(default=None, description="The threshold the abstention was judged with (with handle_impossible_answer).")
    document: int | None = Field(default=None, description="With documents: which document the best answer is from.")
    answers: list[AnswerItem] = Field(description="The top_k answers, best first.")
    model: str = Field(description="The model that answered.")
    engine: str = Field(description="The engine that computed the encoder states.")
    windows: int = Field(description="How many windows the context was split into.")
    timing_ms: dict[str, float] = Field(description="Time spent per stage, in milliseconds.")
    ranking: list[RankedPassage] | None = Field(default=None, description="With documents: the passages read, best first.")
    embedder: str | None = Field(default=None, description="With documents: which embeddings ranked the passages.")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    qa_pairs: list[dict] = Field(min_length=1, description="Requests of the same shape as POST /api/qa.")
    """Requests of the same shape as ``POST /api/qa``; each is validated on its own."""


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code.")
    message: str = Field(description="Human-readable explanation.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class BatchResponse(BaseModel):
    results: list[QAResponse | ErrorResponse] = Field(description="One result per item, in order; errors in place.")


class HealthResponse(BaseModel):
    status: str = Field(description="ok, loading, degraded or error.")
    ready: bool = Field(description="True when the default model can answer.")
    engine: str | None = Field(default=None, description="Engine of the default model.")
    model: str | None = Field(default=None, description="Name of the default model.")
    models: dict[str, str] = Field(default_factory=dict, description="Each model's engine.")
    ollama: dict | None = Field(default=None, description="Ollama host, reachability and version, when configured.")
    error: str | None = Field(default=None, description="Why loading failed, if it did.")
    inflight: int = Field(default=0, description="POST requests being answered now.")
    engine_choice: dict | None = Field(default=None, description="With --engine auto: the engine chosen for the default model (when built in) and what each candidate measured on this CPU.")
    embedding_cache: dict[str, int] | None = Field(default=None, description="Passage-embedding cache: hits, misses, size.")


class ModelInfo(BaseModel):
    name: str = Field(description="The name requests use in `model`.")
    file: str = Field(description="The GGUF file the encoder runs from (Ollama's blob for Ollama models).")
    size: int = Field(description="File size in bytes.")
    sha256: str = Field(description="SHA-256 of the file.")
    quantization: str = Field(description="Weight type of the 2-D tensors (f32, f16, bf16, q8_0).")
    base_model: str | None = Field(default=None, description="The encoder it was trained from (e.g. sentence-transformers/all-MiniLM-L6-v2, BAAI/bge-small-en-v1.5).")
    layers: int = Field(description="Transformer layers in the encoder (6 for MiniLM-L6, 12 for bge-small).")
    max_seq_len: int = Field(description="Window length in tokens.")
    doc_stride: int = Field(description="Overlap between consecutive windows, in tokens.")
    engine: str = Field(description="The engine that computes the encoder states.")
    device: str = Field(default="cpu", description="Where the encoder runs: cpu or cuda.")
    batching: dict | None = Field(default=None, description="With --batch-requests: engine calls made, windows encoded, the most requests one call served.")
    source: str = Field(description="file, ollama, or adapter (a LoRA applied at run time over a shared base)")
    adapter_of: str | None = Field(default=None, description="For an adapter: the base model file (GGUF, or OpenVINO IR under --engine openvino) it is applied over, one copy shared by every adapter.")
    engine_choice: dict | None = Field(default=None, description="With --engine auto: how the engine was chosen on this CPU.")
    abstention: dict = Field(default_factory=dict, description="Trained with unanswerable examples?, the stored null threshold and how it was tuned.")
    metadata: dict = Field(description="The GGUF's qabridge.* metadata (span head omitted).")


class ModelList(BaseModel):
    default: str | None = Field(description="The model that answers when a request names none.")
    models: list[ModelInfo] = Field(description="Every model this bridge serves.")
