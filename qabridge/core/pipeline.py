"""Question + context -> answers: tokenise, window, encode, decode. One path for eval and serving."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from qabridge.errors import EmptyContext

from .decode import Span, best_spans, null_score
from .settings import MAX_ANSWER_LEN
from .tokenizer import Encoded, WordPieceTokenizer
from .windows import Window, WindowSpec, build_windows


class Encoder(Protocol):
    name: str

    def logits(self, windows: list[Window], deadline: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]: ...


@dataclass
class Prediction:
    spans: list[Span]
    n_windows: int
    timing_ms: dict = field(default_factory=dict)
    #: Probability that the answer is not in the context: the smallest p_start([CLS]) * p_end([CLS])
    #: over the windows, as the transformers QA pipeline computes it for ``handle_impossible_answer``.
    null_score: float = 0.0


class QAPipeline:
    def __init__(self, tokenizer: WordPieceTokenizer, encoder: Encoder, spec: WindowSpec, *, max_answer_len: int = MAX_ANSWER_LEN):
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.spec = spec
        self.max_answer_len = max_answer_len

    def prepare(self, question: str, context: str, spec: WindowSpec | None = None) -> tuple[Encoded, list[Window]]:
        q = self.tokenizer.encode(question)
        ctx = self.tokenizer.encode(context)
        if len(ctx.ids) == 0:
            raise EmptyContext("context has no tokens")
        return ctx, build_windows(self.tokenizer, q, ctx, spec or self.spec)

    def predict(self, question: str, context: str, *, top_k: int = 1, max_answer_len: int | None = None,
                deadline: float | None = None, spec: WindowSpec | None = None) -> Prediction:
        """``spec`` overrides the model's window settings for this call (a shorter window, another stride)."""
        t0 = time.perf_counter()
        ctx, windows = self.prepare(question, context, spec)
        t1 = time.perf_counter()
        logits = self.encoder.logits(windows, deadline)
        t2 = time.perf_counter()
        spans = best_spans(logits, windows, ctx, max_answer_len=max_answer_len or self.max_answer_len, top_k=top_k)
        t3 = time.perf_counter()
        return Prediction(
            spans,
            len(windows),
            {"tokenize": 1e3 * (t1 - t0), "encode": 1e3 * (t2 - t1), "decode": 1e3 * (t3 - t2)},
            null_score(logits, windows),
        )
