"""A frozen reader plus a separately trained "answerable?" probe (issue 13, an experiment: not adopted).

    .venv/bin/python benchmarks/experiments/abstain_probe.py features MODEL.onnx train  train.npz [--n 15000] [--pool dev]
    .venv/bin/python benchmarks/experiments/abstain_probe.py features MODEL.onnx v2dev  v2dev.npz
    .venv/bin/python benchmarks/experiments/abstain_probe.py fit train.npz v2dev.npz [--features sc,cls,span,q,prod,qspan]

``features`` runs the reader (a qabridge ONNX file, e.g. the default model's cached
``~/.cache/qabridge/models/default-*.int8.r3.onnx``) over SQuAD v1.1 train questions (``--n`` of
them, seeded) plus as many generated negatives (train/negatives.py, topical and adversarial, half
each), or over the SQuAD 2.0 dev set, and keeps per question, from the window with the best span:
the [CLS] hidden state (``cls``), the mean hidden state of the best span (``span``) and of the
question tokens (``q``), and scalars (``sc``: the null score as `qabridge eval` computes it, span
and [CLS] log-probabilities and raw logits, start/end entropies, the top-two start margin, span
length, windows, question and context tokens). ``fit`` trains a logistic regression on the train
features (standardised, L2), tunes its threshold on SQuAD 2.0 dev articles 1-17 and reports
articles 18-35 beside the reader's own null score, as docs/quality.md does.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SCALARS = ("null_diff", "span_lp", "null_lp", "raw_null_diff", "raw_span", "raw_null", "start_entropy",
           "end_entropy", "start_top2_margin", "span_len", "windows", "question_tokens", "context_tokens")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def features(model: str, which: str, out: str, n: int, max_answer_len: int = 30, pool_split: str = "train") -> None:
    from qabridge.bridge.onnx_engine import OnnxEngine
    from qabridge.core.decode import window_spans
    from qabridge.core.pipeline import QAPipeline
    from qabridge.train.negatives import NegativeConfig, generate_negatives
    from qabridge.train.squad import load_squad, squad2_dev_file, squad_file

    eng = OnnxEngine(model)
    pipe = QAPipeline(eng.file.tokenizer, eng, eng.file.window_spec)
    if which == "train":
        pool = load_squad(squad_file(pool_split))
        pos = random.Random(1).sample(pool, min(n, len(pool)))
        negs, rep = generate_negatives(pos, NegativeConfig(kinds=("topical", "adversarial"), ratio=1.0, seed=1), corpus=pool)
        print("negatives:", rep.counts, rep.methods, flush=True)
        exs = pos + [x.example for x in negs]
        kinds = ["answerable"] * len(pos) + [x.method for x in negs]
    else:
        exs = load_squad(squad2_dev_file())
        kinds = ["unanswerable" if e.is_impossible else "answerable" for e in exs]
    cols: dict[str, list] = {k: [] for k in ("cls", "span", "q", "sc", "id", "pred")}
    t0 = time.perf_counter()
    for k, e in enumerate(exs):
        ctx, wins = pipe.prepare(e.question, e.context)
        best = None
        for w in wins:
            h = eng.hidden_states(w.input_ids)
            s, en = eng.head.logits(h)
            # The best span as the pipeline finds it (core.decode), back in window-local token indices.
            top = window_spans(s, en, w, max_answer_len=max_answer_len, top_k=1)
            if top and (best is None or top[0][0] > best[0]):
                idx = np.concatenate([[0], np.arange(w.ctx_offset, w.ctx_offset + w.n_ctx)])
                ls, le = _log_softmax(s[idx].astype(np.float64)), _log_softmax(en[idx].astype(np.float64))
                best = (top[0][0], w, h, top[0][1] - w.tok_start, top[0][2] - w.tok_start, ls, le, s, en)
        score, w, h, si, ej, ls, le, s, en = best
        span_lp = float(np.log(score))
        a, qn = w.ctx_offset, w.ctx_offset - 2
        top2 = np.sort(ls[1:])[-2:] if len(ls) > 2 else np.array([ls[-1], ls[-1]])
        raw_span, raw_null = s[a + si] + en[a + ej], s[0] + en[0]
        cols["cls"].append(h[0])
        cols["span"].append(h[a + si : a + ej + 1].mean(0))
        cols["q"].append(h[1 : 1 + qn].mean(0))
        cols["sc"].append([ls[0] + le[0] - span_lp, span_lp, ls[0] + le[0], raw_null - raw_span, raw_span, raw_null,
                           -(np.exp(ls) * ls).sum(), -(np.exp(le) * le).sum(), top2[1] - top2[0], ej - si, len(wins),
                           qn, w.n_ctx])
        cols["id"].append(e.id)
        off = ctx.offsets
        cols["pred"].append(e.context[off[w.tok_start + si][0] : off[w.tok_start + ej][1]])
        if k % 5000 == 0:
            print(f"{k}/{len(exs)} {time.perf_counter() - t0:.0f} s", flush=True)
    np.savez(out, cls=np.array(cols["cls"], np.float32), span=np.array(cols["span"], np.float32),
             q=np.array(cols["q"], np.float32), sc=np.array(cols["sc"]), id=np.array(cols["id"]),
             pred=np.array(cols["pred"], dtype=object), kind=np.array(kinds))
    print(f"{len(exs)} questions in {time.perf_counter() - t0:.0f} s -> {out}")


def _matrix(d, sets: list[str]) -> np.ndarray:
    parts = {"prod": lambda: d["cls"] * d["span"], "qspan": lambda: d["q"] * d["span"], "null": lambda: d["sc"][:, :1]}
    return np.concatenate([parts[s]() if s in parts else d[s] for s in sets], 1).astype(np.float64)


def _logistic(x: np.ndarray, y: np.ndarray, lam: float, steps: int = 1500, lr: float = 0.05) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression, full-batch Adam (numpy only)."""
    w, b = np.zeros(x.shape[1]), 0.0
    mw, vw, mb, vb = np.zeros_like(w), np.zeros_like(w), 0.0, 0.0
    for t in range(1, steps + 1):
        g = 1 / (1 + np.exp(-(x @ w + b))) - y
        gw, gb = x.T @ g / len(g) + lam * w, g.mean()
        mw, vw = 0.9 * mw + 0.1 * gw, 0.999 * vw + 0.001 * gw * gw
        mb, vb = 0.9 * mb + 0.1 * gb, 0.999 * vb + 0.001 * gb * gb
        w -= lr * (mw / (1 - 0.9**t)) / (np.sqrt(vw / (1 - 0.999**t)) + 1e-8)
        b -= lr * (mb / (1 - 0.9**t)) / (np.sqrt(vb / (1 - 0.999**t)) + 1e-8)
    return w, b


def fit(train: str, dev: str, sets: list[str], lam: float) -> None:
    from qabridge.train import metrics
    from qabridge.train.squad import first_articles, load_squad, squad2_dev_file

    tr, dv = np.load(train, allow_pickle=True), np.load(dev, allow_pickle=True)
    xtr = _matrix(tr, sets)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    ytr = (tr["kind"] != "answerable").astype(np.float64)
    w, b = _logistic((xtr - mu) / sd, ytr, lam)
    ztr = ((xtr - mu) / sd) @ w + b
    by_kind = {str(k): round(float(((ztr[tr["kind"] == k] > 0) == (k != "answerable")).mean()), 3) for k in sorted(set(tr["kind"]))}
    zdv = ((_matrix(dv, sets) - mu) / sd) @ w + b
    exs = load_squad(squad2_dev_file())
    tune = first_articles(exs, 17)
    gold = {e.id: [] if e.is_impossible else [a.text for a in e.answers] for e in exs}
    in_tune = {e.id: e.title in tune for e in exs}
    ids, pred = list(dv["id"]), dict(zip(dv["id"], dv["pred"]))
    print(f"features {','.join(sets)}: train accuracy by kind {by_kind}")
    print("SQuAD 2.0 dev, threshold tuned on articles 1-17, articles 18-35:")
    for name, score in (("probe", zdv), ("reader's null score", dv["sc"][:, 0])):
        part = {True: {}, False: {}}
        for i, z in zip(ids, score):
            part[in_tune[i]][i] = float(z)
        th, f1_tune = metrics.tune_null_threshold(part[True], [(i, gold[i]) for i in part[True]], {i: pred[i] for i in part[True]})
        rep = part[False]
        ev = metrics.evaluate_v2({i: pred[i] for i in rep}, [(i, gold[i]) for i in rep], rep, na_prob_thresh=th)
        y = np.array([not gold[i] for i in rep])
        s = np.array(list(rep.values()))
        ranks = np.empty(len(s))
        ranks[np.argsort(s)] = np.arange(len(s))
        auc = (ranks[y].sum() - y.sum() * (y.sum() - 1) / 2) / (y.sum() * (~y).sum())
        print(f"  {name:<20} F1 {ev['f1']:.2f}  EM {ev['exact']:.2f}  HasAns F1 {ev['HasAns_f1']:.2f}  "
              f"NoAns {ev['NoAns_exact']:.2f}  AUC {auc:.4f}  (tuning F1 {f1_tune:.2f}, threshold {th:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features")
    f.add_argument("model")
    f.add_argument("which", choices=["train", "v2dev"])
    f.add_argument("out")
    f.add_argument("--n", type=int, default=15000, help="train: answerable questions (and as many negatives)")
    f.add_argument("--pool", choices=["train", "dev"], default="train",
                   help="train: the SQuAD v1.1 split the questions and negatives come from (dev: for a reader "
                        "that was itself trained with negatives from train, whose scores there are overconfident)")
    t = sub.add_parser("fit")
    t.add_argument("train")
    t.add_argument("dev")
    t.add_argument("--features", default="sc,cls,span,q,prod,qspan")
    t.add_argument("--l2", type=float, default=1e-3)
    a = ap.parse_args()
    if a.cmd == "features":
        features(a.model, a.which, a.out, a.n, pool_split=a.pool)
    else:
        fit(a.train, a.dev, a.features.split(","), a.l2)


if __name__ == "__main__":
    main()
