"""Training cost of LoRA, QLoRA (4-bit base) and full fine-tuning, one method at a time.

    python benchmarks/experiments/train_cost.py [--device cpu] [--steps 12] [--batch-size 16] [--out benchmarks/results/training/train-cost-cpu.json]

Each method runs `qabridge train` with the default recipe (scripts/recipes/default_recipe.sh: 384-token
windows, LoRA r=32 on query/key/value/dense) for the same number of optimizer steps on the same
seeded subset of SQuAD train, in its own process, so its peak memory is its own. Full fine-tuning
uses lr 1e-4 (the recipe's 1e-3 is a LoRA rate); the learning rate does not change the cost.
Writes the summaries to --out (JSON) and prints a Markdown table. Training speed includes the
first steps (allocator and kernel warm-up), which is what a short run costs.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METHODS = {
    "LoRA": [],
    "QLoRA (nf4 base)": ["--quantize", "4bit"],
    "full fine-tuning": ["--full", "--lr", "1e-4"],
}
KEEP = ("steps", "examples_seen", "wall_time_s", "examples_per_s", "mean_padded_tokens", "peak_rss_mb", "peak_gpu_mb",
        "trainable_params", "total_params", "adapter_bytes", "device_name", "final_loss")


def recipe() -> list[str]:
    out = subprocess.run(
        ["bash", "-c", '. scripts/recipes/default_recipe.sh && printf "%s\\n" "${DEFAULT_RECIPE[@]}"'],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split("\n")[:-1]
    if "--eval-every" in out:  # a learning curve is not part of the training cost
        i = out.index("--eval-every")
        del out[i : i + 2]
    return out


def default_data() -> str:
    sys.path.insert(0, str(ROOT))
    from qabridge.train.squad import squad_file

    found = squad_file("train")
    if found is None:
        sys.exit("SQuAD v1.1 train not found: pass --data, or set QABRIDGE_SQUAD_DIR")
    return str(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--subset", type=int, default=2000, help="questions drawn (seeded) from the training set")
    ap.add_argument("--data", default=None, help="SQuAD train file (default: QABRIDGE_SQUAD_DIR or ../shared/data/squad)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "training" / "train-cost-cpu.json")
    args = ap.parse_args()
    data = args.data or default_data()
    rows, args_recipe = [], recipe()
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in METHODS.items():
            out = Path(tmp) / name.split()[0].lower()
            cmd = [sys.executable, "-m", "qabridge.cli", "train", "--data", data, "--output", str(out), "--quiet",
                   *args_recipe, "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
                   "--subset-size", str(args.subset), "--device", args.device, "--checkpoint-every", "0", *extra]
            print(f"== {name}: {' '.join(cmd[2:])}", flush=True)
            r = subprocess.run(cmd, cwd=ROOT)
            if r.returncode != 0:
                rows.append({"method": name, "error": f"exit {r.returncode}"})
                continue
            s = json.loads((out / "training_summary.json").read_text())
            rows.append({"method": name, **{k: s.get(k) for k in KEEP}})
    result = {
        "machine": platform.processor() or platform.machine(),
        "device": args.device,
        "max_seq_len": 384,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "subset_questions": args.subset,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


def table(result: dict) -> str:
    lines = [
        "| method | trainable params | windows/s | tokens per window (padded) | peak RSS MB | peak GPU MB | adapter/model bytes | device |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['error']} | | | | | | |")
            continue
        gpu = "–" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:,.0f}"
        tokens = r.get("mean_padded_tokens") or "–"
        lines.append(
            f"| {r['method']} | {r['trainable_params']:,} of {r['total_params']:,} | {r['examples_per_s']:.2f} | {tokens} | "
            f"{r['peak_rss_mb']:,.0f} | {gpu} | {r['adapter_bytes']:,} | {r['device_name']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
