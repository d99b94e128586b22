"""SQuAD evaluation through the bridge's pipeline, with either engine.

The torch engine and the GGUF engine differ only in who computes start/end
logits; windows, decoding and the metric are the same code.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from qabridge.core.decode import best_spans, null_log_ratio, null_score
from qabridge.core.pipeline import QAPipeline
from qabridge.core.settings import QASettings
from qabridge.core.tokenizer import WordPieceTokenizer
from qabridge.core.windows import Window
from qabridge.errors import QABridgeError, UsageError

from . import metrics
from .squad import Example


class TorchEncoder:
    """Start/end logits from a (merged) transformers QA model, segment ids all zero."""

    name = "torch"

    def __init__(self, model, device: str = "cpu", batch_size: int = 32):
        self.model = model
        self.device = device
        self.batch_size = batch_size

    def logits(self, windows: list[Window], deadline: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Batched start/end logits; ``deadline`` is accepted for the Encoder protocol (evaluation runs to the end)."""
        import torch

        out: list[tuple[np.ndarray, np.ndarray]] = [None] * len(windows)  # type: ignore[list-item]
        order = sorted(range(len(windows)), key=lambda i: len(windows[i].input_ids))
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            n = max(len(windows[i].input_ids) for i in idx)
            ids = np.zeros((len(idx), n), dtype=np.int64)
            mask = np.zeros((len(idx), n), dtype=np.int64)
            for r, i in enumerate(idx):
                L = len(windows[i].input_ids)
                ids[r, :L] = windows[i].input_ids
                mask[r, :L] = 1
            with torch.inference_mode():
                ids_t = torch.from_numpy(ids).to(self.device)
                res = self.model(
                    input_ids=ids_t,
                    attention_mask=torch.from_numpy(mask).to(self.device),
                    token_type_ids=torch.zeros_like(ids_t),
                )
            s = res.start_logits.float().cpu().numpy()
            e = res.end_logits.float().cpu().numpy()
            for r, i in enumerate(idx):
                L = len(windows[i].input_ids)
                out[i] = (s[r, :L].copy(), e[r, :L].copy())
        return out


def predict_examples(pipe: QAPipeline, examples: list[Example], *, chunk: int = 64, progress: bool = False,
                     top_k: int = 1) -> dict[str, dict]:
    """id -> {text, start, end, score, null, na} for each example (errors become empty predictions);
    with ``top_k`` > 1 also ``top``, the texts of the best ``top_k`` spans.

    ``null`` is the no-answer probability (decode.null_score) and ``na = log(null) - log(score)``:
    abstaining iff ``na > threshold`` with threshold 0 is the transformers pipeline's rule for
    ``handle_impossible_answer`` (the empty answer wins when it is likelier than the best span).
    """
    from tqdm.auto import tqdm

    preds: dict[str, dict] = {}
    bar = tqdm(total=len(examples), disable=not progress, unit="q", file=sys.stderr, dynamic_ncols=True)
    for b in range(0, len(examples), chunk):
        part = examples[b : b + chunk]
        prepared, flat = [], []
        for e in part:
            try:
                ctx, wins = pipe.prepare(e.question, e.context)
            except QABridgeError:
                prepared.append(None)
                continue
            prepared.append((ctx, len(flat), len(wins)))
            flat.extend(wins)
        logits = pipe.encoder.logits(flat) if flat else []
        for e, p in zip(part, prepared):
            if p is None:
                preds[e.id] = {"text": "", "start": 0, "end": 0, "score": 0.0, "null": 1.0, "na": math.inf}
                continue
            ctx, off, n = p
            lg, ws = logits[off : off + n], flat[off : off + n]
            spans = best_spans(lg, ws, ctx, max_answer_len=pipe.max_answer_len, top_k=top_k)
            nul = null_score(lg, ws)
            if spans:
                s = spans[0]
                na = null_log_ratio(nul, s.score)
                preds[e.id] = {"text": e.context[s.start : s.end], "start": s.start, "end": s.end, "score": s.score,
                               "null": nul, "na": na}
                if top_k > 1:
                    preds[e.id]["top"] = [e.context[t.start : t.end] for t in spans]
            else:
                preds[e.id] = {"text": "", "start": 0, "end": 0, "score": 0.0, "null": nul, "na": math.inf}
        bar.update(len(part))
    bar.close()
    return preds


def evaluate_pipeline(pipe: QAPipeline, examples: list[Example], *, limit: int | None = None, progress: bool = False,
                      threshold: float | None = None) -> dict:
    """SQuAD v1.1 EM/F1. ``threshold``: abstain (answer "") iff na > threshold, to measure what
    abstention at a model's stored threshold costs on questions that all have answers."""
    if limit:
        examples = examples[:limit]
    t0 = time.time()
    preds = predict_examples(pipe, examples, progress=progress)
    seconds = time.time() - t0
    gold = [(e.id, [a.text for a in e.answers]) for e in examples]
    without = None
    if threshold is not None:
        without = metrics.evaluate({k: v["text"] for k, v in preds.items()}, gold)
        preds = {k: (dict(v, text="") if v["na"] > threshold else v) for k, v in preds.items()}
    res = metrics.evaluate({k: v["text"] for k, v in preds.items()}, gold)
    res["seconds"] = round(seconds, 2)
    if without is not None:
        res["threshold"] = threshold
        res["abstained"] = sum(1 for v in preds.values() if v["na"] > threshold)
        res["without_abstention"] = {"exact_match": without["exact_match"], "f1": without["f1"]}
    res["predictions"] = preds
    return res


def evaluate_v2_pipeline(pipe: QAPipeline, examples: list[Example], *, threshold: float | None = None,
                         tune_on: list[Example] | None = None, progress: bool = False) -> dict:
    """The official SQuAD 2.0 numbers. ``threshold``: abstain iff na > threshold (None: never
    abstain, the API's default). ``tune_on``: held-out examples to tune the threshold on first
    (issue 13: articles 1-17 of dev v2), then report on ``examples`` at that threshold."""
    t0 = time.time()
    res: dict = {}
    if tune_on:
        tp = predict_examples(pipe, tune_on, progress=progress)
        t, f = metrics.tune_null_threshold({k: v["na"] for k, v in tp.items()},
                                           ((e.id, [a.text for a in e.answers]) for e in tune_on),
                                           {k: v["text"] for k, v in tp.items()})
        res["tuned"] = {"threshold": t, "f1": round(f, 2), "count": len(tune_on)}
        threshold = t
    preds = predict_examples(pipe, examples, progress=progress)
    gold = [(e.id, [a.text for a in e.answers]) for e in examples]
    # na is a log-ratio, not a probability: "no threshold" is +inf, not 1.0.
    res.update(metrics.evaluate_v2({k: v["text"] for k, v in preds.items()}, gold, {k: v["na"] for k, v in preds.items()},
                                   na_prob_thresh=math.inf if threshold is None else threshold))
    res["threshold"] = threshold
    res["abstained"] = sum(1 for v in preds.values() if threshold is not None and v["na"] > threshold)
    res["seconds"] = round(time.time() - t0, 2)
    res["predictions"] = {k: ("" if threshold is not None and v["na"] > threshold else v["text"]) for k, v in preds.items()}
    res["null_scores"] = {k: v["na"] for k, v in preds.items()}
    return res


def torch_pipeline(adapter: str | Path, *, device: str = "cpu", base: str | None = None) -> QAPipeline:
    from .model import adapter_tokenizer_dir, load_for_inference

    model, ref, qcfg = load_for_inference(adapter, device=device, base=base)
    tok = WordPieceTokenizer.from_hf_dir(adapter_tokenizer_dir(adapter, ref))
    s = QASettings.from_mapping(qcfg)
    return QAPipeline(tok, TorchEncoder(model, device), s.window_spec(), max_answer_len=s.max_answer_len)


def evaluate_adapter(adapter, examples, *, limit=None, device="cpu", progress=False) -> dict:
    return evaluate_pipeline(torch_pipeline(adapter, device=device), examples, limit=limit, progress=progress)


def store_threshold(adapter_dir: str | Path, res: dict, *, tune_articles: int) -> Path:
    """Write a tuned null threshold (``qabridge eval --tune-articles``) into the adapter's qabridge.json,
    with how it was tuned and what it scored on the held-out articles: the export copies both into
    the model file (``qabridge.null_threshold``, ``qabridge.null_threshold_tuning``)."""
    import json

    from .model import QA_CONFIG

    path = Path(adapter_dir) / QA_CONFIG
    if not path.exists():
        raise UsageError(f"--save-threshold {adapter_dir}: no {QA_CONFIG} (not an adapter from `qabridge train`)")
    tuned = res["tuned"]
    d = json.loads(path.read_text())
    d["null_threshold"] = float(tuned["threshold"])
    d["null_threshold_tuning"] = (
        f"tuned on articles 1-{tune_articles} of {Path(str(res['data'])).name} ({tuned['count']} questions, "
        f"F1 {tuned['f1']:.2f}) through {res['engine']} ({Path(str(res['model'])).name}); held-out articles: "
        f"F1 {res['f1']:.2f}, HasAns F1 {res.get('HasAns_f1', float('nan')):.2f}, "
        f"NoAns {res.get('NoAns_exact', float('nan')):.2f} ({res['count']} questions)"
    )
    path.write_text(json.dumps(d, indent=2) + "\n")
    return path
