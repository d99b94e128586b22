"""The teacher's logits in fp32 and under bf16 autocast: speed and how far apart (issue 18, CPU distillation).

    .venv/bin/python benchmarks/experiments/teacher_precision.py [--teacher models/lora-accurate] [--questions 600]

Runs `compute_teacher_logits` (what `qabridge distill --cache-teacher` does before training) on the
windows of the first N SQuAD v1.1 train questions of the seeded subset, twice in each precision, and
compares the two: the largest logit difference, the mean and largest KL(fp32 || bf16) of the start
and end distributions at T = 2, and how often their argmax agrees. Result on the 2-core AMD EPYC in
benchmarks/results/training/accurate/teacher-precision.txt.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def precision_gap(ref: np.ndarray, other: np.ndarray, offsets: np.ndarray, temperature: float = 2.0):
    """Per window and span end (start, end): KL(ref || other) at T, as distillation's loss measures it
    (train/distill.span_kl), and whether the two argmaxes agree."""
    import torch

    from qabridge.train.distill import span_kl

    kl, agree = [], []
    for i in range(len(offsets) - 1):
        a = torch.from_numpy(np.ascontiguousarray(ref[offsets[i] : offsets[i + 1]].T))  # [2, tokens]
        b = torch.from_numpy(np.ascontiguousarray(other[offsets[i] : offsets[i + 1]].T))
        kl += span_kl(b, a, torch.ones_like(a), temperature).tolist()
        agree += (a.argmax(-1) == b.argmax(-1)).tolist()
    return np.asarray(kl), np.asarray(agree)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="models/lora-accurate")
    ap.add_argument("--questions", type=int, default=600)
    ap.add_argument("--data", default=os.environ.get("QABRIDGE_SQUAD_DIR", "../shared/data/squad") + "/train-v1.1.json.gz")
    a = ap.parse_args()

    import torch

    from qabridge.core.machine import cpu_info
    from qabridge.core.tokenizer import WordPieceTokenizer
    from qabridge.train.distill import compute_teacher_logits
    from qabridge.train.features import build_features
    from qabridge.train.model import adapter_tokenizer_dir, load_for_inference
    from qabridge.train.trainer import TrainConfig, training_examples

    cfg = TrainConfig(data=a.data, subset_size=a.questions)
    ex, _, _, _ = training_examples(cfg, np.random.default_rng(cfg.seed), None, log=lambda m: None)
    tok = WordPieceTokenizer.from_hf_dir(adapter_tokenizer_dir(a.teacher))
    feats = build_features(ex, tok, cfg.window_spec())
    teacher, _, _ = load_for_inference(a.teacher)
    print(f"{cpu_info().describe()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"teacher {a.teacher}, {len(feats)} windows of {a.questions} questions")
    out = {}
    for precision in ("fp32", "bf16", "fp32", "bf16"):
        t0 = time.time()
        flat, offsets = compute_teacher_logits(teacher, feats, tok.pad_id, "cpu", precision=precision, log=lambda m: None)
        dt = time.time() - t0
        out[precision] = flat
        print(f"{precision}: {dt:.1f} s, {len(feats) / dt:.1f} windows/s")

    kl, agree = precision_gap(out["fp32"], out["bf16"], offsets)
    print(f"max |logit difference| {np.abs(out['fp32'] - out['bf16']).max():.3f}; KL(fp32 || bf16) at T=2: mean "
          f"{np.mean(kl):.2e}, max {np.max(kl):.2e}; argmax agrees {100 * np.mean(agree):.1f}%")


if __name__ == "__main__":
    main()
