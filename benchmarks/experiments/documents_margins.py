"""How a reader's margins over [CLS] compare across passages: the rows `documents_tune.py --rows` wrote.

    .venv/bin/python benchmarks/experiments/documents_margins.py NAME=ROWS.json [NAME=ROWS.json ...]

For the tuning set (every article but the first, the report set): the pooled AUC of the margin
(passages holding the answer against the rest), how often the passage with the best margin holds the
answer (every passage read, w = 0), and, for the off-topic questions (`--unanswerable` rows), how
confident the reader is on text that does not answer them. Explains why a reader that scores higher
on one paragraph can still rank passages worse (issue 18's distilled MiniLM, docs/quality.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "recipes"))  # documents_tune.py
from documents_tune import chosen, split_report  # noqa: E402  (the rule and the split the rows were tuned with)


def auc(pos: list[float], neg: list[float]) -> float:
    """P(a passage with the answer has the higher margin), ties split (Mann-Whitney U)."""
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def summary(rows: list[dict]) -> dict:
    pos, neg, top1, off = [], [], [], []
    for q in split_report(rows)[1]:
        best = chosen(q, weight=0.0, top=None)  # every passage read, margin alone
        if not q.get("answerable", True):
            off.append(best["margin"])
            continue
        for r in q["rows"]:
            (pos if r["f1"] > 0.5 else neg).append(r["margin"])
        top1.append(best["f1"] > 0.5)
    out = {"questions": len(top1), "auc": round(auc(pos, neg), 3), "best_margin_answers": round(100 * float(np.mean(top1)), 1),
           "median_margin_with_answer": round(float(np.median(pos)), 1), "median_margin_without": round(float(np.median(neg)), 1)}
    if off:
        out |= {"off_topic": len(off), "off_topic_median_best_margin": round(float(np.median(off)), 1),
                "off_topic_above_20": round(100 * float(np.mean(np.asarray(off) > 20)), 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", nargs="+", metavar="NAME=ROWS.json")
    a = ap.parse_args()
    for item in a.rows:
        name, _, path = item.partition("=")
        print(name, json.dumps(summary(json.loads(Path(path).read_text()))))


if __name__ == "__main__":
    main()
