"""The Ray halves of tests/test_ray.py, run as ``python -m tests.ray_jobs serve|batch ... --report FILE``
inside a network and PID namespace of their own (test_ray.in_netns): Ray binds loopback only there,
and every process it starts dies with the namespace. Each job writes one JSON report; the test
process asserts on it. No fakes: real Ray, real replicas and actors, real kill -9.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx

from .helpers import DEV_SAMPLE

REPLICA_TITLE = b"ServeReplica:qabridge:QAReplica"
ACTOR_TITLE = b"MapWorker"


def pids_with(title: bytes) -> list[int]:
    """Processes of this PID namespace whose command line (Ray's process title) contains ``title``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if title in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return sorted(out)


class Load:
    """``n`` clients posting QA requests in a loop; every response recorded."""

    def __init__(self, url: str, items: list[tuple[dict, str]], n: int = 4):
        self.url, self.items, self.n = url, items, n
        self.stop = threading.Event()
        self.results: list[dict] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(n)]

    def client(self, k: int) -> None:
        i = k
        with httpx.Client(timeout=120) as c:
            while not self.stop.is_set():
                body, expected = self.items[i % len(self.items)]
                i += self.n
                t = time.monotonic()
                rec = {"t": t}
                try:
                    r = c.post(self.url + "/api/qa", json=body)
                    rec.update(status=r.status_code, replica=r.headers.get("x-qabridge-replica"),
                               retried=r.headers.get("x-qabridge-retried"),
                               right=r.status_code == 200 and r.json().get("answer") == expected)
                    if r.status_code != 200:
                        rec["body"] = r.text[:300]
                except httpx.HTTPError as exc:
                    rec.update(status=None, error=f"{exc.__class__.__name__}: {exc}")
                with self.lock:
                    self.results.append(rec)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(150)

    def summary(self, since: float = 0.0, until: float = float("inf")) -> dict:
        rs = [r for r in self.results if since <= r["t"] < until]
        failed = [r for r in rs if r["status"] != 200]
        return {"requests": len(rs), "failed": len(failed), "failures": failed[:5],
                "wrong": sum(1 for r in rs if r["status"] == 200 and not r["right"]),
                "retried": sum(1 for r in rs if r.get("retried")),
                "replicas": sorted({r["replica"] for r in rs if r.get("replica")})}


def qa_items(model: Path, n: int = 24) -> list[tuple[dict, str]]:
    """Requests and the answer the same model gives in this process (single-process reference)."""
    from qabridge.bridge.llama_engine import gguf_pipeline
    from qabridge.train.squad import load_squad

    pipe = gguf_pipeline(model, n_threads=1)
    out = []
    for e in load_squad(DEV_SAMPLE)[:n]:
        sp = pipe.predict(e.question, e.context).spans[0]
        out.append(({"question": e.question, "context": e.context}, e.context[sp.start : sp.end]))
    pipe.encoder.close()
    return out


def replica_states() -> dict:
    from ray import serve

    return dict(serve.status().applications["qabridge"].deployments["QAReplica"].replica_states)


def wait_replicas(n: int, old: set[int], timeout: float = 120) -> tuple[bool, list[int], float]:
    """Until Serve reports n replicas RUNNING and n replica processes live (at least one new)."""
    t0 = time.monotonic()
    pids: list[int] = []
    while time.monotonic() - t0 < timeout:
        pids = pids_with(REPLICA_TITLE)
        if replica_states() == {"RUNNING": n} and len(pids) == n and set(pids) - old:
            return True, pids, time.monotonic() - t0
        time.sleep(0.5)
    return False, pids, time.monotonic() - t0


def job_serve(args) -> dict:
    from ray import serve

    from qabridge.bridge import ray_serve as rs
    from qabridge.bridge.config import ServeConfig
    from qabridge.bridge.ray_runtime import init_ray

    rep: dict = {}
    model = Path(args.model)
    items = qa_items(model)
    t0 = time.monotonic()
    init_ray(None, num_cpus=2)
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    rep["ray_start_s"] = round(time.monotonic() - t0, 1)
    opts = rs.RayServeOptions(replicas=2, cpus_per_replica=1)
    cfg = rs.prepare_config(ServeConfig(model_path=model, default_embedder=False))
    t0 = time.monotonic()
    rs.deploy(cfg, opts)
    rep["deploy_s"] = round(time.monotonic() - t0, 1)
    url = "http://127.0.0.1:8000"
    before = pids_with(REPLICA_TITLE)
    rep["replica_pids"] = before
    # Threads from the CPUs Ray assigned (1 each here), not os.cpu_count().
    handle = serve.get_deployment_handle("QAReplica", app_name="qabridge")
    rep["replica_info"] = [handle.info.remote().result() for _ in range(4)]
    rep["cpu_count"] = os.cpu_count()

    # 1. Ten seconds of 4 clients; one replica killed with SIGKILL after 3 s.
    with Load(url, items) as load:
        start = time.monotonic()
        time.sleep(3)
        kill_at = time.monotonic()
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        time.sleep(7)
    rep["kill"] = {"victim": victim, "before": load.summary(until=kill_at), "after": load.summary(since=kill_at),
                   "all": load.summary(), "seconds": round(time.monotonic() - start, 1)}
    ok, pids, took = wait_replicas(2, set(before))
    rep["recovered"] = {"ok": ok, "pids": pids, "seconds": round(took, 1), "states": replica_states()}

    # 2. A rolling redeploy (a new model file) under the same load.
    model2 = model.with_name("redeployed-" + model.name)
    shutil.copyfile(model, model2)
    old = set(pids_with(REPLICA_TITLE))
    with Load(url, items) as load:
        time.sleep(2)
        t0 = time.monotonic()
        rs.deploy(rs.prepare_config(ServeConfig(model_path=model2, default_embedder=False)), opts)
        rep_s = time.monotonic() - t0
        time.sleep(2)
    new = set(pids_with(REPLICA_TITLE))
    files = {httpx.get(url + "/api/model/info", timeout=30).json()["file"] for _ in range(12)}
    rep["redeploy"] = {"load": load.summary(), "seconds": round(rep_s, 1), "old_pids": sorted(old),
                       "new_pids": sorted(new), "files": sorted(files), "expected_file": str(model2.resolve()),
                       "states": replica_states()}
    serve.shutdown()
    return rep


def job_batch(args) -> dict:
    from qabridge.bridge.ray_batch import ANSWERS_FILE, run_batch
    from qabridge.bridge.ray_runtime import init_ray
    from qabridge.errors import QABridgeError

    rep: dict = {}
    t0 = time.monotonic()
    init_ray(None, num_cpus=2, object_store_mb=256)
    rep["ray_start_s"] = round(time.monotonic() - t0, 1)
    out = Path(args.out)
    killed: dict = {}

    def kill_one(written: int) -> None:
        # Once a fifth of the answers are in, SIGKILL one actor: Ray Data restarts it and retries its batch.
        if not killed and written >= args.kill_after:
            pids = pids_with(ACTOR_TITLE)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.update(pid=pids[0], actors_then=pids, at_written=written)

    s1 = run_batch(args.data, out, model=args.model, actors=2, cpus_per_actor=0.5, batch_size=200, on_batch=kill_one)
    rep["run"] = s1.__dict__
    rep["killed"] = killed
    rep["actors_after"] = pids_with(ACTOR_TITLE)

    # Resume: a copy of the answers cut after 15000 lines, in the middle of the next one.
    out2 = out.with_name(out.name + "-resume")
    out2.mkdir()
    lines = (out / ANSWERS_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
    keep = min(15000, len(lines) - 1)
    (out2 / ANSWERS_FILE).write_text("".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2], encoding="utf-8")
    s2 = run_batch(args.data, out2, model=args.model, actors=2, cpus_per_actor=0.5, batch_size=200)
    rep["resume"] = {**s2.__dict__, "kept": keep}

    # A data file without a context column: one clear error, no actor started.
    bad = out.parent / "bad.jsonl"
    bad.write_text(json.dumps({"id": 1, "question": "q?"}) + "\n")
    try:
        run_batch(bad, out.parent / "bad-out", model=args.model)
        rep["bad_input"] = None
    except QABridgeError as exc:
        rep["bad_input"] = {"class": exc.__class__.__name__, "message": exc.message}
    return rep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("job", choices=["serve", "batch"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--data")
    ap.add_argument("--out")
    ap.add_argument("--kill-after", type=int, default=4000)
    args = ap.parse_args()
    rep = {"serve": job_serve, "batch": job_batch}[args.job](args)
    Path(args.report).write_text(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
