"""Encoder speed per window, named bases side by side, through llama.cpp (the bridge's engine).

    .venv/bin/python benchmarks/experiments/bench_bases.py [--adapter all-minilm-l6-v2=models/lora --adapter bge-small-en-v1.5=DIR]
                                            [--outtypes q8_0,bf16] [--n 40] [--rounds 5] [--threads 2]

Each adapter is exported once per outtype (cached in .cache/bench-bases/), the same full 384-token
windows (the first --n questions of the dev sample, one window per call, as a single request
makes them) are encoded by every model in interleaved rounds; the best and median round are
printed as ms per window. Speed does not depend on the adapter's weights, only on the base's shape.
Without --adapter for bge-small, a 1-step adapter is trained on the SQuAD sample to have one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / ".cache" / "bench-bases"


def cpu_name() -> str:
    from qabridge.core.machine import cpu_info

    cpu = cpu_info()
    return f"{cpu.name} (family {cpu.family or '?'} model {cpu.model or '?'}), {os.cpu_count()} CPUs"


def tiny_bge_adapter() -> Path:
    from qabridge.train.trainer import TrainConfig, train

    out = CACHE / "bge-small-1step"
    if not (out / "adapter_model.safetensors").exists():
        train(TrainConfig(base="bge-small-en-v1.5", data=str(ROOT / "tests" / "fixtures" / "squad_train_sample.json"),
                          output=str(out), max_steps=1, batch_size=2, max_seq_len=128, lora_r=4, lora_alpha=8,
                          checkpoint_every=0, device="cpu", overwrite=True), progress=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapter", action="append", default=[], help="NAME=DIR (repeatable)")
    ap.add_argument("--outtypes", default="q8_0,bf16")
    ap.add_argument("--n", type=int, default=40, help="dev-sample questions whose first window is encoded")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()

    from qabridge.bridge.llama_engine import gguf_pipeline
    from qabridge.export.run import export
    from qabridge.train.squad import load_squad

    adapters = dict(a.split("=", 1) for a in args.adapter) or {"all-minilm-l6-v2": str(ROOT / "models" / "lora")}
    if "bge-small-en-v1.5" not in adapters:
        adapters["bge-small-en-v1.5"] = str(tiny_bge_adapter())
    CACHE.mkdir(parents=True, exist_ok=True)
    pipes = {}
    for name, adapter in adapters.items():
        for o in args.outtypes.split(","):
            p = CACHE / f"{name}.{o}.gguf"
            if not p.exists():
                export(adapter, output=p, outtype=o, modelfile=None, force=True)
            pipes[f"{name} {o}"] = (gguf_pipeline(p, n_threads=args.threads, n_contexts=1), p.stat().st_size)
    examples = load_squad(ROOT / "tests" / "fixtures" / "squad_dev_sample.json")
    first = next(iter(pipes.values()))[0]
    # Long contexts repeated so every window is full (384 tokens): the cost the bridge pays per window.
    windows = [first.prepare(e.question, " ".join([e.context] * 4))[1][0] for e in examples[: args.n]]
    times: dict[str, list[float]] = {k: [] for k in pipes}
    load_start = os.getloadavg()[0]  # the machine is shared: other work slows every row alike
    for _ in range(args.rounds):
        for name, (pipe, _size) in pipes.items():
            pipe.encoder.logits(windows[:2])  # warm
            t0 = time.perf_counter()
            for w in windows:
                pipe.encoder.logits([w])
            times[name].append(1e3 * (time.perf_counter() - t0) / len(windows))
            print(f"{name}: {times[name][-1]:.1f} ms/window", file=sys.stderr, flush=True)
    rows = []
    for name, (pipe, size) in pipes.items():
        pipe.encoder.close()
        rows.append({"model": name, "best_ms": round(min(times[name]), 1), "median_ms": round(statistics.median(times[name]), 1),
                     "size_mb": round(size / 1e6, 1)})
    res = {"cpu": cpu_name(), "threads": args.threads, "windows": len(windows),
           "tokens_per_window": round(sum(len(w.input_ids) for w in windows) / len(windows)), "rounds": args.rounds,
           "load_avg_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)], "rows": rows}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
