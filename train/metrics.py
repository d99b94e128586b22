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
