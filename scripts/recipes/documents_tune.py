"""Tune `documents`' passage weight: how a span's rank mixes the reader's margin and the retriever.

    .venv/bin/python scripts/recipes/documents_tune.py MODEL.onnx|MODEL.gguf [--articles 11] [--max-words 120]

For each of the first ``--articles`` SQuAD v1.1 dev articles: its first 30 paragraphs as documents,
its first 20 questions; every passage (split as the bridge splits them) is read, and each passage's
best span is kept with its start+end logit, the [CLS] logit and the passage's cosine similarity to
the question (the default embedder: the offline base, mean-pooled). Then the rules are compared
offline: rank = margin over [CLS] + w x similarity, for several w, reading all passages or the top
k by similarity. Article 1 is the report set (issue 13: >= 16/20); the others, 200 questions, are
what a weight is chosen on. Prints one line per rule.

    ... --unanswerable --save-threshold ADAPTER_DIR

stores the model's own `documents` abstention cut in the adapter's qabridge.json (the next export
puts it in the model file as qabridge.documents_null_threshold): the rank cut, at --weight and the
top 5 passages, that keeps the most answers plus off-topic abstentions on the tuning set (ties: the
lower cut, which keeps more answers), as the threshold the bridge compares with.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def collect(model: Path, n_articles: int, max_words: int, unanswerable: bool = False) -> list[dict]:
    from qabridge.bridge.engine_select import file_pipeline
    from qabridge.bridge.llama_engine import LlamaCppEngine
    from qabridge.bridge.retrieval import LocalEmbedder, split_passages
    from qabridge.core.decode import window_spans
    from qabridge.core.model_file import ModelFile
    from qabridge.export.run import default_embedder
    from qabridge.train import metrics
    from qabridge.train.squad import load_squad, squad_file
    from tests.helpers import first_paragraphs

    pipe = file_pipeline(model)

    mf = ModelFile(default_embedder(), require_qa=False)
    emb = LocalEmbedder(LlamaCppEngine(mf), mf.tokenizer, "minilm-embed")
    dev = load_squad(squad_file("dev"))
    all_titles = list(dict.fromkeys(e.title for e in dev))
    titles = all_titles[:n_articles]
    out = []
    for i, title in enumerate(titles):
        paras, qs = first_paragraphs([e for e in dev if e.title == title])
        asked = [(e, True) for e in qs]
        if unanswerable:  # 20 questions of an article n_articles further on: none of these paragraphs answers them
            other = all_titles[i + n_articles]
            asked += [(e, False) for e in first_paragraphs([e for e in dev if e.title == other])[1]]
        passages = split_passages(paras, max_words=max_words)
        texts = [paras[p.document][p.start : p.end] for p in passages]
        vecs = emb.embed(texts)
        for e, answerable in asked:
            sims = vecs @ emb.embed([e.question])[0]
            rows = []
            for text, sim in zip(texts, sims):
                ctx, wins = pipe.prepare(e.question, text)
                best = None
                for (sl, el), w in zip(pipe.encoder.logits(wins), wins):
                    for prob, a, b in window_spans(sl, el, w, max_answer_len=pipe.max_answer_len, top_k=1):
                        logit = float(sl[w.ctx_offset + a - w.tok_start] + el[w.ctx_offset + b - w.tok_start])
                        if best is None or prob > best["prob"]:
                            answer = text[int(ctx.offsets[a, 0]) : int(ctx.offsets[b, 1])]
                            best = {"prob": prob, "margin": logit - float(sl[0] + el[0]), "sim": float(sim),
                                    "f1": metrics.score(answer, [x.text for x in e.answers])[1]}
                if best:
                    rows.append(best)
            out.append({"article": title, "answerable": answerable, "rows": rows})
        print(f"{title}: {len(passages)} passages, {len(qs)} questions", flush=True)
    pipe.encoder.close()
    return out


def chosen(it: dict, weight: float, top: int | None) -> dict:
    rows = sorted(it["rows"], key=lambda r: -r["sim"])[:top] if top else it["rows"]
    return max(rows, key=lambda r: r["margin"] + weight * r["sim"])


def split_report(data: list[dict]) -> tuple[list[dict], list[dict]]:
    """(report set, tuning set): the first article collected is the report set (issue 13's)."""
    first = data[0]["article"]
    return [d for d in data if d["article"] == first], [d for d in data if d["article"] != first]


def answered(items: list[dict], weight: float, top: int | None) -> int:
    return sum(chosen(it, weight, top)["f1"] > 0.5 for it in items if it.get("answerable", True))


def abstention(items: list[dict], weight: float, top: int | None, rule: str, cut: float) -> tuple[int, int, int]:
    """(answerable answered and not abstained, answerable, unanswerable abstained): ``rule`` "margin"
    abstains when the chosen span's margin over [CLS] is below ``cut`` (-null_threshold, today's
    rule); "rank" when its whole rank (margin + weight x similarity) is."""
    ok = n = nulls = 0
    for it in items:
        c = chosen(it, weight, top)
        score = c["margin"] if rule == "margin" else c["margin"] + weight * c["sim"]
        abstain = score < cut
        if it.get("answerable", True):
            n += 1
            ok += (not abstain) and c["f1"] > 0.5
        else:
            nulls += abstain
    return ok, n, nulls


def single_text(items: list[dict], threshold: float) -> tuple[int, int, int, int]:
    """The single-text rule on one passage per question: (answerable questions whose best passage
    (highest F1, at least 0.5) is kept, such questions, off-topic questions refused over their most
    similar passage, off-topic questions). A text is refused iff -margin > threshold, as for `context`."""
    ok = n = nulls = m = 0
    for it in items:
        if it.get("answerable", True):
            best = max(it["rows"], key=lambda r: r["f1"])
            if best["f1"] >= 0.5:
                n += 1
                ok += -best["margin"] <= threshold
        else:
            m += 1
            nulls += -max(it["rows"], key=lambda r: r["sim"])["margin"] > threshold
    return ok, n, nulls, m


def best_cut(items: list[dict], weight: float, top: int | None = 5) -> tuple[float, tuple[int, int, int]]:
    """The rank cut (on a 0.5 grid) with the most answerable kept + unanswerable abstained; ties: lower."""
    best: tuple[float, tuple[int, int, int]] | None = None
    for cut in (x / 2 for x in range(-80, 121)):
        r = abstention(items, weight, top, "rank", cut)
        if best is None or r[0] + r[2] > best[1][0] + best[1][2]:
            best = (cut, r)
    return best


def save_threshold(adapter: Path, model: Path, weight: float, report: list[dict], tune: list[dict]) -> float:
    """Store the tuned cut as the threshold `documents` requests use: the bridge abstains iff
    weight x NULL_SIMILARITY - best rank > threshold, i.e. best rank < weight x NULL_SIMILARITY - threshold."""
    from qabridge.bridge.service import NULL_SIMILARITY

    path = adapter / "qabridge.json"
    if not path.exists():
        sys.exit(f"--save-threshold {adapter}: no qabridge.json (not an adapter from `qabridge train`)")
    cut, (ok, n, nulls) = best_cut(tune, weight)
    r_ok, r_n, r_nulls = abstention(report, weight, 5, "rank", cut)
    threshold = weight * NULL_SIMILARITY - cut
    d = json.loads(path.read_text())
    d["documents_null_threshold"] = threshold
    d["documents_passage_weight"] = weight  # the bridge uses the cut only when it ranks at this weight
    d["documents_null_threshold_tuning"] = (
        f"tuned by scripts/recipes/documents_tune.py on {len(tune)} questions of issue 13's sets through {model.name} "
        f"(top 5 passages, passage weight {weight:g}: rank < {cut:g}): kept {ok}/{n}, off-topic abstained "
        f"{nulls}/{len(tune) - n}; report set {report[0]['article']}: kept {r_ok}/{r_n}, abstained {r_nulls}/{len(report) - r_n}"
    )
    path.write_text(json.dumps(d, indent=2) + "\n")
    print(f"stored documents_null_threshold {threshold:g} in {path}: {d['documents_null_threshold_tuning']}")
    return threshold


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--articles", type=int, default=11)
    ap.add_argument("--max-words", type=int, default=120)
    ap.add_argument("--unanswerable", action="store_true",
                    help="also ask each article's paragraphs 20 questions of an article --articles further on, "
                         "and compare abstention rules")
    ap.add_argument("--weight", type=float, default=20.0, help="the passage weight the abstention rules use")
    ap.add_argument("--rows", type=Path, default=None, help="JSON file of the collected rows: read if it exists, else written")
    ap.add_argument("--save-threshold", type=Path, default=None, metavar="ADAPTER_DIR",
                    help="with --unanswerable: store the tuned documents cut in this adapter's qabridge.json")
    args = ap.parse_args()
    if args.save_threshold is not None and not args.unanswerable:
        sys.exit("--save-threshold needs --unanswerable (the off-topic questions the cut is tuned on)")
    if args.rows is not None and args.rows.exists():
        data = json.loads(args.rows.read_text())
    else:
        data = collect(args.model, args.articles, args.max_words, args.unanswerable)
        if args.rows is not None:
            args.rows.write_text(json.dumps(data))
    report, tune = split_report(data)
    print(f"report set {report[0]['article']}: {len(report)} questions; tuning set: {len(tune)} questions of {args.articles - 1} articles")
    report_a = [d for d in report if d.get("answerable", True)]
    tune_a = [d for d in tune if d.get("answerable", True)]
    for top in (3, 5, None):
        cells = [f"w={w:g}: {answered(tune, w, top)}/{len(tune_a)} | {answered(report, w, top)}/{len(report_a)}"
                 for w in (0, 5, 10, 15, 20, 25, 30, 40)]
        print(f"read {'all' if top is None else f'top {top}'}: " + "; ".join(cells))
    if args.unanswerable:
        print(f"abstention, read top 5, w={args.weight:g}: answerable answered and kept | unanswerable abstained "
              "(tuning set; report set)")
        for rule in ("margin", "rank"):
            for cut in range(0, 42, 2):
                t, r = (abstention(x, args.weight, 5, rule, cut) for x in (tune, report))
                print(f"  {rule} < {cut}: {t[0]}/{t[1]} | {t[2]}/{len(tune) - t[1]};  {r[0]}/{r[1]} | {r[2]}/{len(report) - r[1]}")
        print("single text (`context`): the passage with the answer kept | an off-topic question's most similar "
              "passage refused, by threshold (tuning set; report set)")
        for threshold in (-10, -5, -2, 0, 2, 5, 10):
            t, r = single_text(tune, threshold), single_text(report, threshold)
            print(f"  threshold {threshold:g}: {t[0]}/{t[1]} | {t[2]}/{t[3]};  {r[0]}/{r[1]} | {r[2]}/{r[3]}")
    if args.save_threshold is not None:
        save_threshold(args.save_threshold, args.model, args.weight, report, tune)


if __name__ == "__main__":
    main()
