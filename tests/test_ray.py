"""Ray Serve replicas and Ray Data batch QA (issue 17), with real Ray in a network namespace.

Each Ray test runs tests/ray_jobs.py inside ``unshare --net --pid --fork --mount-proc --kill-child``
with only loopback up: Ray cannot bind anything but 127.0.0.1 there (outside it rewrites
127.0.0.1 to the machine's address and binds 0.0.0.0), and the namespace's processes all die
with it, also on a timeout. Each test gets its own short RAY_TMPDIR (Ray's socket paths must stay
under ~107 bytes; a stale /tmp/ray breaks the next ray.init).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .helpers import DEV_SAMPLE, ROOT, run_cli

pytestmark = [pytest.mark.ray]

N_PASSAGES = 20_000


def _netns_ok() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a network namespace (unshare --net)"
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "needs unshare and ip (util-linux, iproute2)"
    return None


def in_netns(job: str, tmp: Path, *args: str, timeout: int) -> dict:
    """Run ``python -m tests.ray_jobs JOB`` in a fresh network+PID namespace; its JSON report."""
    pytest.importorskip("ray")
    why = _netns_ok()
    if why:
        pytest.skip(why)
    report = tmp / f"{job}-report.json"
    ray_tmp = Path(tempfile.mkdtemp(prefix="qbray", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    cmd = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c",
           'ip link set lo up && exec "$@"', "sh",
           sys.executable, "-m", "tests.ray_jobs", job, "--report", str(report), *args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # unshare was killed: --kill-child took the namespace with it
        pytest.fail(f"ray job {job} ran past {timeout} s:\n{(exc.stdout or b'')[-3000:]!r}\n{(exc.stderr or b'')[-3000:]!r}")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if proc.returncode != 0 or not report.exists():
        pytest.fail(f"ray job {job} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(report.read_text())


# -- without Ray running --------------------------------------------------------------------------
def test_default_serving_path_does_not_import_ray():
    code = ("import sys, qabridge, qabridge.cli, qabridge.api, qabridge.bridge.server, qabridge.bridge.routes;"
            "print([m for m in sys.modules if m == 'ray' or m.startswith('ray.')][:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("argv, code, message", [
    (["serve", "--replicas", "2"], 2, "--replicas/--autoscale/--cpus-per-replica/--address need --ray"),
    (["serve", "--ray", "--autoscale", "3:1"], 2, "--autoscale MIN:MAX needs 1 <= MIN <= MAX"),
    (["serve", "--ray", "--autoscale", "two"], 2, "--autoscale takes MIN:MAX"),
    (["serve", "--ray", "--replicas", "2", "--autoscale", "1:2"], 2, "give --replicas or --autoscale, not both"),
    (["serve", "--ray", "--model", "/nonexistent/x.gguf"], 4, "no such model file"),
    (["batch", "--data", "/nonexistent/p.jsonl", "--out", "OUT"], 3, "no such data file"),
    (["batch", "--data", "DATA.csv", "--out", "OUT"], 3, "--data must be .jsonl, .parquet"),
    (["batch", "--data", "DATA.jsonl", "--questions", "Q.csv", "--out", "OUT"], 3, "questions must be a .txt"),
    (["batch", "--data", "DATA.jsonl", "--out", "OUT", "--cpus-per-actor", "0"], 2, "--cpus-per-actor must be > 0"),
])
def test_bad_arguments_fail_in_one_line_before_ray_starts(tmp_path, argv, code, message):
    pytest.importorskip("ray")
    (tmp_path / "DATA.csv").write_text("id,context\n")
    (tmp_path / "DATA.jsonl").write_text('{"id": 1, "question": "q?", "context": "c"}\n')
    (tmp_path / "Q.csv").write_text("q?\n")
    argv = [str(tmp_path / a) if a in ("DATA.csv", "DATA.jsonl", "Q.csv", "OUT") else a for a in argv]
    r = run_cli(*argv, timeout=120)
    assert r.returncode == code, r.stderr
    assert r.stderr.startswith("error: ") and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_resume_cuts_a_partial_last_line(tmp_path):
    from qabridge.bridge.ray_batch import ANSWERS_FILE, read_done

    f = tmp_path / ANSWERS_FILE
    f.write_text('{"id": "a"}\n{"id": 7}\n{"id": "c", "ans')
    assert read_done(tmp_path) == {"a", "7"}
    assert f.read_text() == '{"id": "a"}\n{"id": 7}\n'


# -- Ray Serve --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_serve_two_replicas_survive_a_kill_and_a_rolling_redeploy(exported, tmp_path):
    model = tmp_path / "bert-qa.q8_0.gguf"
    shutil.copyfile(exported("q8_0"), model)
    rep = in_netns("serve", tmp_path, "--model", str(model), timeout=840)

    # Each replica sized from its 1 assigned CPU, not from the machine's cores.
    assert {i["threads"] for i in rep["replica_info"]} == {1}, rep["replica_info"]

    kill = rep["kill"]
    assert kill["all"]["failed"] == 0, kill["all"]["failures"]
    assert kill["all"]["wrong"] == 0
    assert len(kill["before"]["replicas"]) == 2, kill["before"]  # both replicas served before the kill
    assert kill["after"]["requests"] > 0
    # Requests in flight on the killed replica were resent to the other one by the ingress.
    assert kill["all"]["retried"] >= 1, kill
    assert rep["recovered"]["ok"], rep["recovered"]  # Serve replaced it: 2 RUNNING again
    assert rep["kill"]["victim"] not in rep["recovered"]["pids"]

    red = rep["redeploy"]
    assert red["load"]["failed"] == 0, red["load"]["failures"]
    assert red["load"]["wrong"] == 0 and red["load"]["requests"] > 0
    assert not set(red["old_pids"]) & set(red["new_pids"]), red  # every replica replaced
    assert red["files"] == [red["expected_file"]]  # and serving the new file
    assert red["states"] == {"RUNNING": 2}


# -- Ray Data ---------------------------------------------------------------------------------------
def make_passages(n: int) -> list[dict]:
    """n short passages (one or two sentences of SQuAD dev contexts), each with a question of its paragraph."""
    from qabridge.train.squad import load_squad, squad_file

    examples = load_squad(squad_file("dev") or DEV_SAMPLE)
    rows: list[dict] = []
    k = 0
    while len(rows) < n:
        for e in examples:
            sents = re.split(r"(?<=[.!?])\s+", e.context)
            i = k % max(1, len(sents))
            rows.append({"id": f"p{len(rows)}", "question": e.question, "context": " ".join(sents[i : i + 2])})
            if len(rows) == n:
                break
        k += 1
    return rows


@pytest.fixture(scope="module")
def tiny_gguf(tiny_bert, tmp_path_factory) -> Path:
    """A tiny random BERT QA GGUF: 20k passages in seconds, and still a real llama.cpp model."""
    from qabridge.export.run import export

    p = tmp_path_factory.mktemp("ray-gguf") / "tiny.f32.gguf"
    export(tiny_bert, output=p, outtype="f32", modelfile=None)
    return p


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_batch_every_id_once_equal_to_single_process_with_an_actor_killed(tiny_gguf, tmp_path):
    from qabridge.bridge.llama_engine import gguf_pipeline
    from qabridge.bridge.ray_batch import ANSWERS_FILE
    from qabridge.train.evaluate import predict_examples
    from qabridge.train.squad import Example

    rows = make_passages(N_PASSAGES)
    data = tmp_path / "passages.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = in_netns("batch", tmp_path, "--model", str(tiny_gguf), "--data", str(data), "--out", str(tmp_path / "out"),
                   timeout=840)

    # The single-process answers: the pipeline and predict_examples that `qabridge eval` uses.
    pipe = gguf_pipeline(tiny_gguf, n_threads=1)
    ref = predict_examples(pipe, [Example(id=r["id"], title="", context=r["context"], question=r["question"]) for r in rows])
    pipe.encoder.close()

    assert rep["killed"].get("pid"), rep  # an actor really was killed mid-run
    assert rep["killed"]["at_written"] < N_PASSAGES
    for out, run in ((tmp_path / "out", rep["run"]), (tmp_path / "out-resume", rep["resume"])):
        got = [json.loads(line) for line in (out / ANSWERS_FILE).read_text().splitlines()]
        ids = [g["id"] for g in got]
        assert len(ids) == len(set(ids)) == N_PASSAGES, (len(ids), len(set(ids)))  # every id exactly once
        assert set(ids) == set(ref)
        assert run["total"] == N_PASSAGES and run["errors"] == 0
        diff = [g["id"] for g in got if (g["answer"], g["start"], g["end"], g["score"], g["no_answer_probability"])
                != (ref[g["id"]]["text"], ref[g["id"]]["start"], ref[g["id"]]["end"], ref[g["id"]]["score"], ref[g["id"]]["null"])]
        assert diff == [], f"{len(diff)} answers differ from the single-process ones, e.g. {diff[:3]}"
    assert rep["run"]["written"] == N_PASSAGES and rep["run"]["already_done"] == 0
    assert rep["run"]["duplicates"] == 0  # Ray itself delivered each row once, kill and retry included
    # The resumed run kept the whole lines it found and answered only the rest.
    assert rep["resume"]["already_done"] == rep["resume"]["kept"]
    assert rep["resume"]["written"] == N_PASSAGES - rep["resume"]["kept"]
    assert rep["bad_input"] == {"class": "DataError", "message": rep["bad_input"]["message"]}
    assert "missing column(s) context" in rep["bad_input"]["message"]
