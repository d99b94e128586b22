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


def answer_items(items: list[dict], clients: int, ask) -> dict:
    """``ask(item) -> answer text`` over every item, one client in turn or ``clients`` threads,
    after a 5-item warm-up: wall time, per-call latencies, answers by id and this process's peak RSS."""
    for it in items[:5]:
        ask(it)

    def one(it):
        t0 = time.perf_counter()
        answer = ask(it)
        return it["id"], answer, time.perf_counter() - t0

    t0 = time.perf_counter()
    if clients == 1:
        res = [one(it) for it in items]
    else:
        with ThreadPoolExecutor(clients) as ex:
            res = list(ex.map(one, items))
    return {"wall_s": time.perf_counter() - t0, "latencies": [r[2] for r in res],
            "answers": {r[0]: r[1] for r in res}, "peak_rss_mb": peak_rss_mb()}
