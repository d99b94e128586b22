"""CPU training under glibc's malloc and under tcmalloc, taking turns (train/allocator.py).

    .venv/bin/python benchmarks/experiments/train_allocator.py [--base bge-small-en-v1.5] [--rounds 2] [--steps 10]

Each run is `qabridge train` on a seeded subset of SQuAD v1.1 train (length-grouped batches of real
windows up to 384 tokens, the default recipe's LoRA r=32 in micro-batches of 32 x 2), with
QABRIDGE_ALLOCATOR=system or tcmalloc; the order alternates per round. Writes
benchmarks/results/training/train-allocator.json (windows/s, wall time, final loss, peak RSS per run, and the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="bge-small-en-v1.5")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "squad" / "train-v1.1.json.gz"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--subset", type=int, default=3000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training" / "train-allocator.json"))
    a = ap.parse_args()
    from qabridge.core.machine import cpu_info
    from qabridge.train.allocator import find_tcmalloc

    if find_tcmalloc() is None:
        sys.exit("tcmalloc is not installed (apt-get install libtcmalloc-minimal4)")
    runs = []
    for r in range(a.rounds):
        for alloc in (("system", "tcmalloc") if r % 2 == 0 else ("tcmalloc", "system")):
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [str(ROOT / ".venv" / "bin" / "qabridge"), "train", "--base", a.base, "--data", a.data,
                       "--output", tmp, "--subset-size", str(a.subset), "--max-steps", str(a.steps),
                       "--batch-size", "32", "--grad-accum", "2", "--lora-r", "32", "--lora-alpha", "64",
                       "--lora-dropout", "0", "--target-modules", "query,key,value,dense", "--lr", "1e-3",
                       "--device", "cpu", "--quiet"]
                env = {**os.environ, "QABRIDGE_ALLOCATOR": alloc, "LD_PRELOAD": "", "HF_HUB_OFFLINE": "1"}
                subprocess.run(cmd, check=True, env=env, capture_output=True)
                s = json.loads((Path(tmp) / "training_summary.json").read_text())
            row = {"round": r + 1, "allocator": s["allocator"], "windows_per_s": s["examples_per_s"],
                   "wall_time_s": s["wall_time_s"], "windows": s["examples_seen"], "final_loss": s["final_loss"],
                   "mean_padded_tokens": s["mean_padded_tokens"], "peak_rss_mb": s["peak_rss_mb"]}
            print(json.dumps(row), flush=True)
            runs.append(row)
    result = {"cpu": cpu_info().describe(), "base": a.base, "subset": a.subset, "steps": a.steps,
              "command": "benchmarks/experiments/train_allocator.py " + " ".join(sys.argv[1:]), "runs": runs}
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
