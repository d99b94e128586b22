"""How often a reader abstains on each kind of generated negative, at its threshold (issue 13).

    .venv/bin/python benchmarks/experiments/negatives_recall.py MODEL.gguf [--threshold T] [--n 300] [--json OUT]

Generates up to ``--n`` unanswerable questions per adversarial method (train/negatives.py) from
SQuAD v1.1 *dev* questions (seeded), runs the reader over them (llama.cpp, or ONNX Runtime for an
.onnx file) and prints the share it abstains on at ``--threshold`` (default: the model file's
stored one), beside answerable v1.1 dev questions and SQuAD 2.0 dev articles 1-17 (its tuning half).
A kind the reader already refuses almost always teaches it little more; a kind it misses about as
often as SQuAD 2.0's own unanswerable questions is a kind worth training on.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from qabridge.bridge.engine_select import file_pipeline
    from qabridge.train.evaluate import predict_examples
    from qabridge.train.negatives import METHODS, Corpus, adversarial_candidates
    from qabridge.train.squad import (
        Example,
        first_articles,
        load_squad,
        squad2_dev_file,
        squad_file,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--n", type=int, default=300, help="questions per kind")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--no-v2", action="store_true", help="leave out SQuAD 2.0 dev (a quick look)")
    a = ap.parse_args()

    dev = load_squad(squad_file("dev"))
    corpus = Corpus(dev)
    sources = random.Random(a.seed).sample(dev, len(dev))
    made: dict[str, list[Example]] = {m: [] for m in METHODS}
    for e in sources:
        if all(len(v) >= a.n for v in made.values()):
            break
        for m, cands in adversarial_candidates(e, corpus, seed=a.seed, methods=METHODS).items():
            if len(made[m]) < a.n:
                c = cands[0]
                made[m].append(Example(f"{e.id}_{m}", e.title, e.context, c.question, (), is_impossible=True))
    groups = {f"generated: {m}": xs for m, xs in made.items() if xs}
    groups["v1.1 dev, answerable"] = sources[: a.n]
    v2 = squad2_dev_file()
    if v2 is not None and not a.no_v2:
        ex2 = load_squad(v2)
        tune = first_articles(ex2, 17)
        groups["SQuAD 2.0 dev 1-17, unanswerable"] = [e for e in ex2 if e.title in tune and e.is_impossible]
        groups["SQuAD 2.0 dev 1-17, answerable"] = [e for e in ex2 if e.title in tune and not e.is_impossible]
    pipe = file_pipeline(a.model)
    # The engine holds the file's metadata already (GGUF and ONNX alike): no second read of the file.
    threshold = a.threshold if a.threshold is not None else pipe.encoder.file.null_threshold
    if threshold is None:
        sys.exit(f"{a.model}: no stored null threshold read; give --threshold")
    out = {"model": a.model, "threshold": threshold, "seed": a.seed, "abstained": {}}
    print(f"{a.model}: share abstained at threshold {threshold:.3f}")
    for name, xs in groups.items():
        preds = predict_examples(pipe, xs)
        share = sum(v["na"] > threshold for v in preds.values()) / len(xs)
        out["abstained"][name] = {"questions": len(xs), "share": round(share, 4)}
        print(f"  {name:<36} {len(xs):>5}  {share:.3f}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
