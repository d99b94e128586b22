"""Where the OpenVINO engine's memory goes: RSS of ``openvino_pipeline`` loaded, after paragraphs
one at a time, then after paragraphs from 8 threads (as 8 HTTP clients drive it), with the knobs
that were tried (docs/performance.md, "Current numbers", the 2026-12-08 Intel run).

    .venv/bin/python benchmarks/experiments/openvino_rss.py MODEL.xml [--contexts 1|2] [--arenas N]
        [--runtime-cache N]

MODEL.xml: e.g. the built-in int8 file ``~/.cache/qabridge/models/default-*.int8.*.xml``.
"""

from __future__ import annotations

import argparse
import threading
import time


def rss_mb() -> int:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--contexts", type=int, default=2, help="2: the engine's one-stream and multi-stream compilations")
    ap.add_argument("--arenas", type=int, default=0, help="cap glibc's malloc arenas first, as `qabridge serve` does")
    ap.add_argument("--runtime-cache", type=int, default=None, help="CPU_RUNTIME_CACHE_CAPACITY for both compilations")
    ap.add_argument("--n", type=int, default=200)
    a = ap.parse_args()
    if a.arenas:
        from qabridge.bridge.server import limit_malloc_arenas

        limit_malloc_arenas(a.arenas)
    from qabridge.bridge import openvino_engine
    from qabridge.train.squad import load_squad, squad_file

    if a.runtime_cache is not None:
        options = openvino_engine.compile_options
        openvino_engine.compile_options = lambda *x, **k: {**options(*x, **k), "CPU_RUNTIME_CACHE_CAPACITY": a.runtime_cache}
    pipe = openvino_engine.openvino_pipeline(a.model, n_threads=2, n_contexts=a.contexts)
    print(f"loaded: {rss_mb()} MB")
    qs = [(e.question, e.context) for e in list(load_squad(squad_file("dev")))[: 2 * a.n]]
    t = time.perf_counter()
    for q, c in qs[: a.n]:
        pipe.predict(q, c)
    print(f"{a.n} paragraphs one at a time: {rss_mb()} MB, {a.n / (time.perf_counter() - t):.1f} q/s")

    def work(i: int) -> None:
        for q, c in qs[a.n + i :: 8]:
            with pipe.encoder.demand():
                pipe.predict(q, c)

    t = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print(f"{a.n} more from 8 threads: {rss_mb()} MB, {a.n / (time.perf_counter() - t):.1f} q/s")


if __name__ == "__main__":
    main()
