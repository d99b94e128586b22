"""The official SQuAD v1.1 metric: exact match and token F1, max over the gold answers."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop articles a/an/the, collapse white space."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1(prediction: str, truth: str) -> float:
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(truth).split()
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(gold)
    return 2 * precision * recall / (precision + recall)


def score(prediction: str, truths: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of one prediction, each the max over the gold answers."""
    if not truths:
        return 0.0, 0.0
    return max(exact_match(prediction, t) for t in truths), max(f1(prediction, t) for t in truths)


def evaluate(predictions: Mapping[str, str], gold: Iterable[tuple[str, Sequence[str]]]) -> dict:
    """EM and F1 in percent over ``gold`` (id, answers); a missing prediction scores 0."""
    n = em_sum = f1_sum = 0.0
    for qid, truths in gold:
        em, f = score(predictions.get(qid, ""), truths)
        em_sum += em
        f1_sum += f
        n += 1
    if n == 0:
        return {"exact_match": 0.0, "f1": 0.0, "count": 0}
    return {"exact_match": 100.0 * em_sum / n, "f1": 100.0 * f1_sum / n, "count": int(n)}


# --- SQuAD 2.0 ---------------------------------------------------------------------------------
# Follows the official evaluate-v2.0.py: an unanswerable question has the single gold answer "",
# so only an empty prediction scores on it; EM/F1 of an empty prediction or gold is 1 only if
# both are empty. The "best_*" numbers sweep the per-question no-answer probabilities the way
# the official script does (including how it treats ties), so they can be compared with
# published results.


def f1_v2(prediction: str, truth: str) -> float:
    """Token F1 as SQuAD 2.0 scores it: two empty strings agree (1.0), one empty string scores 0."""
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    return f1(prediction, truth)


def gold_v2(answers: Sequence[str]) -> list[str]:
    """The gold strings the official script compares against: answers that normalise to nothing
    are dropped, and an unanswerable question has the single gold answer ""."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def raw_scores_v2(
    predictions: Mapping[str, str], gold: Iterable[tuple[str, Sequence[str]]]
) -> tuple[dict[str, float], dict[str, float], dict[str, bool]]:
    """Per-question EM and F1 (0/1 and 0..1) before any threshold, and which questions have answers.

    A question missing from ``predictions`` scores 0 (the official script would stop with a
    KeyError on an answerable one; counting it as wrong keeps totals over the whole data set).
    """
    exact: dict[str, float] = {}
    f1s: dict[str, float] = {}
    has_ans: dict[str, bool] = {}
    for qid, answers in gold:
        has_ans[qid] = bool(answers)
        if qid not in predictions:
            exact[qid] = f1s[qid] = 0.0
            continue
        truths = gold_v2(answers)
        pred = predictions[qid]
        exact[qid] = max(float(normalize_answer(t) == normalize_answer(pred)) for t in truths)
        f1s[qid] = max(f1_v2(pred, t) for t in truths)
    return exact, f1s, has_ans


def apply_no_answer_threshold(
    scores: Mapping[str, float], na_probs: Mapping[str, float], has_ans: Mapping[str, bool], threshold: float
) -> dict[str, float]:
    """Scores after abstaining wherever the no-answer probability is above ``threshold``
    (abstaining is right exactly on the unanswerable questions)."""
    return {
        qid: (float(not has_ans[qid]) if na_probs.get(qid, 0.0) > threshold else s)
        for qid, s in scores.items()
    }


def _mean(scores: Mapping[str, float], qids: Sequence[str]) -> float:
    return 100.0 * sum(scores[q] for q in qids) / len(qids) if qids else 0.0


def find_best_threshold(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    has_ans: Mapping[str, bool],
) -> tuple[float, float]:
    """(best score in percent, its threshold), exactly as the official ``find_best_thresh``.

    Start from abstaining everywhere (every unanswerable question right), then answer the
    questions one by one in order of rising no-answer probability: an answerable one adds its
    raw score, an unanswerable one costs 1 if the prediction is non-empty. The threshold is the
    probability of the last question answered at the best point (0.0 if abstaining on all is
    best). Ties are walked one question at a time, as in the official script.
    """
    cur = best = float(sum(1 for q in has_ans if not has_ans[q]))
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1.0 if predictions.get(qid, "") else 0.0
        cur += diff
        if cur > best:
            best = cur
            best_thresh = na_probs[qid]
    return 100.0 * best / max(1, len(scores)), best_thresh


def evaluate_v2(
    predictions: Mapping[str, str],
    gold: Iterable[tuple[str, Sequence[str]]],
    na_probs: Mapping[str, float] | None = None,
    *,
    na_prob_thresh: float = 1.0,
) -> dict:
    """The official SQuAD 2.0 numbers (percent), under the official key names.

    ``predictions`` maps id -> answer text, "" meaning "no answer". ``gold`` yields (id, answer
    texts), an empty list for an unanswerable question. With ``na_probs`` (id -> no-answer
    probability) a question is also abstained on where its probability exceeds
    ``na_prob_thresh`` (default 1.0 = never, as the official script), and ``best_exact``,
    ``best_exact_thresh``, ``best_f1``, ``best_f1_thresh`` are added. ``exact_match`` and
    ``count`` repeat ``exact`` and ``total`` under the names the v1.1 ``evaluate`` uses.
    """
    gold = list(gold)
    exact_raw, f1_raw, has_ans = raw_scores_v2(predictions, gold)
    probs = dict(na_probs) if na_probs is not None else {q: 0.0 for q in predictions}
    exact_t = apply_no_answer_threshold(exact_raw, probs, has_ans, na_prob_thresh)
    f1_t = apply_no_answer_threshold(f1_raw, probs, has_ans, na_prob_thresh)
    qids = list(exact_t)
    out: dict = {"exact": _mean(exact_t, qids), "f1": _mean(f1_t, qids), "total": len(qids)}
    for name, flag in (("HasAns", True), ("NoAns", False)):
        part = [q for q in qids if has_ans[q] == flag]
        if part:  # the official script leaves a group out when the data has none of it
            out[f"{name}_exact"] = _mean(exact_t, part)
            out[f"{name}_f1"] = _mean(f1_t, part)
            out[f"{name}_total"] = len(part)
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = find_best_threshold(predictions, exact_raw, probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = find_best_threshold(predictions, f1_raw, probs, has_ans)
    out["exact_match"], out["count"] = out["exact"], out["total"]
    return out


def tune_null_threshold(
    null_score_diffs: Mapping[str, float],
    gold: Iterable[tuple[str, Sequence[str]]],
    predictions: Mapping[str, str],
) -> tuple[float, float]:
    """(threshold, F1 in percent) maximising SQuAD 2.0 F1 under "abstain iff diff > threshold".

    ``null_score_diffs``: id -> null score minus the best span's score (higher = more sure there
    is no answer); ``predictions``: id -> best non-null span text. Unlike the official
    ``best_f1_thresh`` (the value of the last question answered, whatever its ties), the
    threshold returned here lies midway between two distinct observed diffs, so applying it
    reproduces the F1 returned and it does not sit on a training question's exact value. When
    abstaining everywhere is best, it is 1 below the smallest diff; when answering everywhere
    is, 1 above the largest. Questions without a diff are left out. ``evaluate_v2(...,
    na_prob_thresh=threshold)`` with the diffs as ``na_probs`` gives back the same F1.
    """
    _, f1_raw, has_ans = raw_scores_v2(predictions, gold)
    qids = [q for q in f1_raw if q in null_score_diffs]
    if not qids:
        raise ValueError("no question has both a gold entry and a null score diff")
    qids.sort(key=lambda q: null_score_diffs[q])
    # gain[q]: what answering q (rather than abstaining) changes in the total.
    cur = float(sum(1 for q in qids if not has_ans[q]))
    best, best_thresh = cur, null_score_diffs[qids[0]] - 1.0
    for i, q in enumerate(qids):
        # An unanswerable question answered costs its point unless the span normalises to nothing
        # ('the'); the official sweep tests the raw string instead, which can report an F1 that
        # applying its threshold does not give.
        cur += f1_raw[q] if has_ans[q] else (-1.0 if normalize_answer(predictions.get(q, "")) else 0.0)
        here = null_score_diffs[q]
        nxt = null_score_diffs[qids[i + 1]] if i + 1 < len(qids) else None
        if nxt is not None and nxt == here:
            continue  # a threshold cannot separate equal diffs: decide after the last of them
        if cur > best:
            best = cur
            best_thresh = (here + nxt) / 2.0 if nxt is not None else here + 1.0
    return best_thresh, 100.0 * best / len(qids)
