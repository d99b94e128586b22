"""The span head's decoding in numpy: best answer spans across windows.

Scores follow the transformers QA pipeline: per window, start and end logits are
soft-maxed over the context tokens *and* [CLS], and a span's score is
p_start * p_end. Keeping [CLS] in the denominator lets a window that does not hold
the answer say so (its mass goes to [CLS]), which makes scores comparable across
windows and across requests. [CLS] itself is never returned as an answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .settings import MAX_ANSWER_LEN
from .tokenizer import Encoded
from .windows import Window

T = TypeVar("T")


@dataclass(frozen=True)
class Span:
    score: float
    start: int  # character offsets into the context
    end: int
    window: int


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    np.exp(x, out=x)
    x /= x.sum()
    return x


def window_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    w: Window,
    *,
    max_answer_len: int,
    top_k: int,
) -> list[tuple[float, int, int]]:
    """Top spans of one window as (score, first ctx token, last ctx token), tokens index the context."""
    n = w.n_ctx
    if n == 0:
        return []
    sl = np.asarray(start_logits, dtype=np.float64)
    el = np.asarray(end_logits, dtype=np.float64)
    idx = np.concatenate([[0], np.arange(w.ctx_offset, w.ctx_offset + n)])
    ps = _softmax(sl[idx].copy())[1:]
    pe = _softmax(el[idx].copy())[1:]
    scores = np.outer(ps, pe)
    # Valid spans: end >= start and length <= max_answer_len.
    i = np.arange(n)
    length = i[None, :] - i[:, None]
    scores[(length < 0) | (length >= max_answer_len)] = 0.0
    flat = scores.ravel()
    k = min(top_k, flat.size)
    top = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
    top = top[np.argsort(-flat[top], kind="stable")]
    out = []
    for f in top:
        s = float(flat[f])
        if s <= 0.0:
            break
        a, b = divmod(int(f), n)
        out.append((s, a + w.tok_start, b + w.tok_start))
    return out


def null_score(logits: list[tuple[np.ndarray, np.ndarray]], windows: list[Window]) -> float:
    """Smallest p_start([CLS]) * p_end([CLS]) over the windows (softmax over [CLS] and the context)."""
    best = 1.0
    for (sl, el), w in zip(logits, windows):
        idx = np.concatenate([[0], np.arange(w.ctx_offset, w.ctx_offset + w.n_ctx)])
        ps = _softmax(np.asarray(sl, dtype=np.float64)[idx].copy())[0]
        pe = _softmax(np.asarray(el, dtype=np.float64)[idx].copy())[0]
        best = min(best, float(ps * pe))
    return best


def null_log_ratio(null: float, score: float) -> float:
    """log p(no answer) - log p(span). Abstaining iff this exceeds a threshold is the one rule for
    ``handle_impossible_answer`` everywhere (API, HTTP, eval); threshold 0 is the transformers
    pipeline's: the empty answer wins when it is likelier than the span."""
    return math.log(max(null, 1e-300)) - math.log(max(score, 1e-300))


def null_rank(ratios: list[float], threshold: float) -> int:
    """Where the null answer goes among spans ranked best first, given each span's null_log_ratio:
    before the first span it beats (0: it is the answer)."""
    return next((i for i, r in enumerate(ratios) if r > threshold), len(ratios))


def distinct_top(items: Iterable[T], key: Callable[[T], Hashable], score: Callable[[T], float], top_k: int) -> list[T]:
    """The ``top_k`` best items, one per key (the best-scoring one), best first."""
    best: dict[Hashable, T] = {}
    for it in items:
        k = key(it)
        if k not in best or score(best[k]) < score(it):
            best[k] = it
    return sorted(best.values(), key=lambda it: -score(it))[:top_k]


def best_spans(
    logits: list[tuple[np.ndarray, np.ndarray]],
    windows: list[Window],
    ctx: Encoded,
    *,
    max_answer_len: int = MAX_ANSWER_LEN,
    top_k: int = 1,
) -> list[Span]:
    """The ``top_k`` distinct character spans across all windows, best first."""
    cands = []
    for wi, ((sl, el), w) in enumerate(zip(logits, windows)):
        for score, a, b in window_spans(sl, el, w, max_answer_len=max_answer_len, top_k=max(top_k, 1) + 2):
            cs, ce = int(ctx.offsets[a, 0]), int(ctx.offsets[b, 1])
            if ce > cs:
                cands.append(Span(score, cs, ce, wi))
    # Ties broken by position, so equal scores give the same answer on every engine and run.
    cands.sort(key=lambda s: (s.start, s.end))
    return distinct_top(cands, key=lambda s: (s.start, s.end), score=lambda s: s.score, top_k=top_k)
