"""What the benchmark's systems share (scripts/bench_peer.py, scripts/bench_inproc.py and the bridge's
client in scripts/bench.py): the timed loop over a burst of questions, the children's side of taking
turns, and the peak resident memory of a process."""

import resource
import time
from concurrent.futures import ThreadPoolExecutor


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM of ``pid``: it starts afresh at exec. (``ru_maxrss`` does not: a child of
    scripts/bench.py would report the parent's size at fork whenever its own peak is smaller.)"""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if pid == "self" else float("nan")


def answer_items(items: list[dict], ask, pool: ThreadPoolExecutor | None) -> dict:
    """``ask(item) -> answer text`` over every item, one client in turn (``pool`` None) or the pool's
    client threads (kept between calls, with their per-thread state): wall time, per-call latencies
    and answers by id. (Peak RSS is read from outside, once: scripts/bench.py, peak_rss_mb(pid).)"""

    def one(it):
        t0 = time.perf_counter()
        answer = ask(it)
        return it["id"], answer, time.perf_counter() - t0

    t0 = time.perf_counter()
    res = [one(it) for it in items] if pool is None else list(pool.map(one, items))
    return {"wall_s": time.perf_counter() - t0, "latencies": [r[2] for r in res], "answers": {r[0]: r[1] for r in res}}


def serve_turns(job: dict, ask, first: dict) -> None:
    """The children's side of scripts/bench.py's taking turns: answer ``job["warmup"]``, print
    ``first`` (a JSON line: ready), then answer each JSON line of stdin (``{"items": [...]}``, a
    burst) with :func:`answer_items`'s result line, the same ``job["clients"]`` client threads
    throughout, until stdin closes."""
    import json
    import sys

    clients = job["clients"]
    pool = ThreadPoolExecutor(clients) if clients > 1 else None
    answer_items(job.get("warmup", []), ask, pool)
    print(json.dumps(first), flush=True)
    for line in sys.stdin:
        print(json.dumps(answer_items(json.loads(line)["items"], ask, pool)), flush=True)
