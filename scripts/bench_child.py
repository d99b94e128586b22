"""What the benchmark's child processes share (scripts/bench_peer.py, scripts/bench_inproc.py): the
timed loop over the questions and the peak resident memory (also read by scripts/bench.py)."""

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


def answer_items(items: list[dict], clients: int, ask, *, warmup: int = 5, pool: ThreadPoolExecutor | None = None) -> dict:
    """``ask(item) -> answer text`` over every item, one client in turn or ``clients`` threads
    (``pool``: threads kept between calls, with their per-thread state), after a ``warmup``-item
    warm-up: wall time, per-call latencies, answers by id and this process's peak RSS."""
    for it in items[:warmup]:
        ask(it)

    def one(it):
        t0 = time.perf_counter()
        answer = ask(it)
        return it["id"], answer, time.perf_counter() - t0

    t0 = time.perf_counter()
    if clients == 1:
        res = [one(it) for it in items]
    elif pool is not None:
        res = list(pool.map(one, items))
    else:
        with ThreadPoolExecutor(clients) as ex:
            res = list(ex.map(one, items))
    return {"wall_s": time.perf_counter() - t0, "latencies": [r[2] for r in res],
            "answers": {r[0]: r[1] for r in res}, "peak_rss_mb": peak_rss_mb()}


def serve_turns(job: dict, ask, first: dict) -> None:
    """For scripts/bench.py's taking turns: print ``first`` (a JSON line: ready), then answer each
    JSON line of stdin (``{"items": [...]}``, a burst) with :func:`answer_items`'s result line, the
    same client threads throughout, until stdin closes. The warm-up comes before ``first``."""
    import json
    import sys

    clients = job["clients"]
    pool = ThreadPoolExecutor(clients) if clients > 1 else None
    if job.get("warmup"):
        answer_items(job["warmup"], clients, ask, warmup=0, pool=pool)
    print(json.dumps(first), flush=True)
    for line in sys.stdin:
        burst = json.loads(line)
        print(json.dumps(answer_items(burst["items"], clients, ask, warmup=0, pool=pool)), flush=True)
