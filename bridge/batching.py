"""Windows of concurrent requests encoded in one engine call: what a GPU needs to be worth having.

A GPU encodes 32 windows in little more time than one, so a service that hands it one request's
window at a time wastes it. :class:`WindowBatcher` sits between the requests and the engine: one
thread owns the engine; a request's windows go on a queue, and each engine call takes every
window queued by then (up to ``max_windows``), so batches form exactly when requests pile up and a
request alone waits for nothing (``max_wait_ms`` can hold a call open a little longer for more).
The engine still splits a call into padded batches of similar lengths by its own rules.

One request's failure is kept to itself: when a merged call fails, each request in it is run
again alone and gets its own outcome. A request past its deadline is answered with Timeout
without being encoded.
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from qabridge.core.windows import Window
from qabridge.errors import EngineError, QABridgeError, Timeout

#: Windows one engine call takes at most (a full batch on a GPU: GPU_BATCH_TOKENS / 384).
MAX_WINDOWS = 32
#: Worker threads the service runs with batching on: requests that can wait in the queue at once.
BATCH_WORKERS = 32


@dataclass
class _Job:
    windows: list[Window]
    deadline: float | None
    done: threading.Event = field(default_factory=threading.Event)
    result: list | None = None
    error: BaseException | None = None


class WindowBatcher:
    """An encoder (``logits``) that merges the windows of concurrent calls into one call of ``encoder``.

    Everything else (``file``, ``name``, ``close``...) is the wrapped encoder's. ``calls`` and
    ``windows`` count the engine calls made and the windows they encoded (``/api/health``).
    """

    def __init__(self, encoder, *, max_windows: int = MAX_WINDOWS, max_wait_ms: float = 0.0):
        self.encoder = encoder
        self.max_windows = max(1, max_windows)
        self.max_wait = max(0.0, max_wait_ms) / 1e3
        self.calls = 0
        self.windows = 0
        self.largest = 0  # most requests one call served
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="qabridge-batcher", daemon=True)
        self._thread.start()

    def __getattr__(self, name):  # file, name, n_positions, device...: the engine's own
        return getattr(self.encoder, name)

    def demand(self):
        # One thread calls the engine: thread splitting by demand has nothing to split.
        return nullcontext()

    def stats(self) -> dict:
        return {"calls": self.calls, "windows": self.windows, "largest_batch_requests": self.largest,
                "max_windows": self.max_windows}

    def logits(self, windows: list[Window], deadline: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._closed:
            raise EngineError("engine is closed")
        check = getattr(self.encoder, "_check", None)
        for w in windows:  # a request's own bad input fails it here, before it can join a batch
            if check is not None:
                check(int(len(w.input_ids)))
        if not windows:
            return []
        job = _Job(list(windows), deadline)
        self._q.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def hidden_states(self, ids):
        return self.encoder.hidden_states(ids)

    # -- the engine thread --------------------------------------------------------------------
    def _take(self, first: _Job) -> list[_Job]:
        jobs, n = [first], len(first.windows)
        until = time.monotonic() + self.max_wait
        while n < self.max_windows:
            try:
                left = until - time.monotonic()
                nxt = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:  # closing: finish this batch, then stop
                self._q.put(None)
                break
            jobs.append(nxt)
            n += len(nxt.windows)
        return jobs

    def _loop(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            jobs = self._take(first)
            now = time.monotonic()
            live = []
            for j in jobs:
                if j.deadline is not None and now > j.deadline:
                    j.error = Timeout("request ran past its deadline")
                    j.done.set()
                else:
                    live.append(j)
            if live:
                self._encode(live)

    def _encode(self, jobs: list[_Job]) -> None:
        try:
            out = self.encoder.logits([w for j in jobs for w in j.windows])
            self.calls += 1
            self.windows += sum(len(j.windows) for j in jobs)
            self.largest = max(self.largest, len(jobs))
            i = 0
            for j in jobs:
                j.result, i = out[i : i + len(j.windows)], i + len(j.windows)
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].error = _public(exc)
            else:  # which request broke it is unknown: each runs alone and keeps its own outcome
                for j in jobs:
                    try:
                        j.result = self.encoder.logits(j.windows)
                        self.calls += 1
                        self.windows += len(j.windows)
                    except Exception as exc:
                        j.error = _public(exc)
        finally:
            for j in jobs:
                j.done.set()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._q.put(None)
            self._thread.join(timeout=30)
        self.encoder.close()


def _public(exc: BaseException) -> BaseException:
    """The engine's own error when it is a public one, else an EngineError naming it."""
    if isinstance(exc, QABridgeError):
        return exc
    return EngineError(f"{exc.__class__.__name__}: {str(exc)[:300]}")
