"""The GPU code path where no GPU is: device and provider selection, the GPU candidates of
``--engine auto``, and cross-request batching on the CPU provider (the same answers batched and not).
Nothing here measures a GPU; the README says the GPU rows are unmeasured."""

from __future__ import annotations

import threading
import time

import pytest

from qabridge.errors import EngineError, SequenceTooLong, Timeout, UsageError

from .helpers import run_cli, start_server

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def _here_has_gpu() -> bool:
    from qabridge.bridge.devices import cuda_available, llama_gpu_offload

    return cuda_available() or llama_gpu_offload()


def test_device_resolution_providers_and_the_gpu_candidates():
    from qabridge.bridge.devices import candidate_plan, ort_providers, resolve_device
    from qabridge.bridge.engine_select import ENGINES

    assert resolve_device("auto", [CPU], gpu_offload=False) == "cpu"
    assert resolve_device("auto", [CUDA, CPU], gpu_offload=False) == "cuda"
    assert resolve_device("auto", [CPU], gpu_offload=True) == "cuda"  # a GPU build of llama.cpp alone
    assert resolve_device("cpu", [CUDA, CPU], gpu_offload=True) == "cpu"
    with pytest.raises(UsageError, match="onnxruntime-gpu"):
        resolve_device("cuda", [CPU], gpu_offload=False)
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("tpu", [CUDA, CPU])
    assert ort_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]  # nodes CUDA lacks fall back to the CPU
    assert ort_providers("cpu", [CUDA, CPU]) == [CPU]
    with pytest.raises(UsageError, match="no CUDA provider"):
        ort_providers("cuda", [CPU])
    assert candidate_plan(cuda=True, gpu_offload=True, engines=ENGINES) == [("onnx", "f32", "cuda"), ("llama.cpp", "f16", "cuda")]
    assert candidate_plan(cuda=True, gpu_offload=False, engines=("llama.cpp",)) == []
    assert candidate_plan(cuda=False, gpu_offload=False, engines=ENGINES) == []


def test_gpu_builds_are_told_from_the_package_files_as_the_libraries_tell(tmp_path, monkeypatch):
    import subprocess
    import sys

    from qabridge.bridge.devices import LLAMA_GPU_LIBS, ORT_CUDA_LIBS, gpu_libs_in

    (tmp_path / "qb_fake_ort" / "capi").mkdir(parents=True)
    (tmp_path / "qb_fake_ort" / "__init__.py").write_text("")
    (tmp_path / "qb_fake_llama" / "lib").mkdir(parents=True)
    (tmp_path / "qb_fake_llama" / "__init__.py").write_text("")
    (tmp_path / "qb_fake_llama" / "lib" / "libllama.so").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert gpu_libs_in("qb_fake_ort", "capi", ORT_CUDA_LIBS) is False
    (tmp_path / "qb_fake_ort" / "capi" / "libonnxruntime_providers_cuda.so").write_text("")
    assert gpu_libs_in("qb_fake_ort", "capi", ORT_CUDA_LIBS) is True
    assert gpu_libs_in("qb_fake_llama", "lib", LLAMA_GPU_LIBS) is False
    (tmp_path / "qb_fake_llama" / "lib" / "libggml-cuda.so").write_text("")
    assert gpu_libs_in("qb_fake_llama", "lib", LLAMA_GPU_LIBS) is True
    assert gpu_libs_in("qb_fake_ort", "no_such_folder", ORT_CUDA_LIBS) is None
    assert gpu_libs_in("qb_no_such_package", "capi", ORT_CUDA_LIBS) is None

    # The installed packages: the files' answer is the libraries' own, and asking imported neither
    # (each import costs the serving process 9-21 MB of RSS).
    probe = (
        "import sys\n"
        "from qabridge.bridge.devices import cuda_available, llama_gpu_offload\n"
        "got = (cuda_available(), llama_gpu_offload())\n"
        "imported = [m for m in ('onnxruntime', 'llama_cpp') if m in sys.modules]\n"
        "import onnxruntime, llama_cpp\n"
        "told = ('CUDAExecutionProvider' in onnxruntime.get_available_providers(),\n"
        "        bool(llama_cpp.llama_supports_gpu_offload()))\n"
        "print(got == told, imported)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[0] == "True []", out.stdout + out.stderr


@pytest.mark.skipif(_here_has_gpu(), reason="this machine has a GPU engine: --device cuda is valid here")
def test_device_cuda_without_a_gpu_is_a_usage_error(onnx_exported):
    from qabridge.bridge.onnx_engine import OnnxEngine

    r = run_cli("serve", "--device", "cuda", "--port", "1")
    assert r.returncode == 2 and "no engine here can reach a GPU" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(UsageError, match="no CUDA provider"):
        OnnxEngine(onnx_exported("f32"), device="cuda")


def test_an_onnx_engine_asked_for_cuda_reports_where_it_really_runs(onnx_exported, monkeypatch):
    """ORT only warns when a listed provider is missing: the engine's providers are ORT's own answer,
    and a GPU engine takes large calls and no narrow CPU session."""
    import qabridge.bridge.devices as devices
    from qabridge.bridge.onnx_engine import GPU_BATCH_TOKENS, OnnxEngine

    if devices.cuda_available():
        pytest.skip("a real CUDA provider is installed")
    monkeypatch.setattr(devices, "cuda_available", lambda available=None: True)
    eng = OnnxEngine(onnx_exported("f32"), device="cuda", n_contexts=2)
    try:
        assert eng.device == "cuda" and eng.providers == [CPU]
        assert eng.batch_tokens == GPU_BATCH_TOKENS and eng.narrow is None
    finally:
        eng.close()


def test_auto_adds_the_gpu_candidates_when_a_gpu_engine_is_there(monkeypatch, tmp_path):
    """With a GPU build of llama.cpp, auto also builds and measures f16 with every layer offloaded
    (a CPU build ignores the offload, which lets the path run here)."""
    import qabridge.bridge.devices as devices
    from qabridge.bridge.engine_select import choose_engine, default_candidates

    monkeypatch.setenv("QABRIDGE_CACHE", str(tmp_path))
    monkeypatch.setattr(devices, "llama_gpu_offload", lambda: True)
    monkeypatch.setattr(devices, "cuda_available", lambda available=None: False)
    cands = default_candidates(gguf_outtypes=("q8_0",), engines=("llama.cpp",), device="cuda")
    assert [(c.engine, c.outtype, c.device) for c in cands] == [("llama.cpp", "q8_0", "cpu"), ("llama.cpp", "f16", "cuda")]
    assert cands[1].label == "llama.cpp f16 cuda"
    assert default_candidates(gguf_outtypes=("q8_0",), engines=("llama.cpp",), device="cpu") == cands[:1]
    choice = choose_engine(cands, n_questions=4, rounds=1, n_threads=2)
    assert {m.label for m in choice.candidates} == {"llama.cpp q8_0", "llama.cpp f16 cuda"}
    assert all(m.passed for m in choice.candidates)
    assert choice.device == {"llama.cpp q8_0": "cpu", "llama.cpp f16 cuda": "cuda"}[choice.label]


# -- cross-request batching -------------------------------------------------------------------
def _reference(pipe, examples):
    out = {}
    for e in examples:
        p = pipe.predict(e.question, e.context)
        out[e.id] = (p.spans[0].start, p.spans[0].end, p.spans[0].score)
    return out


class _Gate:
    """The real engine, held at its next call until ``open``: lets requests pile up deterministically."""

    def __init__(self, engine):
        self.engine, self.entered, self.go = engine, threading.Event(), threading.Event()
        self.sizes: list[int] = []
        self.poison: set[int] = set()  # an engine failure for a call holding these windows (ids)

    def _check(self, n):
        self.engine._check(n)

    def logits(self, windows, deadline=None):
        if not self.go.is_set():
            self.entered.set()
            assert self.go.wait(30)
        self.sizes.append(len(windows))
        if any(id(w) in self.poison for w in windows):
            raise EngineError("injected: the engine failed on this call")
        return self.engine.logits(windows, deadline)

    def close(self):
        self.engine.close()


def _wait_queued(batcher, n):
    t = time.monotonic() + 30
    while batcher._q.qsize() < n:
        assert time.monotonic() < t, "requests did not queue"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def f32_pipe(onnx_exported):
    from qabridge.bridge.onnx_engine import onnx_pipeline

    pipe = onnx_pipeline(onnx_exported("f32"), n_threads=2)
    yield pipe
    pipe.encoder.close()


def test_concurrent_requests_merge_into_one_call_with_the_same_answers(f32_pipe, dev_examples):
    from qabridge.bridge.batching import WindowBatcher
    from qabridge.core.pipeline import QAPipeline

    examples = dev_examples[:7]
    ref = _reference(f32_pipe, examples)
    gate = _Gate(f32_pipe.encoder)
    b = WindowBatcher(gate)
    pipe = QAPipeline(f32_pipe.tokenizer, b, f32_pipe.spec, max_answer_len=f32_pipe.max_answer_len)
    got: dict = {}

    def ask(e):
        p = pipe.predict(e.question, e.context)
        got[e.id] = (p.spans[0].start, p.spans[0].end, p.spans[0].score)

    first = threading.Thread(target=ask, args=(examples[0],))
    first.start()
    assert gate.entered.wait(30)  # the first request is inside the engine; the others queue behind it
    rest = [threading.Thread(target=ask, args=(e,)) for e in examples[1:]]
    [t.start() for t in rest]
    _wait_queued(b, len(rest))
    gate.go.set()
    first.join(30)
    [t.join(30) for t in rest]
    n_windows = sum(len(f32_pipe.prepare(e.question, e.context)[1]) for e in examples)
    assert b.calls == 2 and b.largest == 6 and b.windows == n_windows
    assert gate.sizes == [len(f32_pipe.prepare(examples[0].question, examples[0].context)[1]), n_windows - gate.sizes[0]]
    for e in examples:
        assert got[e.id][:2] == ref[e.id][:2], e.id
        assert got[e.id][2] == pytest.approx(ref[e.id][2], abs=1e-4)
    b.encoder = f32_pipe.encoder  # the module's pipe closes the engine itself
    b.close = lambda: None


def test_one_requests_failure_or_deadline_stays_its_own(f32_pipe, dev_examples):
    from qabridge.bridge.batching import WindowBatcher

    gate = _Gate(f32_pipe.encoder)
    b = WindowBatcher(gate)
    wins = [f32_pipe.prepare(e.question, e.context)[1] for e in dev_examples[:4]]
    ref = [f32_pipe.encoder.logits(w) for w in wins]
    out: dict = {}

    def call(i, deadline=None):
        try:
            out[i] = b.logits(wins[i], deadline)
        except Exception as exc:
            out[i] = exc

    # Too long for the model: refused in the caller, before it can join anyone's batch.
    import numpy as np

    from qabridge.core.windows import Window

    n = f32_pipe.encoder.n_positions + 1
    long = Window(np.zeros(n, dtype=np.int32), 1, 0, n - 2)
    with pytest.raises(SequenceTooLong):
        b.logits([long])

    t0 = threading.Thread(target=call, args=(0,))
    t0.start()
    assert gate.entered.wait(30)
    gate.poison = {id(wins[1][0])}
    ts = [threading.Thread(target=call, args=(1,)), threading.Thread(target=call, args=(2, time.monotonic() + 0.05)),
          threading.Thread(target=call, args=(3,))]
    [t.start() for t in ts]
    _wait_queued(b, 3)
    time.sleep(0.1)  # request 2's deadline passes while it waits
    gate.go.set()
    for t in [t0, *ts]:
        t.join(30)
    assert isinstance(out[1], EngineError) and "injected" in str(out[1])
    assert isinstance(out[2], Timeout)
    for i in (0, 3):
        assert not isinstance(out[i], Exception)
        assert max(abs(a[0] - r[0]).max() for a, r in zip(out[i], ref[i])) < 1e-4
    # The merged call of 1 and 3 failed, then each ran alone: 0 | 1+3 | 1 | 3.
    assert len(gate.sizes) == 4
    b.encoder = f32_pipe.encoder
    b.close = lambda: None


def test_http_with_batched_requests_answers_as_unbatched(onnx_exported, f32_pipe, dev_examples, tmp_path):
    """`serve --batch-requests` on the CPU provider: 8 clients over real HTTP, each answer the one
    the unbatched pipeline gives, and /api/model/info counts fewer engine calls than requests."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    examples = dev_examples[:48]
    ref = _reference(f32_pipe, examples)
    s = start_server(onnx_exported("f32"), tmp_path, "--batch-requests", "--batch-wait-ms", "2")
    try:
        with httpx.Client(timeout=60) as c:
            def ask(e):
                return e.id, c.post(s.url + "/api/qa", json={"question": e.question, "context": e.context}).json()

            with ThreadPoolExecutor(8) as pool:
                got = dict(pool.map(ask, examples))
            info = c.get(s.url + "/api/model/info").json()
    finally:
        assert s.stop() == 0
    for e in examples:
        assert (got[e.id]["start"], got[e.id]["end"]) == ref[e.id][:2], e.id
        assert got[e.id]["score"] == pytest.approx(ref[e.id][2], abs=1e-4)
    n_windows = sum(len(f32_pipe.prepare(e.question, e.context)[1]) for e in examples)
    assert info["device"] == "cpu" and info["batching"]["windows"] == n_windows
    assert info["batching"]["calls"] < len(examples) and info["batching"]["largest_batch_requests"] > 1
