"""``qabridge adapt``: a built-in model (or any adapter) adapted to a user's own labelled documents.

A warm start (the starting adapter's LoRA matrices and span head), a schedule sized for a few
hundred to a few thousand questions on a CPU, and, with ``folds`` >= 2, cross-validation by
document: each fold's documents are held out of its training run and both the starting model
and the adapted one are scored on them, so the report says what the adaptation bought on
documents it never saw. The final adapter is then trained on everything.

Every training run is an ordinary ``qabridge train`` run in ``<output>/cv/`` (resumable from its
checkpoint); each fold's scores are written as they are known, so a run cut off goes on where it
stopped when the same command is run again.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qabridge.errors import UsageError

from . import metrics
from .squad import Example, Examples, load_squad

SUMMARY = "adapt_summary.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "qabridge.json", "training_summary.json")


@dataclass
class AdaptConfig:
    source: str  # a built-in model's name or an adapter directory: where training starts
    data: str  # the user's SQuAD-format file
    output: str
    folds: int = 5  # 0 or 1: no cross-validation, the final adapter only
    # The recipe for small sets (measured in benchmarks/adapt.md): a warm start needs a lower peak
    # rate than training from scratch (5e-4) or it forgets what it knew in the first hundred steps.
    epochs: float = 2.0
    lr: float = 2e-4
    batch_size: int = 16
    # Long documents: per question, its answer window(s) plus this many of its other windows.
    null_windows: int = 2
    # SQuAD v1.1 train questions mixed into every training run (0: none), to keep general skill.
    replay: int = 0
    replay_data: str | None = None  # default: the SQuAD train file this machine has
    time_budget: float | None = None  # seconds of training in all (split evenly over the runs)
    seed: int = 42
    device: str = "cpu"
    strict: bool = False
    # What scores the folds: "onnx" (ONNX Runtime int8, what `serve` runs on a CPU; ~3x faster than
    # torch on a long document's windows, within 0.1 F1 of it on SQuAD) or "torch" (the adapter as
    # trained, fp32).
    score_engine: str = "onnx"

    def identity(self) -> dict:
        d = asdict(self)
        for k in ("output", "time_budget", "device"):
            d.pop(k)
        return d


def torch_scorer(device: str = "cpu") -> Callable[[Path, Path], object]:
    """Scores an adapter as trained (fp32 torch). The CLI passes ONNX int8 instead (what ``serve``
    runs); that path lives above the train stage, which must not import export or bridge."""
    from .evaluate import torch_pipeline

    return lambda adapter, work: torch_pipeline(adapter, device=device)


def source_adapter(source: str) -> Path:
    from qabridge.core.builtin import lookup_builtin

    builtin = lookup_builtin(source)
    if builtin is not None:
        return builtin.adapter()
    p = Path(source)
    if not (p / "adapter_config.json").exists():
        raise UsageError(f"--from {source}: not a built-in model (`qabridge models`) nor an adapter directory")
    return p


def document_key(e: Example) -> str:
    """What a fold holds out whole: the article (its title), else the context itself."""
    return e.title or e.context


def split_folds(examples: list[Example], k: int, seed: int) -> list[list[int]]:
    """Example indices per fold; each document in one fold, question counts balanced (largest
    document first into the lightest fold, ties in a seeded order)."""
    docs: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        docs.setdefault(document_key(e), []).append(i)
    if len(docs) < k:
        raise UsageError(f"--folds {k}: the data has {len(docs)} document(s); cross-validation by document needs at least {k}")
    order = np.random.default_rng(seed).permutation(len(docs))
    keys = [list(docs)[i] for i in order]
    keys.sort(key=lambda d: -len(docs[d]))  # stable: the seeded order breaks ties
    folds: list[list[int]] = [[] for _ in range(k)]
    for d in keys:
        min(folds, key=len).extend(docs[d])
    return [sorted(f) for f in folds]


def write_squad(examples: list[Example], path: Path) -> Path:
    """Examples back to a SQuAD v1.1/v2.0 file (re-anchored offsets as loaded), grouped by article and context."""
    arts: dict[str, dict[str, list]] = {}
    for e in examples:
        qa = {"id": e.id, "question": e.question, "answers": [{"text": a.text, "answer_start": a.start} for a in e.answers]}
        if e.is_impossible:
            qa["is_impossible"] = True
        arts.setdefault(e.title, {}).setdefault(e.context, []).append(qa)
    doc = {"version": "qabridge-adapt", "data": [
        {"title": t, "paragraphs": [{"context": c, "qas": qas} for c, qas in paras.items()]} for t, paras in arts.items()]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, ensure_ascii=False))
    return path


def score(pipe, examples: list[Example], *, progress: bool = False) -> dict:
    """EM, F1 and top-3 recall (a gold answer among the 3 best spans, exact after SQuAD's
    normalisation) of a pipeline on answerable examples."""
    from .evaluate import predict_examples

    t0 = time.time()
    preds = predict_examples(pipe, examples, progress=progress, top_k=3)
    gold = [(e.id, [a.text for a in e.answers]) for e in examples]
    res = metrics.evaluate({k: v["text"] for k, v in preds.items()}, gold)
    hit = sum(any(metrics.exact_match(t, g) for t in preds[i].get("top", [preds[i]["text"]]) for g in golds)
              for i, golds in gold)
    return {"exact_match": round(res["exact_match"], 2), "f1": round(res["f1"], 2),
            "top3_recall": round(100.0 * hit / max(1, len(gold)), 2), "count": len(gold),
            "seconds": round(time.time() - t0, 1)}


def _close(pipe) -> None:
    close = getattr(getattr(pipe, "encoder", None), "close", None)
    if close is not None:
        close()


def _mean(rows: list[dict], key: str) -> dict:
    """The folds' scores pooled by question count (each held-out question counts once)."""
    n = sum(r[key]["count"] for r in rows)
    return {m: round(sum(r[key][m] * r[key]["count"] for r in rows) / n, 2) for m in ("exact_match", "f1", "top3_recall")} | {"count": n}


def adapt(cfg: AdaptConfig, *, scorer: Callable[[Path, Path], object] | None = None, progress: bool = True,
          log: Callable[[str], None] = print) -> dict:
    """Run the adapt recipe. ``scorer(adapter_dir, work_dir)`` returns the pipeline that scores a
    fold (default: torch, fp32)."""
    from .squad import squad_file
    from .trainer import TrainConfig, train

    scorer = scorer or torch_scorer(cfg.device)
    t0 = time.time()
    out = Path(cfg.output)
    start = source_adapter(cfg.source)
    work = out / "cv"
    if out.exists() and any(p.name not in {*ADAPTER_FILES, SUMMARY, "cv"} for p in out.iterdir()):
        raise UsageError(f"{out}: exists and holds files that are not an adapt run's; choose another --output")
    stamp = work / "adapt_config.json"
    if stamp.exists() and json.loads(stamp.read_text()) != cfg.identity():
        raise UsageError(f"{out}: holds an adapt run with other settings or data; choose another --output or remove it")
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(cfg.identity(), indent=1))

    examples: Examples = load_squad(cfg.data, split="train", strict=cfg.strict)
    for note in examples.notes(cfg.data):
        log(note)
    examples_list = [e for e in examples if e.has_answer]
    if len(examples_list) < len(examples):
        log(f"{len(examples) - len(examples_list)} unanswerable question(s) train [CLS] but are not scored")
    replay: list[Example] = []
    if cfg.replay:
        src = cfg.replay_data or squad_file("train")
        if src is None:
            raise UsageError("--replay needs SQuAD v1.1 train (QABRIDGE_SQUAD_DIR or ../shared/data/squad) or --replay-data")
        pool = load_squad(src, split="train")
        idx = np.sort(np.random.default_rng(cfg.seed).permutation(len(pool))[: cfg.replay])
        replay = [pool[i] for i in idx]
        log(f"replay: {len(replay)} questions of {src} in every training run")

    folds = split_folds(list(examples), cfg.folds, cfg.seed) if cfg.folds >= 2 else []
    runs = len(folds) + 1
    budget = cfg.time_budget / runs if cfg.time_budget else None

    def run_training(name: str, train_examples: list[Example]) -> Path:
        data = write_squad(train_examples + replay, work / name / "train.json")
        tc = TrainConfig(data=str(data), output=str(work / name / "adapter"), init_adapter=str(start), epochs=cfg.epochs,
                         lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device, time_budget=budget,
                         null_windows_per_question=cfg.null_windows, strict=False, checkpoint_every=100)
        train(tc, progress=progress, log=log)
        return Path(tc.output)

    fold_rows = []
    start_pipe = None
    for k, held in enumerate(folds):
        done = work / f"fold-{k}" / "result.json"
        if done.exists():
            fold_rows.append(json.loads(done.read_text()))
            log(f"fold {k + 1}/{len(folds)}: done before ({fold_rows[-1]['adapted']['f1']:.2f} F1)")
            continue
        t_fold = time.time()
        held_set = set(held)
        test = [examples[i] for i in held if examples[i].has_answer]
        log(f"fold {k + 1}/{len(folds)}: training on {len(examples) - len(held)} questions, "
            f"holding out {len(test)} ({len({document_key(e) for e in test})} documents)")
        adapter = run_training(f"fold-{k}", [e for i, e in enumerate(examples) if i not in held_set])
        t_train = time.time() - t_fold
        start_pipe = start_pipe or scorer(start, work / "start")
        before = score(start_pipe, test, progress=progress)
        fold_pipe = scorer(adapter, work / f"fold-{k}")
        after = score(fold_pipe, test, progress=progress)
        _close(fold_pipe)  # each fold's scorer is used once; its session's memory is not
        row = {"fold": k, "documents": sorted({document_key(e)[:80] for e in test}), "train_questions": len(examples) - len(held),
               "start": before, "adapted": after, "train_seconds": round(t_train, 1), "seconds": round(time.time() - t_fold, 1)}
        done.write_text(json.dumps(row, indent=1))
        fold_rows.append(row)
        log(f"fold {k + 1}/{len(folds)}: F1 {before['f1']:.2f} -> {after['f1']:.2f}, EM {before['exact_match']:.2f} -> "
            f"{after['exact_match']:.2f}, top-3 {before['top3_recall']:.2f} -> {after['top3_recall']:.2f} ({row['seconds']:.0f} s)")

    if start_pipe is not None:
        _close(start_pipe)
    log(f"final adapter: training on all {len(examples)} questions")
    t_final = time.time()
    final = run_training("final", list(examples))
    out.mkdir(parents=True, exist_ok=True)
    for f in ADAPTER_FILES:
        if (final / f).exists():
            shutil.copy2(final / f, out / f)
    summary = {
        "source": cfg.source, "source_adapter": str(start), "data": cfg.data, "questions": len(examples),
        "documents": len({document_key(e) for e in examples}),
        "data_repairs": {"reanchored": examples.reanchored, "skipped": list(examples.skipped), "answers_dropped": list(examples.dropped)},
        "config": asdict(cfg),
        "folds": fold_rows,
        "cross_validated": {"start": _mean(fold_rows, "start"), "adapted": _mean(fold_rows, "adapted")} if fold_rows else None,
        "final_train_seconds": round(time.time() - t_final, 1),
        "adapter_bytes": (out / "adapter_model.safetensors").stat().st_size,
        "seconds": round(time.time() - t0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary


def read_summary(d: Path) -> dict | None:
    p = Path(d) / SUMMARY
    return json.loads(p.read_text()) if p.exists() else None
