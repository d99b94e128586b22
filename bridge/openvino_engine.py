"""Per-token hidden states from OpenVINO, span head in numpy: the other engines' interface.

Serves the IR ``qabridge export --format openvino`` writes (export/openvino_export.py): the encoder
maps ``input_ids``/``attention_mask`` to the last hidden state, and the span head, window settings
and vocabulary come from the IR's rt_info, so the ``.xml``/``.bin`` pair alone serves. The file
records the inference precision (``bf16`` or ``f32``) the CPU plugin is asked for; bf16 runs on
AMX tiles where the CPU has them (Intel Xeon 4th generation on), else on AVX512-BF16. An ``int8``
file (NNCF-quantised) runs its int8 ops on VNNI/AMX and the rest at bf16 where the CPU has bf16
kernels, else f32.

Measured on the 2-core Intel Xeon with AMX (family 6 model 167; benchmarks/performance.md, whole
articles, one client): 14.4 ms per full window over HTTP against ONNX Runtime int8's 20.9, OpenVINO
NNCF int8's 13.6 and CTranslate2 int8's 25.9; the bridge's auto check: 7.6 ms per sample window
against ONNX Runtime int8's 11.3, answers 95/95 those of the f32 GGUF.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np

from qabridge.core.gguf_keys import TASK_QA, Key
from qabridge.core.pipeline import QAPipeline
from qabridge.core.windows import Window, padded_batch
from qabridge.errors import (
    EmptyInput,
    EngineError,
    ModelError,
    SequenceTooLong,
    Timeout,
    UsageError,
)
from qabridge.export.onnx_export import INPUTS, REQUIRED, OnnxMetadata
from qabridge.export.openvino_export import RT_INFO_KEY

from .onnx_engine import MAX_PADDING, token_batches

#: Batches are padded to a multiple of this many tokens. OpenVINO's CPU plugin builds and keeps
#: kernels and buffers per input shape; with every length its own shape, a process answering 300 dev
#: questions peaked at 349 MB, with lengths rounded up to 32 at 214 MB, at the same speed from the
#: second pass on (2-core Intel Xeon with AMX, bf16; the padding is masked out).
PAD_MULTIPLE = 32
#: One full window a call (the ONNX engine's rule allows two). OpenVINO keeps buffers per stream for
#: the largest batch it has run: 8 clients over whole articles (`qabridge serve`, 32 questions,
#: 2-core Intel Xeon with AMX, bf16) peaked at 332-340 MB with one window a call against 362 MB with
#: two, at 2.66-2.78 vs 2.84-2.89 q/s: two windows are ~5% faster there but break the 350 MB budget.
OV_BATCH_TOKENS = 384
#: Windows of one request in flight at once on the multi-stream compilation. A long document's
#: windows spread over the streams (one thread each) instead of taking turns on the one-stream
#: compilation's two threads: whole articles, one request at a time, 12.4 ms a window with 4 in
#: flight on 2 streams against 13.3 with 2 and 14.3 one after another on the one stream (2-core
#: Intel Xeon with AMX, bf16, 6 articles of 24-42 windows). Streams keep their buffers for one
#: window, so memory is what 8 clients already take.
IN_FLIGHT = 4


def available() -> bool:
    """Whether the openvino package can be imported (the optional ``[openvino]`` extra)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def has_bf16_kernels() -> bool:
    """Whether OpenVINO's CPU plugin has bf16 kernels here (AMX-BF16 or AVX512-BF16)."""
    from qabridge.core.machine import cpu_info

    return bool(set(cpu_info().flags) & {"amx_bf16", "avx512_bf16"})


def compile_options(n_threads: int, precision: str, streams: int = 1) -> dict:
    """``streams`` streams sharing ``n_threads`` threads (one: tuned for latency), at the file's precision."""
    return {"INFERENCE_NUM_THREADS": n_threads, "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
            "NUM_STREAMS": streams, "INFERENCE_PRECISION_HINT": precision}


class OpenVinoModel(OnnxMetadata):
    """A validated qabridge OpenVINO IR: its compiled model, metadata, tokenizer and span head
    (the metadata accessors are :class:`~qabridge.export.onnx_export.OnnxMetadata`'s, as the ONNX
    model's are)."""

    def __init__(self, path: str | os.PathLike, *, n_threads: int | None = None, transform=None):
        """``transform``: called with the read ``openvino.Model`` before it is compiled (returns the
        model to compile: the runtime-LoRA engine adds its inputs there)."""
        self.path = Path(path)
        self.device = "cpu"  # OpenVINO's GPU plugin is for Intel GPUs; this engine is the CPU one
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such model file")
        if self.path.suffix != ".xml" or not self.path.with_suffix(".bin").is_file():
            raise ModelError(f"{self.path}: an OpenVINO model is a .xml file with its .bin beside it")
        try:
            import openvino as ov
        except ImportError as exc:
            raise EngineError(f"the OpenVINO engine needs the openvino package (pip install 'qabridge[openvino]'): {exc}") from None
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:
            raise ModelError(f"{self.path}: not a readable OpenVINO model ({str(exc).strip().splitlines()[0][:300]})") from None
        try:
            self.meta: dict[str, str] = json.loads(model.get_rt_info(RT_INFO_KEY).astype(str))
        except Exception:
            raise ModelError(f"{self.path}: not a qabridge QA model (no {RT_INFO_KEY}); "
                             "export one with `qabridge export --format openvino`") from None
        self._check_ports(model)
        if transform is not None:
            model = transform(model)
        self.n_threads = max(1, n_threads or os.cpu_count() or 1)
        self._core, self._model = core, model
        self.session = self.compile(1)
        self.input_dtypes = {n: np.int64 for n in INPUTS}

    def compile(self, streams: int):
        """The model compiled for the CPU: ``streams`` streams over this model's threads."""
        precision = self.outtype if self.outtype in ("bf16", "f32") else "f32"
        if self.outtype == "int8" and has_bf16_kernels():
            precision = "bf16"  # the ops NNCF left in floating point
        try:
            return self._core.compile_model(self._model, "CPU", compile_options(self.n_threads, precision, streams))
        except Exception as exc:
            raise EngineError(f"OpenVINO could not compile {self.path.name}: {str(exc).strip().splitlines()[0][:300]}") from None

    def close(self) -> None:
        self.session = None
        self._model = None

    def _check_ports(self, model) -> None:
        missing = [k for k in REQUIRED if k not in self.meta]
        if missing:
            raise ModelError(f"{self.path}: not a qabridge QA model (missing {', '.join(missing)})")
        if self.meta[Key.TASK] != TASK_QA:
            raise ModelError(f"{self.path}: qabridge task is {self.meta[Key.TASK]!r}, not {TASK_QA!r}")
        names = sorted(n for i in model.inputs for n in i.get_names() if n in INPUTS)
        if names != sorted(INPUTS):
            raise ModelError(f"{self.path}: inputs are {names}, expected {list(INPUTS)}")
        _ = self.span_head, self.settings, self.tokenizer, self.null_threshold  # fail now, not on a request


class OpenVinoEngine:
    """Encoder in OpenVINO, span head in numpy. Thread-safe.

    A one-window request alone runs on a one-stream compilation with every thread (latency). With
    ``n_contexts`` > 1 a second compilation with ``n_contexts`` streams over the same threads serves
    the requests that arrive while others are in the engine (``demand()``, as the ONNX engine's
    narrow session does): on one stream concurrent requests only take turns, which put 8 clients
    at 93 q/s against 156 for OpenVINO's own THROUGHPUT setting (2-core Intel Xeon, AMX, bf16).
    A request of several windows (a long document) runs them there too, ``IN_FLIGHT`` at once.
    Each compilation has a pool of infer requests made up front.
    """

    name = "openvino"

    def __init__(self, model: OpenVinoModel | str | os.PathLike, *, n_threads: int | None = None,
                 batch_tokens: int = OV_BATCH_TOKENS, max_padding: float = MAX_PADDING, n_contexts: int = 1,
                 pad_multiple: int = PAD_MULTIPLE, **_ignored):
        self.file = model if isinstance(model, OpenVinoModel) else OpenVinoModel(model, n_threads=n_threads)
        self.compiled = self.file.session
        self.n_threads = self.file.n_threads
        self.head = self.file.span_head
        self.n_positions = self.file.context_length
        self.n_embd = self.file.hidden_size
        self.batch_tokens = max(1, batch_tokens)
        self.max_padding = max_padding
        self.pad_id = self.file.tokenizer.pad_id
        self.pad_multiple = max(1, pad_multiple)
        # A pool of infer requests made here, and one call run here: OpenVINO 2026.4's Python binding
        # deadlocks when several threads make their first request or call at once (a C++ static's
        # guard held across the GIL; seen with 8 client threads).
        self._closed = False
        self._demand = 0
        self._demand_lock = threading.Lock()
        self._wide = self._pool(self.compiled, 2)
        self._narrow = None
        if n_contexts > 1 and self.n_threads > 1:
            # room for two requests' windows in flight at once
            self._narrow = self._pool(self.file.compile(n_contexts), 2 * IN_FLIGHT)
        probe = [np.array([self.file.tokenizer.cls_id, self.file.tokenizer.sep_id])]
        for pool in filter(None, (self._wide, self._narrow)):
            self._run(probe, pool)

    @staticmethod
    def _pool(compiled, n: int) -> queue.SimpleQueue:
        q: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(n):
            q.put(compiled.create_infer_request())
        return q

    @contextmanager
    def demand(self):
        """Held by the bridge for a whole request, queue time included: with more than one request
        waiting, each runs on the multi-stream compilation instead of taking turns on the wide one."""
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

    def _feed(self, seqs: list[np.ndarray]) -> dict:
        ids, mask = padded_batch(seqs, self.pad_id)
        n = ids.shape[1]
        m = min(-(-n // self.pad_multiple) * self.pad_multiple, max(n, self.n_positions))
        if m > n:
            ids = np.pad(ids, ((0, 0), (0, m - n)), constant_values=self.pad_id)
            mask = np.pad(mask, ((0, 0), (0, m - n)))
        return {"input_ids": ids, "attention_mask": mask}

    @staticmethod
    def _failure(exc: Exception) -> EngineError:
        return EngineError(f"openvino failed: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__}")

    def _use(self, req, adapter) -> None:
        """Make ``req`` encode with ``adapter`` (the runtime-LoRA engine's; the plain one has none)."""

    def _run(self, seqs: list[np.ndarray], pool: queue.SimpleQueue | None = None, adapter=None) -> np.ndarray:
        if self._closed:
            raise EngineError("engine is closed")
        if pool is None:
            pool = self._narrow if self._narrow is not None and self._demand > 1 else self._wide
        feed = self._feed(seqs)
        req = pool.get()
        try:
            self._use(req, adapter)
            req.infer(feed)
            # copied: the request's output buffer is reused by its next call
            return np.array(req.get_output_tensor(0).data, dtype=np.float32)
        except Exception as exc:
            raise self._failure(exc) from None
        finally:
            pool.put(req)

    @staticmethod
    def _in_time(deadline: float | None) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise Timeout("request ran past its deadline")

    def _one_by_one(self, batches: list[list[np.ndarray]], deadline: float | None, adapter=None):
        """Hidden states of each batch in turn (the pool ``_run`` picks)."""
        for batch in batches:
            self._in_time(deadline)
            yield self._run(batch, adapter=adapter)

    def _spread(self, batches: list[list[np.ndarray]], deadline: float | None, adapter=None):
        """Hidden states of each batch in order, from the multi-stream compilation with up to
        IN_FLIGHT batches in flight. Infer requests beyond the first are taken only when free, so
        two requests spreading at once never wait on each other's; closed early, every request goes
        back to the pool idle."""
        if self._closed:
            raise EngineError("engine is closed")
        self._in_time(deadline)
        pool = self._narrow
        reqs = [pool.get()]
        while len(reqs) < min(IN_FLIGHT, len(batches)):
            try:
                reqs.append(pool.get_nowait())
            except queue.Empty:
                break
        busy: list = []  # requests in start order
        try:
            for req, batch in zip(reqs, batches):
                self._use(req, adapter)
                req.start_async(self._feed(batch))
                busy.append(req)
            # one batch out per turn; ``nxt``: the batch its request starts next, if any is left
            for nxt in range(len(reqs), len(reqs) + len(batches)):
                req = busy.pop(0)
                req.wait()
                hidden = np.array(req.get_output_tensor(0).data, dtype=np.float32)
                if nxt < len(batches):
                    self._in_time(deadline)
                    req.start_async(self._feed(batches[nxt]))
                    busy.append(req)
                yield hidden
        except Timeout:
            raise
        except Exception as exc:
            raise self._failure(exc) from None
        finally:
            for req in busy:
                try:
                    req.wait()
                except Exception:
                    pass
            for req in reqs:
                pool.put(req)

    def hidden_states(self, ids: np.ndarray, adapter=None) -> np.ndarray:
        """[n_tokens, hidden] float32 for one sequence."""
        ids = np.asarray(ids)
        self._check(int(len(ids)))
        return self._run([ids], adapter=adapter)[0, : len(ids)]

    def logits(self, windows: list[Window], deadline: float | None = None, adapter=None,
               head=None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Span logits per window; past ``deadline`` (time.monotonic) the remaining batches are not
        run. ``adapter`` and ``head``: the runtime-LoRA engine's adapter and its span head."""
        head = head or self.head
        for w in windows:
            self._check(int(len(w.input_ids)))
        out: list = [None] * len(windows)
        chunks = token_batches([len(w.input_ids) for w in windows], self.batch_tokens, self.max_padding)
        run = self._spread if len(chunks) > 1 and self._narrow is not None else self._one_by_one
        with closing(run([[windows[i].input_ids for i in c] for c in chunks], deadline, adapter)) as hidden_states:
            for chunk, hidden in zip(chunks, hidden_states):
                for j, i in enumerate(chunk):
                    out[i] = head.logits(hidden[j, : len(windows[i].input_ids)])
        return out

    def close(self) -> None:
        self._closed = True
        self.compiled = self._wide = self._narrow = None
        self.file.close()


def openvino_pipeline(model, **engine_kw) -> QAPipeline:
    """A pipeline over a qabridge OpenVINO IR (path or OpenVinoModel): settings from its metadata."""
    if not available() and not isinstance(model, OpenVinoModel):
        raise UsageError("the OpenVINO engine needs the openvino package (pip install 'qabridge[openvino]')")
    eng = OpenVinoEngine(model, **engine_kw)
    return QAPipeline(eng.file.tokenizer, eng, eng.file.window_spec, max_answer_len=eng.file.max_answer_len)
