"""Per-token hidden states from ONNX Runtime, span head in numpy: the llama.cpp engine's interface.

Serves the ``.onnx`` files ``qabridge export --format onnx`` writes (export/onnx_export.py):
the encoder graph maps ``input_ids``/``attention_mask`` to the last hidden state, and the span
head, window settings and vocabulary come from the model's metadata, so the file alone serves.
ONNX Runtime rejects bad input with an exception rather than aborting the process, but the
limits are still checked here first so the errors read the same as the llama.cpp engine's.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from qabridge.core.gguf_keys import TASK_QA, Key
from qabridge.core.pipeline import QAPipeline
from qabridge.core.windows import Window, padded_batch
from qabridge.errors import EmptyInput, EngineError, ModelError, SequenceTooLong, Timeout
from qabridge.export.onnx_export import INPUTS, OUTPUT, REQUIRED, OnnxMetadata

#: Tokens per ONNX Runtime call: windows go in padded batches of at most this many rows (windows x
#: the batch's longest), and only windows within :data:`MAX_PADDING` of each other's length. On the
#: 2-core AMD EPYC (int8 graph, 2 threads; `benchmarks/experiments/onnx_steps.py batching`, every rule taking turns
#: on every call, median of 3 rounds): a question with a 384- and a ~180-token window 27.2 ms as two
#: calls against 34.1 padded together (the former rule, up to 8 windows a call); eval's
#: length-sorted windows 7.09 ms each against 7.36 (7.62 at 512 tokens a call without the padding
#: rule, 8.45 one window a call); a 6-window context the same either way. Padding is work thrown
#: away, and short windows of one length still gain from going together.
BATCH_TOKENS = 768
MAX_PADDING = 0.1
#: On a GPU a call's fixed cost (launches, copies) dwarfs a window's, so calls are as large as
#: a batch of concurrent requests makes them: 32 full windows (unmeasured: no GPU was lent).
GPU_BATCH_TOKENS = 32 * 384
GPU_MAX_PADDING = 0.5
_ONNX_MAGIC_HINT = b"\x08"  # an ONNX ModelProto starts with field 1 (ir_version), varint


#: fp32 initialisers at least this large are shared between the sessions of one model.
SHARE_BYTES = 1 << 20


#: ORT fusions kept off at load time: the export splits SkipLayerNormalization into Add +
#: LayerNormalization because the fused CPU kernel is ~4x slower here (export/onnx_export.py); a
#: runtime that fused them again would undo that. Unknown names are ignored by ORT.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def inference_session(path: str | os.PathLike, options, providers: list[str] | None = None):
    """An ORT session over ``path`` (CPU provider unless ``providers``) with :data:`DISABLED_OPTIMIZERS` off."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))


def session_options(n_threads: int | None = None, shared: dict | None = None):
    """intra-op threads = ``n_threads`` (default: every core), one inter-op thread, sequential;
    ``shared``: initialisers (name -> OrtValue) the session uses in place of its own copy."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, n_threads or os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are noise here
    for name, value in (shared or {}).items():
        so.add_initializer(name, value)
    return so


def token_batches(lengths: list[int], budget: int, max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Indices of sequences grouped longest first: a group's size x its longest <= ``budget`` and at
    most ``max_padding`` of its padded tokens padding (a sequence over the budget goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    filled = 0  # real tokens in out[-1]
    for i in order:
        if out:
            n, longest = len(out[-1]) + 1, lengths[out[-1][0]]
            if n * longest <= budget and filled + lengths[i] >= (1 - max_padding) * n * longest:
                out[-1].append(i)
                filled += lengths[i]
                continue
        out.append([i])
        filled = lengths[i]
    return out


def shared_tables(path: Path) -> dict:
    """The model's large fp32 initialisers (the 47 MB word-embedding table) as OrtValues, so two
    sessions of one model hold them once. The int8 weights are not shared: each session keeps
    its own prepacked copy whatever it is given. {} when the file cannot be read this way."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, numpy_helper

        model = onnx.load(str(path))
        out = {i.name: ort.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
               if i.data_type == TensorProto.FLOAT and 4 * int(np.prod(i.dims)) >= SHARE_BYTES}
        del model  # the copies above hold the tables; the parsed file (~60 MB) goes now
        return out
    except Exception:  # the session's own error says what is wrong with the file
        return {}


class OnnxModel(OnnxMetadata):
    """A validated qabridge ONNX model: its ORT session, metadata, tokenizer and span head.

    Mirrors :class:`qabridge.core.model_file.ModelFile` (``path``, ``tokenizer``, ``settings``,
    ``window_spec``, ``span_head``, ``outtype``, ``qabridge_metadata()``...), so the bridge can
    show either file the same way.
    """

    def __init__(self, path: str | os.PathLike, *, n_threads: int | None = None, share: bool = False,
                 device: str = "cpu"):
        from .devices import ort_providers

        self.path = Path(path)
        self.device = device
        providers = ort_providers(device)
        self._check_file()
        #: Initialisers a second session of this model can use as well (``share``: shared_tables).
        self.shared: dict = shared_tables(self.path) if share else {}
        try:
            import onnxruntime  # noqa: F401 - fail with EngineError, not at the session
        except ImportError as exc:  # pragma: no cover - base dependency
            raise EngineError(f"onnxruntime is not installed ({exc})") from None
        try:
            self.session = inference_session(self.path, session_options(n_threads, self.shared), providers)
        except Exception as exc:  # InvalidProtobuf, Fail, InvalidGraph, NotImplemented...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise ModelError(f"{self.path}: not a readable ONNX model ({reason[:300]})") from None
        self.meta: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self._check_contents()

    # -- checks -------------------------------------------------------------------------------
    def _check_file(self) -> None:
        if not self.path.exists():
            raise ModelError(f"{self.path}: no such model file")
        if not self.path.is_file():
            raise ModelError(f"{self.path}: not a file")
        size = self.path.stat().st_size
        if size < 16:
            raise ModelError(f"{self.path}: too small to be an ONNX model ({size} bytes)")
        with open(self.path, "rb") as fh:
            head = fh.read(4)
        if head == b"GGUF":
            raise ModelError(f"{self.path}: is a GGUF file; serve it with the llama.cpp engine")
        if head[:1] != _ONNX_MAGIC_HINT:
            raise ModelError(f"{self.path}: not an ONNX model (starts with {head!r})")

    def _check_contents(self) -> None:
        missing = [k for k in REQUIRED if k not in self.meta]
        if missing:
            raise ModelError(f"{self.path}: not a qabridge QA model (missing {', '.join(missing)}); "
                             "export one with `qabridge export --format onnx`")
        if self.meta[Key.TASK] != TASK_QA:
            raise ModelError(f"{self.path}: qabridge task is {self.meta[Key.TASK]!r}, not {TASK_QA!r}")
        names = {i.name: i for i in self.session.get_inputs()}
        if set(names) != set(INPUTS):
            raise ModelError(f"{self.path}: inputs are {sorted(names)}, expected {list(INPUTS)}")
        outs = self.session.get_outputs()
        if not outs or outs[0].name != OUTPUT or len(outs[0].shape) != 3:
            raise ModelError(f"{self.path}: first output must be {OUTPUT} [batch, seq, hidden]")
        hidden = outs[0].shape[2]
        if isinstance(hidden, int) and hidden != self.hidden_size:
            raise ModelError(f"{self.path}: output width {hidden} != qabridge.hidden_size {self.hidden_size}")
        self.input_dtypes = {n: (np.int32 if "int32" in i.type else np.int64) for n, i in names.items()}
        _ = self.span_head, self.settings, self.tokenizer, self.null_threshold  # fail now, not on a request

    def close(self) -> None:
        self.session = None
        self.shared = {}


class OnnxEngine:
    """Encoder in ONNX Runtime, span head in numpy. Thread-safe (ORT sessions are).

    A wide session (``n_threads`` intra-op threads, one inter-op thread, sequential) runs a
    request that is alone in the engine; requests take turns on it. With ``n_contexts`` > 1 a
    second, narrow session (``n_threads // n_contexts`` threads, at least 1) is shared *without a
    lock* by the requests that arrive while others are in the engine (``demand()``): each runs on
    its own calling thread, so two requests on 2 cores each get a core and no thread waits at the
    barrier of a parallel op. ORT's thread pool is fixed per session, which is why this takes a
    second session (the llama.cpp engine re-splits its threads per call). Measured on the 2-core
    AMD EPYC, engine alone, 400 dev questions from 8 threads: wide session taking turns 86-111
    q/s, the wide session without a lock 111-118, a one-thread session without a lock 123-129;
    alone, one request at a time, the one-thread session took 14.3 ms per question against the
    wide session's 8.6, hence both. The word-embedding table (47 MB fp32) is loaded once and given
    to both (``shared_tables``): after loading, two sessions 158 MB against one 134 (193 unshared);
    serving, peak RSS 282 vs 233 MB with one client and 321 vs 240 with eight
    (docs/performance.md). A request's windows run as padded batches of at most
    ``batch_tokens`` rows, ``max_padding`` of them padding at most (:data:`BATCH_TOKENS`).
    """

    name = "onnxruntime"

    def __init__(self, model: OnnxModel | str | os.PathLike, *, n_threads: int | None = None,
                 batch_tokens: int | None = None, max_padding: float | None = None, concurrent: bool = False,
                 n_contexts: int = 1, device: str = "cpu"):
        self.n_threads = max(1, n_threads or os.cpu_count() or 1)
        gpu = (model.device if isinstance(model, OnnxModel) else device) == "cuda"
        # The narrow session splits CPU threads; on a GPU concurrency comes from batching requests.
        narrow = n_contexts > 1 and self.n_threads > 1 and not gpu
        self.file = model if isinstance(model, OnnxModel) else OnnxModel(model, n_threads=n_threads, share=narrow, device=device)
        self.device = self.file.device
        batch_tokens = batch_tokens or (GPU_BATCH_TOKENS if gpu else BATCH_TOKENS)
        max_padding = max_padding if max_padding is not None else (GPU_MAX_PADDING if gpu else MAX_PADDING)
        self.session = self.file.session
        self.head = self.file.span_head
        self.n_positions = self.file.context_length
        self.n_embd = self.file.hidden_size
        self.batch_tokens = max(1, batch_tokens)
        self.max_padding = max_padding
        self.pad_id = self.file.tokenizer.pad_id
        self._dtypes = self.file.input_dtypes
        self._run_lock = threading.Lock() if not concurrent else None
        self._closed = False
        self.narrow = None
        if narrow:
            per = max(1, self.n_threads // n_contexts)
            self.narrow = inference_session(self.file.path, session_options(per, self.file.shared))
        self._demand = 0
        self._demand_lock = threading.Lock()

    @property
    def providers(self) -> list[str]:
        """The providers ONNX Runtime actually runs this session on."""
        return list(self.session.get_providers()) if self.session is not None else []

    @contextmanager
    def demand(self):
        """Held by the bridge for a whole request, queue time included: with more than one
        request waiting, each runs on the narrow session instead of queueing for the wide one."""
        with self._demand_lock:
            self._demand += 1
        try:
            yield
        finally:
            with self._demand_lock:
                self._demand -= 1

    def _check(self, n: int) -> None:
        if n == 0:
            raise EmptyInput("empty token sequence")
        if n > self.n_positions:
            raise SequenceTooLong(f"sequence of {n} tokens exceeds the model window ({self.n_positions})")

    def _run(self, seqs: list[np.ndarray]) -> np.ndarray:
        """[batch, longest, hidden] for sequences already checked; padding masked out."""
        if self._closed:
            raise EngineError("engine is closed")
        ids, mask = padded_batch(seqs, self.pad_id, self._dtypes["input_ids"], self._dtypes["attention_mask"])
        feed = {"input_ids": ids, "attention_mask": mask}
        try:
            if self.narrow is not None and self._demand > 1:
                return self.narrow.run([OUTPUT], feed)[0]
            if self._run_lock is None:
                return self.session.run([OUTPUT], feed)[0]
            with self._run_lock:
                return self.session.run([OUTPUT], feed)[0]
        except Exception as exc:
            raise EngineError(f"onnxruntime failed: {str(exc).splitlines()[0][:300] if str(exc) else exc.__class__.__name__}") from None

    def hidden_states(self, ids: np.ndarray) -> np.ndarray:
        """[n_tokens, hidden] float32 for one sequence."""
        ids = np.asarray(ids)
        self._check(int(len(ids)))
        return self._run([ids])[0]

    def logits(self, windows: list[Window], deadline: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Span logits per window; past ``deadline`` (time.monotonic) the remaining batches are not run."""
        for w in windows:
            self._check(int(len(w.input_ids)))
        out: list = [None] * len(windows)
        for chunk in token_batches([len(w.input_ids) for w in windows], self.batch_tokens, self.max_padding):
            if deadline is not None and time.monotonic() > deadline:
                raise Timeout("request ran past its deadline")
            hidden = self._run([windows[i].input_ids for i in chunk])
            for j, i in enumerate(chunk):
                out[i] = self.head.logits(hidden[j, : len(windows[i].input_ids)])
        return out

    def close(self) -> None:
        self._closed = True
        self.session = None
        self.narrow = None
        self.file.close()


def onnx_pipeline(model, **engine_kw) -> QAPipeline:
    """A pipeline over a qabridge ONNX model (path or OnnxModel): ORT encoder, settings from its metadata."""
    eng = OnnxEngine(model, **engine_kw)
    return QAPipeline(eng.file.tokenizer, eng, eng.file.window_spec, max_answer_len=eng.file.max_answer_len)
