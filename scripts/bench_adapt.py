"""`qabridge adapt` on a domain the built-in models never saw, used as a user would (issue 34).

    .venv/bin/python scripts/bench_adapt.py [--articles 20] [--per-article 50] [--folds 5] [-- adapt options]

The domain: whole SQuAD v1.1 dev articles as single documents (every paragraph of an article
joined by a blank line, thousands of tokens each), ``--per-article`` of each article's questions
(seeded), ``--articles`` articles: ~1,000 questions over long documents. Neither built-in model
trained on SQuAD dev, and none trained on documents this long: every question has ~25 windows
and one holds its answer. Runs ``qabridge adapt --folds K`` under ``/usr/bin/time`` semantics
(wall time and peak RSS of the whole run), then scores the final adapter and the starting model on
the SQuAD v1.1 dev articles *not* in the domain set (the general skill it kept), and writes
benchmarks/results/adapt/<stamp>.json and its plot benchmarks/adapt.png (benchmarks/adapt.md
reads them). ``--data FILE`` takes your own SQuAD-format file instead (a seeded ``--questions``
sample of it); ``--plot RESULT.json`` redraws the plot of a committed result.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qabridge.train.adapt import write_squad  # noqa: E402
from qabridge.train.squad import Answer, Example, load_squad, squad_file  # noqa: E402

OUT = ROOT / "benchmarks"
SEP = "\n\n"


def long_documents(examples: list[Example], articles: list[str], per_article: int, seed: int) -> list[Example]:
    """One example per kept question, its context the whole article and its answers shifted there."""
    rng = np.random.default_rng(seed)
    out = []
    for title in articles:
        exs = [e for e in examples if e.title == title]
        paras = list(dict.fromkeys(e.context for e in exs))
        offset, pos = {}, 0
        for p in paras:
            offset[p] = pos
            pos += len(p) + len(SEP)
        doc = SEP.join(paras)
        pick = sorted(rng.permutation(len(exs))[:per_article])
        for i in pick:
            e = exs[i]
            o = offset[e.context]
            out.append(Example(e.id, title, doc, e.question, tuple(Answer(a.text, a.start + o) for a in e.answers)))
    return out


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_family() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu family"):
            return line.split(":", 1)[1].strip()
    return "?"


def plot(result: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(result.read_text())
    folds = res["adapt"]["folds"]
    cv = res["adapt"]["cross_validated"]
    labels = [f"fold {r['fold'] + 1}" for r in folds] + ["pooled"]
    start = [r["start"]["f1"] for r in folds] + [cv["start"]["f1"]]
    adapted = [r["adapted"]["f1"] for r in folds] + [cv["adapted"]["f1"]]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.bar(x - 0.2, start, 0.4, label=f"{res['adapt']['config']['source']} (start)", color="#9aa5b1")
    ax.bar(x + 0.2, adapted, 0.4, label="adapted", color="#2f6fdf")
    for i, (a, b) in enumerate(zip(start, adapted)):
        ax.text(i + 0.2, b + 0.5, f"+{b - a:.1f}", ha="center", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_ylabel("held-out F1")
    ax.set_ylim(0, max(adapted) * 1.2)
    ax.set_title(f"qabridge adapt: {res['domain']['questions']} questions, {res['domain']['documents']} documents, "
                 f"{len(folds)} folds by document\n{res['cpu']['model']} ({res['cpu']['cores']} cores), {res['when']}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--plot":
        plot(Path(sys.argv[2]), OUT / "adapt.png")
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None, help="a SQuAD-format file of your own domain instead of whole SQuAD dev articles")
    ap.add_argument("--questions", type=int, default=1000, help="with --data: a seeded sample of this many questions")
    ap.add_argument("--articles", type=int, default=20)
    ap.add_argument("--per-article", type=int, default=50)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--from", dest="source", default="bert-qa")
    ap.add_argument("--work", default=str(ROOT / ".cache" / "bench-adapt"))
    ap.add_argument("--general-limit", type=int, default=2000, help="SQuAD dev questions (other articles) for general skill")
    ap.add_argument("adapt_args", nargs="*", help="passed to qabridge adapt after --")
    a = ap.parse_args()
    dev_file = squad_file("dev")
    if dev_file is None:
        sys.exit("needs SQuAD v1.1 dev (QABRIDGE_SQUAD_DIR or ../shared/data/squad)")
    dev = load_squad(dev_file)
    if a.data:
        mine = load_squad(a.data)
        domain = [mine[i] for i in sorted(np.random.default_rng(0).permutation(len(mine))[: a.questions])]
        chosen = []
    else:
        titles = list(dict.fromkeys(e.title for e in dev))
        chosen = [titles[i] for i in sorted(np.random.default_rng(0).permutation(len(titles))[: a.articles])]
        domain = long_documents(dev, chosen, a.per_article, seed=0)
    work = Path(a.work)
    data = write_squad(domain, work / "domain.json")
    out = work / "adapter"
    cmd = [sys.executable, "-m", "qabridge.cli", "adapt", "--from", a.source, "--data", str(data), "--output", str(out),
           "--folds", str(a.folds), "--quiet", *a.adapt_args]
    print(" ".join(cmd), file=sys.stderr)
    t0 = time.time()
    r = subprocess.run(cmd)
    wall = time.time() - t0
    if r.returncode != 0:
        sys.exit(r.returncode)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    summary = json.loads((out / "adapt_summary.json").read_text())

    # General skill: SQuAD dev paragraphs of the articles the domain set does not hold.
    from qabridge.scoring import scoring_pipeline
    from qabridge.train.adapt import score

    rest = [e for e in dev if e.title not in set(chosen)][: a.general_limit]
    general = {name: score(scoring_pipeline(Path(p), "onnx", work / "general" / name), rest)
               for name, p in (("start", summary["source_adapter"]), ("adapted", str(out)))}
    tokens = [len(e.context.split()) for e in domain]
    res = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": {"model": cpu_name(), "family": cpu_family(), "cores": __import__("os").cpu_count()},
        "command": " ".join(["scripts/bench_adapt.py", *sys.argv[1:]]),
        "domain": {"data": a.data or f"whole SQuAD v1.1 dev articles: {chosen}", "questions": len(domain),
                   "documents": len({e.title or e.context for e in domain}), "words_per_document_median": int(np.median(tokens))},
        "adapt": {k: summary[k] for k in ("cross_validated", "folds", "final_train_seconds", "adapter_bytes", "config")},
        "adapt_wall_s": round(wall, 1), "adapt_peak_rss_mb": round(rss, 1),
        "general_squad_dev_other_articles": general,
    }
    stamp = time.strftime("%Y%m%dT%H%M", time.gmtime())
    (OUT / "results" / "adapt").mkdir(parents=True, exist_ok=True)
    (OUT / "results" / "adapt" / f"{stamp}.json").write_text(json.dumps(res, indent=1))
    plot(OUT / "results" / "adapt" / f"{stamp}.json", OUT / "adapt.png")
    print(json.dumps({k: res[k] for k in ("adapt_wall_s", "adapt_peak_rss_mb", "general_squad_dev_other_articles")}, indent=1))
    print(json.dumps(summary["cross_validated"], indent=1))


if __name__ == "__main__":
    main()
