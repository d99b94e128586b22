"""`qabridge eval --report`: where the model fails, by question type and by context length."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from . import metrics
from .squad import Example

QUESTION_TYPES = ("what", "which", "who", "whom", "whose", "when", "where", "why", "how many", "how much", "how")
LENGTH_BUCKETS = ((0, 100), (100, 150), (150, 200), (200, 300), (300, 10**9))


def question_type(q: str) -> str:
    words = q.lower().replace("?", " ").split()
    text = " ".join(words)
    for t in QUESTION_TYPES:
        if t.count(" "):
            if t in text:
                return t
        elif t in words:
            return t
    return "other"


def _label(lo: int, hi: int) -> str:
    return f"{lo}-{hi - 1} words" if hi < 10**9 else f"{lo}+ words"


def length_bucket(context: str) -> str:
    n = len(context.split())
    return next(_label(lo, hi) for lo, hi in LENGTH_BUCKETS if lo <= n < hi)


def breakdown(examples: list[Example], predictions: dict[str, str], key) -> list[tuple[str, int, float, float]]:
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for e in examples:
        groups[key(e)].append(metrics.score(predictions.get(e.id, ""), [a.text for a in e.answers]))
    rows = []
    for g, scores in groups.items():
        n = len(scores)
        rows.append((g, n, 100 * sum(s[0] for s in scores) / n, 100 * sum(s[1] for s in scores) / n))
    return rows


def write_report(path: str | Path, examples: list[Example], predictions: dict[str, str], summary: dict) -> list[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    by_type = sorted(breakdown(examples, predictions, lambda e: question_type(e.question)), key=lambda r: -r[1])
    order = {_label(lo, hi): i for i, (lo, hi) in enumerate(LENGTH_BUCKETS)}
    by_len = sorted(breakdown(examples, predictions, lambda e: length_bucket(e.context)), key=lambda r: order[r[0]])
    png = path.with_suffix(".png")
    lines = [
        f"# Evaluation report: {summary.get('model')}",
        "",
        f"Engine {summary.get('engine')}, data {summary.get('data')}: EM {summary['exact_match']:.2f}, "
        f"F1 {summary['f1']:.2f} over {summary['count']} questions in {summary['seconds']:.1f} s.",
        "",
        "## By question type",
        "",
        "| type | questions | EM | F1 |",
        "|---|---|---|---|",
        *[f"| {g} | {n} | {em:.2f} | {f1:.2f} |" for g, n, em, f1 in by_type],
        "",
        "## By context length",
        "",
        "| context | questions | EM | F1 |",
        "|---|---|---|---|",
        *[f"| {g} | {n} | {em:.2f} | {f1:.2f} |" for g, n, em, f1 in by_len],
        "",
        f"![F1 by question type and context length]({png.name})",
        "",
    ]
    path.write_text("\n".join(lines))
    written = [path]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        axes[0].bar([r[0] for r in by_type], [r[3] for r in by_type], color="#2a7")
        axes[0].set_title("F1 by question type")
        axes[1].bar([r[0] for r in by_len], [r[3] for r in by_len], color="#27a")
        axes[1].set_title("F1 by context length")
        for ax in axes:
            ax.set_ylim(0, 100)
            ax.tick_params(axis="x", labelsize=8, rotation=30)
        fig.tight_layout()
        fig.savefig(png, dpi=100)
        plt.close(fig)
        written.append(png)
    except ImportError:
        pass
    return written
