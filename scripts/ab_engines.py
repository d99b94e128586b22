"""A/B the default model's cached engine files in-process: one caller, interleaved rounds.

    .venv/bin/python scripts/ab_engines.py [--n 300] [--rounds 4] [FILE ...]

FILE defaults to the default model's ONNX Runtime and OpenVINO candidates of `--engine auto`
(`default_candidates`: the files `qabridge serve` built on first start, built now if missing). Every round each file answers the first --n
SQuAD v1.1 dev questions over their paragraph (`QAPipeline.predict`, tokenizer and span head
included) after a 5-question warm-up; the rounds interleave so a slow spell of the machine hits
every file alike. Prints q/s per round and the median. A quick check of what `--engine auto`
chose, not a benchmark with a committed result (scripts/bench.py is that).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def default_files() -> list[Path]:
    from qabridge.bridge.engine_select import default_candidates

    return [Path(c.path) for c in default_candidates(engines=("onnx", "openvino"))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    from qabridge.bridge.engine_select import file_pipeline
    from qabridge.train.squad import load_squad, squad_file

    dev = squad_file("dev")
    if dev is None:
        raise SystemExit("needs SQuAD v1.1 dev (QABRIDGE_SQUAD_DIR or ../shared/data/squad)")
    qs = [(e.question, e.context) for e in list(load_squad(dev))[: args.n]]
    pipes = {f.name: file_pipeline(f) for f in (args.files or default_files())}
    res: dict[str, list[float]] = {k: [] for k in pipes}
    for _ in range(args.rounds):
        for name, pipe in pipes.items():
            for q, c in qs[:5]:
                pipe.predict(q, c)
            t0 = time.perf_counter()
            for q, c in qs:
                pipe.predict(q, c)
            res[name].append(round(len(qs) / (time.perf_counter() - t0), 1))
    for name, v in res.items():
        print(f"{name}: q/s per round {v}, median {statistics.median(v)}")


if __name__ == "__main__":
    main()
