"""Data-parallel training: real torchrun processes (gloo, CPU, loopback) against one process.

--batch-size is the global batch, split across ranks, so N ranks must give the adapter one
process gives on the whole batch. Dropout is off (--dropout 0): ranks draw their own dropout masks,
which match one process in distribution only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .helpers import TRAIN_SAMPLE, free_port

pytestmark = pytest.mark.timeout(300)

# fp32: N ranks match one process to float rounding; under bf16 autocast (--precision auto on a CPU
# with AVX512-BF16) a rank's half batch rounds differently from the whole batch (max |delta| ~1e-3).
BASE = ["--data", str(TRAIN_SAMPLE), "--max-seq-len", "64", "--doc-stride", "16", "--lora-r", "2", "--dropout", "0",
        "--device", "cpu", "--precision", "fp32", "--quiet"]
TINY = [*BASE, "--checkpoint-every", "0"]
# One thread per process: torchrun sets it for its workers; the baseline gets the same (2 cores).
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _train(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "qabridge.cli", "train", *args], capture_output=True, text=True,
                       timeout=timeout, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _torchrun(launcher: list[str], *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "qabridge.cli", "train", *args]
    # A session of its own: a hung or killed run is ended with its ranks (killpg), nothing else.
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: int = 240) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s (a rank waiting on another?): {err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    return out + err


def _stop(proc: subprocess.Popen) -> None:
    """End a torchrun and its ranks: SIGTERM makes the launcher terminate its workers (a SIGKILL to
    it would orphan them - they run in process groups of their own); SIGKILL only if that hangs."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _tensors(d: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(d / "adapter_model.safetensors"))


def _assert_same_adapter(a: Path, b: Path, tol: float = 1e-5) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    worst = max(float(np.abs(ta[k] - tb[k]).max()) for k in ta)
    assert worst <= tol, f"max |delta| {worst:.3g} between {a.name} and {b.name}"
    # The comparison means something only if training moved the adapter well beyond the tolerance.
    moved = max(float(np.abs(v).max()) for k, v in ta.items() if "lora_B" in k)  # LoRA B starts at 0
    assert moved > 100 * tol, moved


def test_two_ranks_match_one_process(tmp_path):
    # Batch 5 over 2 ranks: uneven shares (3 + 2); 2 micro-batches per step (no_sync, then all-reduce).
    args = [*TINY, "--max-steps", "4", "--batch-size", "5", "--grad-accum", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    _train(*args, "--output", str(one))
    log = _finish(_torchrun(["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())],
                            *args, "--output", str(two)))
    _assert_same_adapter(one, two)
    assert log.count("saved ") == 1  # rank 0 alone reports (and writes)
    s1, s2 = (json.loads((d / "training_summary.json").read_text()) for d in (one, two))
    assert s2["distributed"] == {"world_size": 2, "backend": "gloo"} and "distributed" not in s1
    assert s1["steps"] == s2["steps"] == 4 and s1["examples_seen"] == s2["examples_seen"] == 40
    assert s2["mean_padded_tokens"] == s1["mean_padded_tokens"]  # shares padded to the global batch's longest
    assert abs(s1["final_loss"] - s2["final_loss"]) < 1e-4
    # The same run whatever the world size: a checkpoint of one resumes under the other.
    assert (json.loads((one / "qabridge.json").read_text())["train_identity"]
            == json.loads((two / "qabridge.json").read_text())["train_identity"])


def _windows(subset: int) -> int:
    """Training windows of the first run below: the trainer's own subset, tokenizer and windows."""
    from qabridge.core.tokenizer import WordPieceTokenizer
    from qabridge.core.windows import WindowSpec
    from qabridge.train.features import build_features
    from qabridge.train.model import resolve_base, tokenizer_dir
    from qabridge.train.squad import load_squad

    ex = load_squad(TRAIN_SAMPLE)
    idx = np.sort(np.random.default_rng(42).permutation(len(ex))[:subset])
    tok = WordPieceTokenizer.from_hf_dir(tokenizer_dir(resolve_base(None)))
    return len(build_features([ex[i] for i in idx], tok, WindowSpec(64, 16, 64)))


def test_two_nodes_match_one_process(tmp_path):
    """torchrun --nnodes 2: two launchers (node 0 and node 1) meet at 127.0.0.1; one epoch whose last
    batch holds a single window, so node 1 gets an empty share (it runs one window at weight 0)."""
    n = _windows(12)
    batch = next(b for b in range(4, 16) if n % b == 1)
    args = [*TINY, "--subset-size", "12", "--epochs", "1", "--batch-size", str(batch)]
    one, node0, node1 = tmp_path / "one", tmp_path / "node0", tmp_path / "node1"
    _train(*args, "--output", str(one))
    port = free_port()
    procs = [_torchrun(["--nnodes", "2", "--node_rank", str(r), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                        "--master_port", str(port)], *args, "--output", str(out))
             for r, out in ((0, node0), (1, node1))]
    for p in procs:
        _finish(p)
    s = json.loads((node0 / "training_summary.json").read_text())
    assert s["train_features"] == n and s["examples_seen"] == n and s["steps"] == -(-n // batch)
    _assert_same_adapter(one, node0)
    assert not node1.exists()  # only rank 0 writes: node 1's --output is never created


def test_time_budget_stops_every_rank_together(tmp_path):
    """Rank 0's clock decides and the decision travels with the step's all-reduce: no rank is left waiting."""
    out = tmp_path / "budget"
    t0 = time.time()
    log = _finish(_torchrun(["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())],
                            *TINY, "--max-steps", "100000", "--batch-size", "4", "--time-budget", "4",
                            "--output", str(out)), timeout=180)
    s = json.loads((out / "training_summary.json").read_text())
    assert s["stopped_by_time_budget"] and 0 < s["steps"] < 100000
    assert "time budget of 4 s reached" in log
    assert time.time() - t0 < 180


def test_ddp_run_resumes_from_its_checkpoint(tmp_path):
    """A 2-rank run killed after a checkpoint resumes (2 ranks) to the adapter of an uninterrupted run."""
    args = [*BASE, "--max-steps", "60", "--batch-size", "2", "--checkpoint-every", "3"]
    ref, out = tmp_path / "ref", tmp_path / "resumed"
    _train(*args, "--output", str(ref))
    launcher = ["--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    p = _torchrun([*launcher, "--master_port", str(free_port())], *args, "--output", str(out))
    deadline = time.time() + 180
    while not (out / "checkpoint" / "state.pt").exists():
        assert p.poll() is None, p.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    _stop(p)  # the launcher and both ranks, mid-run (as a scheduler preempting the job would)
    p.communicate()
    assert not (out / "adapter_model.safetensors").exists()
    log = _finish(_torchrun([*launcher, "--master_port", str(free_port())], *args, "--output", str(out)))
    assert "resuming from" in log
    assert json.loads((out / "training_summary.json").read_text())["steps"] == 60
    _assert_same_adapter(ref, out)
