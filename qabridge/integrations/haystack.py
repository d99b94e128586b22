"""A Haystack 2 reader: qabridge's extractive QA where a Haystack pipeline uses ``ExtractiveReader``.

    from haystack import Document
    from qabridge.integrations.haystack import QABridgeReader

    reader = QABridgeReader()                       # the built-in bert-qa, in this process
    reader.run(query="Who wrote it?", documents=[Document(content="It was written by Ada.")])
    # {'answers': [ExtractedAnswer(data='Ada', score=0.99.., document_offset=Span(start=18, end=21), ...),
    #              ExtractedAnswer(data=None, ...)]}    # the no-answer entry

``run``'s inputs and the ``answers`` output are those of Haystack's ``ExtractiveReader``
(``TransformersExtractiveReader`` in the transformers-haystack package since haystack-ai 3.0): every
document is read, the candidates of all documents are merged, sorted by score, overlapping spans of
one document deduplicated (``overlap_threshold``), cut to ``top_k``, then the no-answer entry
(``data=None``, score ``prod(1 - score)`` over the kept answers, as Haystack computes it) is added
and ``score_threshold`` applied. ``document_offset`` indexes ``document.content``.

Scores: qabridge's span probability is normalised within its own window, so it does not compare
across documents; the score here is the span's margin over its document's no-answer probability,
``sigmoid(log p(span) - log p(no answer) + threshold)`` with the model's abstention threshold
(0 for ``bert-qa``): below 0.5 exactly when ``handle_impossible_answer`` would abstain on that
document. Within one document it orders spans as ``qabridge.pipeline`` does. The raw numbers are in
``meta`` (``span_probability``, ``no_answer_probability``).

``url=`` reads through a running bridge (``qabridge serve``) instead, with ``/api/qa/batch``.
"""

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

try:
    from haystack import Document, ExtractedAnswer, component, default_from_dict, default_to_dict
    from haystack.utils import Secret, deserialize_secrets_inplace
except ImportError as exc:  # the extra is optional: say how to get it
    raise ImportError("qabridge.integrations.haystack needs haystack-ai: pip install 'qabridge[haystack]'") from exc

from qabridge.core.decode import null_log_ratio
from qabridge.errors import UsageError

# No ``from __future__ import annotations`` here: Haystack reads run()'s annotations as types to
# build the component's input sockets.

log = logging.getLogger(__name__)

#: QARequest.top_k's upper bound: the most spans one bridge request returns.
HTTP_MAX_TOP_K = 20
#: Items per ``/api/qa/batch`` request when ``max_batch_size`` is unset (the bridge's limit is 64).
HTTP_BATCH = 32
#: Candidates read per document when ``answers_per_seq`` is unset (ExtractiveReader's default).
ANSWERS_PER_DOC = 20


@dataclass
class _Read:
    """One document's reading: spans ``(start, end, probability)`` best first, and p(no answer)."""

    spans: list[tuple[int, int, float]]
    null: float


class _InProcess:
    """``qabridge.pipeline`` in this process."""

    def __init__(self, model: str | None, engine: str, threads: int | None):
        from qabridge.api import pipeline

        self.qa = pipeline(model=model, engine=engine, threads=threads)
        self.threshold = float(self.qa.model_file.abstention["default_threshold"])

    def read(self, query: str, contents: list[str], *, n: int, max_answer_len: int | None, max_seq_len: int | None,
             stride: int | None, batch: int | None) -> list[_Read]:
        # null_threshold=-inf puts the no-answer entry first (it beats every span), so each result is
        # [no answer, span 1..n]: its probability and the n best spans, whatever the model's cut.
        opts = {"top_k": n + 1, "handle_impossible_answer": True, "null_threshold": -math.inf}
        opts.update({k: v for k, v in (("max_answer_len", max_answer_len), ("max_seq_len", max_seq_len),
                                       ("doc_stride", stride)) if v is not None})
        out = []
        for chunk in _chunks(contents, batch):
            for answers in self.qa(question=[query] * len(chunk), context=chunk, **opts):
                out.append(_Read([(a["start"], a["end"], a["score"]) for a in answers[1:]], answers[0]["score"]))
        return out

    def close(self) -> None:
        self.qa.close()


class _Http:
    """A running bridge, through :class:`qabridge.Client`."""

    def __init__(self, url: str, model: str | None, api_key: str | None, timeout: float):
        from qabridge.client import Client

        self.client = Client(url, api_key=api_key, timeout=timeout)
        self.model = model
        try:
            self.threshold = float(self.client.model_info(model).abstention.get("default_threshold") or 0.0)
        except Exception:
            self.client.close()
            raise

    def read(self, query: str, contents: list[str], *, n: int, max_answer_len: int | None, max_seq_len: int | None,
             stride: int | None, batch: int | None) -> list[_Read]:
        if max_seq_len is not None or stride is not None:
            raise UsageError("max_seq_length and stride are not available over HTTP: the bridge windows with the model's settings")
        base = {k: v for k, v in (("top_k", min(n, HTTP_MAX_TOP_K)), ("max_answer_len", max_answer_len),
                                  ("model", self.model)) if v is not None}
        out = []
        for chunk in _chunks(contents, batch or HTTP_BATCH):
            for r in self.client.batch([{"question": query, "context": c, **base} for c in chunk]):
                if isinstance(r, Exception):  # one document's error fails the run, as in-process
                    raise r
                out.append(_Read([(a.start, a.end, a.score) for a in r.answers if a.start is not None],
                                 r.no_answer_probability))
        return out

    def close(self) -> None:
        self.client.close()


def _chunks(items: list[str], size: int | None) -> list[list[str]]:
    if not size or size >= len(items):
        return [items]
    return [items[i : i + size] for i in range(0, len(items), size)]


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _overlaps(a: ExtractedAnswer, b: ExtractedAnswer, threshold: float) -> bool:
    """Whether two answers of one document overlap by more than ``threshold`` of either's length
    (ExtractiveReader's ``overlap_threshold`` rule)."""
    if a.document is None or b.document is None or a.document.id != b.document.id:
        return False
    if a.document_offset is None or b.document_offset is None:
        return False
    (s1, e1), (s2, e2) = (a.document_offset.start, a.document_offset.end), (b.document_offset.start, b.document_offset.end)
    common = min(e1, e2) - max(s1, s2)
    if common <= 0:
        return False
    return common / max(e1 - s1, 1) > threshold or common / max(e2 - s2, 1) > threshold


def _deduplicate(answers: list[ExtractedAnswer], threshold: float | None) -> list[ExtractedAnswer]:
    """Best first in, best first out: an answer overlapping a better one of its document is dropped."""
    if threshold is None:
        return answers
    kept: list[ExtractedAnswer] = []
    for a in answers:
        if not any(_overlaps(k, a, threshold) for k in kept):
            kept.append(a)
    return kept


def _meta(doc: Document, start: int, p: float, null: float) -> dict[str, Any]:
    meta: dict[str, Any] = {"span_probability": p, "no_answer_probability": null}
    page = (doc.meta or {}).get("page_number")
    # As ExtractiveReader: a paged document (pages split by form feeds) says on which page the answer is.
    if isinstance(page, int) and not isinstance(page, bool):
        meta["answer_page_number"] = page + doc.content[:start].count("\f")
    return meta


@component
class QABridgeReader:
    """Extractive QA over Haystack Documents with a qabridge model, in-process or through a bridge.

    :param model: In-process: a built-in model's name (``"bert-qa"``, ``"bert-qa-accurate"``), a
        GGUF/ONNX path or ``"ollama:NAME"``, as ``qabridge.pipeline`` takes; None is the default
        model (``bert-qa``). With ``url``: which of the bridge's models answers (None: its default).
    :param url: A running bridge (``"http://127.0.0.1:8080"``) to read through instead of in-process.
    :param api_key: The bridge's key (``QABRIDGE_API_KEY`` by default), with ``url``.
    :param top_k: Answers to return per query (the no-answer entry comes on top of these).
    :param score_threshold: Keep only answers with at least this score.
    :param max_seq_length: Window length in tokens (default: the model's); in-process only.
    :param stride: Tokens of overlap between a long document's windows (default: the model's); in-process only.
    :param max_batch_size: Documents per call to the model (in-process) or per ``/api/qa/batch`` request.
    :param answers_per_seq: Candidate spans read per document (default: 20, or ``top_k`` if larger;
        at most 20 over HTTP).
    :param no_answer: Add the no-answer entry (``data=None``).
    :param overlap_threshold: Drop an answer that overlaps a better one of its document by more than
        this fraction (None keeps all).
    :param max_answer_length: Longest answer in tokens (default: the model's, 30).
    :param null_threshold: Shifts the score (see the module docstring); default the model's abstention threshold.
    :param engine: In-process engine: ``auto`` (the fastest measured on this CPU), ``llama.cpp`` or ``onnx``.
    :param threads: In-process CPU threads (default: the engine's choice).
    :param timeout: Seconds to wait for the bridge, with ``url``.
    """

    def __init__(self, model: str | None = None, url: str | None = None,
                 api_key: Secret | None = Secret.from_env_var("QABRIDGE_API_KEY", strict=False), top_k: int = 20,
                 score_threshold: float | None = None, max_seq_length: int | None = None, stride: int | None = None,
                 max_batch_size: int | None = None, answers_per_seq: int | None = None, no_answer: bool = True,
                 overlap_threshold: float | None = 0.01, max_answer_length: int | None = None,
                 null_threshold: float | None = None, engine: str = "auto", threads: int | None = None,
                 timeout: float = 120.0):
        if top_k < 1:
            raise UsageError(f"top_k must be >= 1, got {top_k}")
        if url is not None and (max_seq_length is not None or stride is not None):
            raise UsageError("max_seq_length and stride are not available over HTTP: the bridge windows with the model's settings")
        self.model, self.url, self.api_key = model, url, api_key
        self.top_k, self.score_threshold, self.no_answer = top_k, score_threshold, no_answer
        self.max_seq_length, self.stride, self.max_batch_size = max_seq_length, stride, max_batch_size
        self.answers_per_seq, self.overlap_threshold = answers_per_seq, overlap_threshold
        self.max_answer_length, self.null_threshold = max_answer_length, null_threshold
        self.engine, self.threads, self.timeout = engine, threads, timeout
        self._backend: _InProcess | _Http | None = None
        self._lock = threading.Lock()

    # -- lifetime -----------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Loads the model (in-process) or connects to the bridge and reads its model's threshold."""
        with self._lock:
            if self._backend is None:
                if self.url is not None:
                    key = self.api_key.resolve_value() if self.api_key is not None else None
                    self._backend = _Http(self.url, self.model, key, self.timeout)
                else:
                    self._backend = _InProcess(self.model, self.engine, self.threads)

    def close(self) -> None:
        """Frees the engine's memory (in-process) or the HTTP connections; a later run warms up again."""
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None

    # -- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, model=self.model, url=self.url, api_key=self.api_key.to_dict() if self.api_key is not None else None,
            top_k=self.top_k, score_threshold=self.score_threshold, max_seq_length=self.max_seq_length,
            stride=self.stride, max_batch_size=self.max_batch_size, answers_per_seq=self.answers_per_seq,
            no_answer=self.no_answer, overlap_threshold=self.overlap_threshold,
            max_answer_length=self.max_answer_length, null_threshold=self.null_threshold, engine=self.engine,
            threads=self.threads, timeout=self.timeout,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QABridgeReader":
        data = {**data, "init_parameters": dict(data["init_parameters"])}  # the caller's dict stays as it was
        deserialize_secrets_inplace(data["init_parameters"], keys=["api_key"])
        return default_from_dict(cls, data)

    # -- reading ------------------------------------------------------------------------------
    @component.output_types(answers=list[ExtractedAnswer])
    def run(self, query: str, documents: list[Document], top_k: int | None = None,
            score_threshold: float | None = None, max_seq_length: int | None = None, stride: int | None = None,
            max_batch_size: int | None = None, answers_per_seq: int | None = None, no_answer: bool | None = None,
            overlap_threshold: float | None = None) -> dict[str, list[ExtractedAnswer]]:
        """Answers ``query`` from ``documents``: a list of ExtractedAnswer sorted by score, best first.

        Each argument left None takes the value given to the constructor.
        """
        if not documents:
            return {"answers": []}
        top_k = self.top_k if top_k is None else top_k
        if top_k < 1:
            raise UsageError(f"top_k must be >= 1, got {top_k}")
        score_threshold = self.score_threshold if score_threshold is None else score_threshold
        no_answer = self.no_answer if no_answer is None else no_answer
        overlap_threshold = self.overlap_threshold if overlap_threshold is None else overlap_threshold
        per_doc = answers_per_seq or self.answers_per_seq or max(top_k, ANSWERS_PER_DOC)
        readable = self._readable(documents)
        self.warm_up()
        backend = self._backend
        assert backend is not None
        reads = backend.read(
            query, [d.content for d in readable], n=per_doc, max_answer_len=self.max_answer_length,
            max_seq_len=max_seq_length if max_seq_length is not None else self.max_seq_length,
            stride=stride if stride is not None else self.stride,
            batch=max_batch_size if max_batch_size is not None else self.max_batch_size,
        ) if readable else []
        threshold = self.null_threshold if self.null_threshold is not None else backend.threshold
        candidates = [
            ExtractedAnswer(query=query, score=_sigmoid(threshold - null_log_ratio(r.null, p)), data=doc.content[s:e],
                            document=doc, document_offset=ExtractedAnswer.Span(s, e), meta=_meta(doc, s, p, r.null))
            for doc, r in zip(readable, reads) for s, e, p in r.spans
        ]
        # A stable sort: equal scores keep the model's own order within a document.
        candidates.sort(key=lambda a: a.score, reverse=True)
        answers = _deduplicate(candidates, overlap_threshold)[:top_k]
        if no_answer:
            answers.append(ExtractedAnswer(query=query, score=math.prod(1 - a.score for a in answers), data=None,
                                           document=None, meta={}))
            answers.sort(key=lambda a: a.score, reverse=True)
        if score_threshold is not None:
            answers = [a for a in answers if a.score >= score_threshold]
        return {"answers": answers}

    @staticmethod
    def _readable(documents: Sequence[Document]) -> list[Document]:
        out = []
        for d in documents:
            if d.content is None or not d.content.strip():
                # As ExtractiveReader: a document without text is skipped, not an error.
                log.warning("Document %s has no text: QABridgeReader skips it", d.id)
                continue
            out.append(d)
        return out
