"""Load test of the bridge on loopback: bounded in time and requests, a mix of valid, long and invalid.

    .venv/bin/python benchmarks/experiments/loadtest.py [--seconds 60] [--clients 16] [--max-requests 20000]

Starts its own bridge on a free loopback port (the default q8_0 model), answers every distinct
valid request once sequentially to know the right answer, then runs the clients for the given
time. Reports 5xx, dropped connections, wrong answers and RSS growth after warm-up; writes
benchmarks/results/reliability/reliability.json and benchmarks/results/reliability/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-requests", type=int, default=20000)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    from qabridge.export.run import default_model
    from qabridge.train.squad import load_squad, squad_file
    from tests.helpers import DEV_SAMPLE, start_server

    src = squad_file("dev") or DEV_SAMPLE
    examples = load_squad(src)[:200]
    long_ctx = " ".join(e.context for e in examples[:12])
    valid = [{"question": e.question, "context": e.context} for e in examples[:60]]
    longs = [{"question": e.question, "context": long_ctx} for e in examples[:10]]
    invalid = [b"{broken", b'{"context": "c"}', b'{"question": "", "context": "c"}', b'{"question": "q?", "context": "c", "top_k": 0}',
               b'{"question": 3, "context": "c"}', b"x" * 2_100_000]
    model = Path(args.model) if args.model else default_model("q8_0")
    tmp = ROOT / ".cache" / "loadtest"
    tmp.mkdir(parents=True, exist_ok=True)
    s = start_server(model, tmp)
    pid = s.proc.pid
    try:
        c = httpx.Client(timeout=300)
        expected = {}
        for body in valid + longs:
            r = c.post(s.url + "/api/qa", json=body)
            r.raise_for_status()
            expected[(body["question"], len(body["context"]))] = (r.json()["start"], r.json()["end"])
        rss_warm = rss_mb(pid)
        stats: Counter = Counter()
        wrong: list = []
        lock = threading.Lock()
        deadline = time.time() + args.seconds
        sent = [0]
        samples = []

        def client(seed: int) -> None:
            rnd = random.Random(seed)
            cl = httpx.Client(timeout=300)
            while time.time() < deadline:
                with lock:
                    if sent[0] >= args.max_requests:
                        return
                    sent[0] += 1
                kind = rnd.choices(["valid", "long", "invalid"], weights=[70, 10, 20])[0]
                try:
                    if kind == "invalid":
                        raw = rnd.choice(invalid)
                        r = cl.post(s.url + "/api/qa", content=raw, headers={"content-type": "application/json"})
                    else:
                        body = rnd.choice(valid if kind == "valid" else longs)
                        r = cl.post(s.url + "/api/qa", json=body)
                except httpx.HTTPError as exc:
                    with lock:
                        stats[f"dropped:{exc.__class__.__name__}"] += 1
                    continue
                with lock:
                    stats[f"{kind}:{r.status_code}"] += 1
                    if r.status_code >= 500:
                        stats["5xx"] += 1
                    if kind != "invalid" and r.status_code == 200:
                        got = (r.json()["start"], r.json()["end"])
                        if got != expected[(body["question"], len(body["context"]))]:
                            wrong.append(body["question"])
                    if kind == "invalid" and r.status_code < 400:
                        wrong.append("invalid accepted")

        def sampler() -> None:
            while time.time() < deadline:
                samples.append(rss_mb(pid))
                time.sleep(1)

        t0 = time.time()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)] + [threading.Thread(target=sampler)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - t0
        rss_end = rss_mb(pid)
        health = c.get(s.url + "/api/health").json()
    finally:
        code = s.stop()
    dropped = sum(v for k, v in stats.items() if k.startswith("dropped"))
    total = sum(v for k, v in stats.items() if ":" in k)
    res = {
        "seconds": round(wall, 1), "clients": args.clients, "requests": total, "requests_per_s": round(total / wall, 2),
        "by_kind_status": dict(sorted((k, v) for k, v in stats.items() if ":" in k and not k.startswith("dropped"))),
        "5xx": stats["5xx"], "dropped": dropped, "wrong_answers": len(wrong),
        "rss_after_warmup_mb": round(rss_warm, 1), "rss_end_mb": round(rss_end, 1), "rss_peak_mb": round(max(samples or [rss_end]), 1),
        "rss_growth_pct": round(100 * (rss_end - rss_warm) / rss_warm, 2), "health_after": health["status"], "exit_code": code,
        "model": str(model),
    }
    out = ROOT / "benchmarks" / "results" / "reliability"
    out.mkdir(parents=True, exist_ok=True)
    (out / "reliability.json").write_text(json.dumps(res, indent=2) + "\n")
    ok = res["5xx"] == 0 and dropped == 0 and not wrong and res["rss_growth_pct"] < 10 and code == 0
    lines = ["# Reliability: load test", "",
             f"`{' '.join(['.venv/bin/python', 'benchmarks/experiments/loadtest.py'] + sys.argv[1:])}` on this machine (2 cores), loopback only.", "",
             f"- {res['requests']} requests in {res['seconds']} s from {args.clients} clients ({res['requests_per_s']} req/s): "
             "70% valid SQuAD dev questions, 10% long contexts (12 paragraphs), 20% invalid (bad JSON, missing/empty/wrong-type fields, 2.1 MB body).",
             f"- 5xx: **{res['5xx']}**, dropped connections: **{dropped}**, wrong answers: **{len(wrong)}** (each valid request compared with the answer the same bridge gave sequentially before the load).",
             f"- RSS: {res['rss_after_warmup_mb']} MB after warm-up, {res['rss_end_mb']} MB at the end (growth {res['rss_growth_pct']}%), peak {res['rss_peak_mb']} MB.",
             f"- Health afterwards: {res['health_after']}; SIGTERM exit code: {code}.",
             f"- Status counts: {json.dumps(res['by_kind_status'])}",
             f"- Verdict: {'PASS' if ok else 'FAIL'} (zero 5xx, zero dropped, every valid answer correct, RSS growth < 10%).", ""]
    (out / "reliability.md").write_text("\n".join(lines))
    print("\n".join(lines))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
