"""Per-token hidden states from llama.cpp (llama-cpp-python's low-level API), span head in numpy.

``Llama.embed()`` returned wrong vectors for the second of several inputs with
pooling none, so this goes through ``llama_batch``/``llama_encode``/
``llama_get_embeddings`` directly. llama.cpp aborts the process on a batch longer
than ``n_ubatch`` or a sequence longer than the position table: both are checked
here before any call.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
import time
from contextlib import contextmanager

import numpy as np

from qabridge.core.model_file import ModelFile, SpanHead
from qabridge.core.pipeline import QAPipeline
from qabridge.core.windows import Window
from qabridge.errors import EmptyInput, EngineError, ModelError, SequenceTooLong, Timeout

_log_cb = None  # keep the ctypes callback alive


def _silence_llama() -> None:
    global _log_cb
    import llama_cpp as lc

    if _log_cb is None:
        verbose = os.environ.get("QABRIDGE_LLAMA_LOG") == "1"

        @lc.llama_log_callback
        def _cb(level, text, user_data):  # noqa: ARG001
            if verbose:
                try:
                    print(text.decode("utf-8", "replace"), end="", flush=True)
                except Exception:
                    pass

        _log_cb = _cb
        lc.llama_log_set(_log_cb, ctypes.c_void_p(0))


class _Context:
    """One llama.cpp context and its reusable batch; used by one thread at a time."""

    def __init__(self, lc, model, n_ctx: int, n_threads: int, flash_attn: bool):
        p = lc.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = n_ctx
        p.n_ubatch = n_ctx
        p.n_seq_max = 1
        p.n_threads = n_threads
        p.n_threads_batch = n_threads
        p.embeddings = True
        p.pooling_type = lc.LLAMA_POOLING_TYPE_NONE
        p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.lc = lc
        self.ctx = lc.llama_init_from_model(model, p)
        if not self.ctx:
            raise EngineError("llama.cpp could not create a context")
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.batch = lc.llama_batch_init(n_ctx, 0, 1)
        for i in range(n_ctx):
            self.batch.n_seq_id[i] = 1
            self.batch.seq_id[i][0] = 0
            self.batch.logits[i] = 1
        self._pos = np.arange(n_ctx, dtype=np.int32)
        self.adapter = None  # the runtime LoRA applied now (a llama_adapter_lora_p), None: the base alone

    def use_adapter(self, adapter) -> None:
        """Apply ``adapter`` (or none) to the next encodes; a no-op when it is already applied."""
        if adapter is self.adapter:
            return
        lc = self.lc
        if adapter is None:
            rc = lc.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            rc = lc.llama_set_adapters_lora(self.ctx, (lc.llama_adapter_lora_p_ctypes * 1)(adapter), 1,
                                            (ctypes.c_float * 1)(1.0))
        if rc != 0:
            raise EngineError(f"llama.cpp could not apply the LoRA adapter (rc={rc})")
        self.adapter = adapter

    def set_threads(self, n: int) -> None:
        if n != self.n_threads:
            self.lc.llama_set_n_threads(self.ctx, n, n)
            self.n_threads = n

    def hidden(self, ids: np.ndarray, n_embd: int) -> np.ndarray:
        lc = self.lc
        n = int(ids.shape[0])
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        ctypes.memmove(self.batch.token, ids.ctypes.data, 4 * n)
        ctypes.memmove(self.batch.pos, self._pos.ctypes.data, 4 * n)
        self.batch.n_tokens = n
        mem = lc.llama_get_memory(self.ctx)
        if mem:
            lc.llama_memory_clear(mem, True)
        rc = lc.llama_encode(self.ctx, self.batch)
        if rc != 0:
            raise EngineError(f"llama_encode failed (rc={rc})")
        ptr = lc.llama_get_embeddings(self.ctx)
        if not ptr:
            raise EngineError("llama.cpp returned no embeddings")
        return np.ctypeslib.as_array(ptr, shape=(n * n_embd,)).reshape(n, n_embd).copy()

    def free(self) -> None:
        if self.ctx:
            self.lc.llama_batch_free(self.batch)
            self.lc.llama_free(self.ctx)
            self.ctx = None


class LlamaCppEngine:
    """Encoder in llama.cpp, span head in numpy. Thread-safe: a pool of contexts.

    ``n_threads`` (default: all cores) is shared by the sequences being encoded at that moment:
    one sequence alone gets all of them, two at once half each, and so on. On 2 cores one
    context with 2 threads encodes a window in ~28 ms where 2 one-thread contexts take ~53 ms
    each but finish two windows in that time; sharing gets the first for a single client and
    the second under concurrency (docs/performance.md).
    """

    name = "llama.cpp"

    def __init__(
        self,
        model: ModelFile,
        *,
        n_threads: int | None = None,
        flash_attn: bool = True,
        n_contexts: int = 1,
        n_gpu_layers: int = 0,
    ):
        try:
            import llama_cpp as lc
        except ImportError as exc:  # pragma: no cover - base dependency
            raise EngineError(f"llama-cpp-python is not installed ({exc})") from None
        _silence_llama()
        lc.llama_backend_init()
        self.lc = lc
        self.file = model
        self.head: SpanHead = model.span_head if model.get("qabridge.span_head.weight") is not None else None
        self.n_positions = model.context_length
        self.n_ctx = min(self.n_positions, max(model.window_spec.max_seq_len, 512) if self.head else self.n_positions)
        mp = lc.llama_model_default_params()
        # -1: every layer on the GPU (a GPU build of llama.cpp; bridge/devices.py decides).
        mp.n_gpu_layers = n_gpu_layers
        self.device = "cuda" if n_gpu_layers else "cpu"
        self.model = lc.llama_model_load_from_file(str(model.path).encode(), mp)
        if not self.model:
            raise ModelError(f"{model.path}: llama.cpp could not load the model")
        self.n_embd = int(lc.llama_model_n_embd(self.model))
        threads = max(1, n_threads or os.cpu_count() or 1)
        self._pool: queue.Queue[_Context] = queue.Queue()
        self._all = []
        for _ in range(max(1, n_contexts)):
            c = _Context(lc, self.model, self.n_ctx, threads, flash_attn)
            self._all.append(c)
            self._pool.put(c)
        self.n_threads = threads
        self._busy = 0  # contexts encoding now
        self._demand = 0  # requests queued for or inside the engine (see demand())
        self._busy_lock = threading.Lock()
        self.flash_attn = flash_attn
        self._adapters: list = []
        self._closed = False
        self._close_lock = threading.Lock()

    @contextmanager
    def _context(self):
        c = self._pool.get()
        with self._busy_lock:
            self._busy += 1
            share = max(1, self.n_threads // max(self._busy, min(self._demand, len(self._all))))
        c.set_threads(share)
        try:
            yield c
        finally:
            with self._busy_lock:
                self._busy -= 1
            self._pool.put(c)

    @contextmanager
    def demand(self):
        """Held by a caller for the whole of a request, queue time included: with several
        requests waiting, each window is encoded with its share of the threads from the start,
        instead of all of them until the next request arrives (which oversubscribes the cores)."""
        with self._busy_lock:
            self._demand += 1
        try:
            yield
        finally:
            with self._busy_lock:
                self._demand -= 1

    def thread_shares(self) -> list[int]:
        """Threads each context encodes with now (they change with demand())."""
        return [c.n_threads for c in self._all]

    @property
    def n_contexts(self) -> int:
        """Sequences this engine can encode at once."""
        return len(self._all)

    def load_adapter(self, path) -> object:
        """A LoRA GGUF (``qabridge export --lora-only``) loaded over this engine's model; pass it as
        ``adapter=`` to encode with it. Its weights are held once, whatever the number of contexts."""
        if self._closed:
            raise EngineError("engine is closed")
        a = self.lc.llama_adapter_lora_init(self.model, str(path).encode())
        if not a:
            raise ModelError(f"{path}: llama.cpp could not load it as a LoRA adapter of {self.file.path.name} "
                             "(QABRIDGE_LLAMA_LOG=1 shows why)")
        self._adapters.append(a)
        return a

    def hidden_states(self, ids: np.ndarray, adapter=None) -> np.ndarray:
        """[n_tokens, hidden] float32 for one sequence (with the LoRA ``adapter`` applied, if given)."""
        n = int(len(ids))
        if n == 0:
            raise EmptyInput("empty token sequence")
        if n > self.n_ctx or n > self.n_positions:
            # llama.cpp would abort the whole process here.
            raise SequenceTooLong(f"sequence of {n} tokens exceeds the model window ({min(self.n_ctx, self.n_positions)})")
        if self._closed:
            raise EngineError("engine is closed")
        with self._context() as c:
            c.use_adapter(adapter)
            return c.hidden(ids, self.n_embd)

    def logits(self, windows: list[Window], deadline: float | None = None, *, adapter=None,
               head: SpanHead | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Span logits per window (through ``adapter`` and its ``head``, if given); past ``deadline``
        (time.monotonic) the remaining windows are not encoded."""
        head = head or self.head
        if head is None:
            raise ModelError(f"{self.file.path}: has no span head")
        out = []
        for w in windows:
            if deadline is not None and time.monotonic() > deadline:
                # The client has had its 504: free the engine for the requests behind this one.
                raise Timeout("request ran past its deadline")
            out.append(head.logits(self.hidden_states(w.input_ids, adapter=adapter)))
        return out

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """llama.cpp's own tokenisation (for parity checks against the HF tokenizer)."""
        lc = self.lc
        vocab = lc.llama_model_get_vocab(self.model)
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(vocab, data, len(data), buf, cap, special, False)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(vocab, data, len(data), buf, cap, special, False)
        return list(buf[:n])

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            for c in self._all:
                c.free()
            for a in self._adapters:
                self.lc.llama_adapter_lora_free(a)
            self.lc.llama_model_free(self.model)

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def gguf_pipeline(model, **engine_kw) -> QAPipeline:
    """A pipeline over a qabridge GGUF (path or ModelFile): llama.cpp encoder, settings from its metadata."""
    mf = model if isinstance(model, ModelFile) else ModelFile(model)
    return QAPipeline(mf.tokenizer, LlamaCppEngine(mf, **engine_kw), mf.window_spec, max_answer_len=mf.max_answer_len)
