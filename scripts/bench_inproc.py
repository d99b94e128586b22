"""qabridge in-process: the Python API (``qabridge.pipeline()``, the default model on the engine
``qabridge serve`` chose for this CPU), asked the way bench_peer.py asks the transformers pipeline.

Reads a JSON job on stdin (``clients``, ``items``), prints one JSON result. Launched by
scripts/bench.py in its own process, so its peak RSS is its own. With several clients the threads
share one pipeline built with ``contexts=2`` (the wide ONNX Runtime session for a call alone, the
narrow one for calls that meet), as ``qabridge serve`` serves by default.
"""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from rss import peak_rss_mb  # scripts/rss.py, beside this file


def main() -> None:
    import qabridge

    job = json.load(sys.stdin)
    items = job["items"]
    with qabridge.pipeline(contexts=2 if job["clients"] > 1 else 1) as qa:
        for it in items[:5]:  # warm-up
            qa(question=it["question"], context=it["context"])

        def one(it):
            t0 = time.perf_counter()
            r = qa(question=it["question"], context=it["context"])
            return it["id"], r["answer"], time.perf_counter() - t0

        t0 = time.perf_counter()
        if job["clients"] == 1:
            res = [one(it) for it in items]
        else:
            with ThreadPoolExecutor(job["clients"]) as ex:
                res = list(ex.map(one, items))
        wall = time.perf_counter() - t0
        engine = qa._engine.name
    print(json.dumps({
        "engine": engine, "wall_s": wall, "latencies": [r[2] for r in res], "answers": {r[0]: r[1] for r in res},
        "peak_rss_mb": peak_rss_mb(),
    }))


if __name__ == "__main__":
    main()
