"""How much probability a teacher puts on [CLS], by kind of training window: read from a `--cache-teacher` entry.

    .venv/bin/python benchmarks/experiments/teacher_cls_mass.py CACHE_ENTRY --data train-v1.1.json.gz \
        --subset-size 20000 --negatives topical --negative-ratio 0.33

CACHE_ENTRY is one `teacher-<key>` directory that `qabridge distill --cache-teacher` wrote; the
options are the distill run's (they rebuild its windows, which must match the cache's). For each
kind - generated negatives, answerable windows holding their answer, answerable windows that miss it
(long contexts) - the mean of the start and end softmax at [CLS], at T = 1 and at the distillation
temperature. Why `--negatives-target gold` is distill's default: a teacher trained without negatives
(issue 18's `bert-qa-accurate`) puts ~2% on [CLS] for a generated unanswerable window, so its soft
targets there teach the student to answer (docs/quality.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def cls_probability(logits: np.ndarray, temperature: float) -> float:
    """Mean over start and end of softmax(logits / T) at position 0 ([CLS]); logits [tokens, 2]."""
    x = np.asarray(logits, dtype=np.float64) / temperature
    p = np.exp(x - x.max(axis=0))
    return float((p[0] / p.sum(axis=0)).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", type=Path, help="a teacher-<key> directory inside --cache-teacher")
    ap.add_argument("--data", required=True)
    ap.add_argument("--subset-size", type=int, default=None)
    ap.add_argument("--negatives", default="none")
    ap.add_argument("--negative-ratio", type=float, default=0.33)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-seq-len", type=int, default=384)
    ap.add_argument("--doc-stride", type=int, default=128)
    ap.add_argument("--base", default=None, help="the student's base (its tokenizer made the windows)")
    ap.add_argument("--temperature", type=float, default=2.0)
    a = ap.parse_args(argv)

    from qabridge.core.tokenizer import WordPieceTokenizer
    from qabridge.train.distill import cache_fits
    from qabridge.train.features import build_features
    from qabridge.train.model import resolve_base, tokenizer_dir
    from qabridge.train.trainer import TrainConfig, training_examples

    cfg = TrainConfig(data=a.data, subset_size=a.subset_size, negatives=a.negatives, negative_ratio=a.negative_ratio,
                      seed=a.seed, max_seq_len=a.max_seq_len, doc_stride=a.doc_stride, base=a.base)
    examples, _, _, _ = training_examples(cfg, np.random.default_rng(cfg.seed), cfg.negative_config(), log=lambda m: None)
    tok = WordPieceTokenizer.from_hf_dir(tokenizer_dir(resolve_base(cfg.base)))
    feats = build_features(examples, tok, cfg.window_spec())
    flat = np.load(a.cache / "logits.npy", mmap_mode="r")
    offsets = np.load(a.cache / "offsets.npy")
    if not cache_fits(offsets, feats):
        print(f"{a.cache}: these options make {len(feats)} windows that are not the cached {len(offsets) - 1}",
              file=sys.stderr)
        return 2
    generated = feats.generated(examples)
    null = (feats.start_positions == 0) & (feats.end_positions == 0)
    groups = {"generated negatives": generated, "answerable, answer in the window": ~generated & ~null,
              "answerable, answer outside the window": ~generated & null}
    print("| windows | count | T | P([CLS]) mean | median | share > 0.5 |\n|---|---|---|---|---|---|")
    for temperature in dict.fromkeys((1.0, a.temperature)):
        for name, sel in groups.items():
            v = np.array([cls_probability(flat[offsets[i] : offsets[i + 1]], temperature) for i in np.flatnonzero(sel)])
            if len(v):
                print(f"| {name} | {len(v)} | {temperature:g} | {v.mean():.3f} | {np.median(v):.3f} | "
                      f"{100 * (v > 0.5).mean():.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
