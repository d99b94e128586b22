"""Sliding windows over a long context: ``[CLS] question [SEP] context-slice [SEP]``.

One code path for training features, evaluation and serving, so the model sees
the same layout everywhere. Segment (token-type) ids are all zero: llama.cpp's
BERT graph adds token-type embedding 0 to every token, so training with 0/1
segments would drift when the exported model runs there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qabridge.errors import EmptyQuestion, QuestionTooLong

from .settings import DOC_STRIDE, MAX_QUESTION_TOKENS, MAX_SEQ_LEN
from .tokenizer import Encoded, WordPieceTokenizer


@dataclass(frozen=True)
class WindowSpec:
    max_seq_len: int = MAX_SEQ_LEN
    doc_stride: int = DOC_STRIDE  # tokens of overlap between consecutive windows (HF semantics)
    max_question_tokens: int = MAX_QUESTION_TOKENS

    def capacity(self, n_question: int) -> int:
        return self.max_seq_len - n_question - 3


@dataclass(frozen=True)
class Window:
    input_ids: np.ndarray  # int32, full sequence with specials
    ctx_offset: int  # index in input_ids of the first context token
    tok_start: int  # first context token (index into the context encoding)
    tok_end: int  # one past the last context token

    @property
    def n_ctx(self) -> int:
        return self.tok_end - self.tok_start


def window_bounds(n_ctx: int, capacity: int, stride: int) -> list[tuple[int, int]]:
    """Token ranges covering ``n_ctx`` context tokens, each at most ``capacity`` long."""
    if capacity <= 0:
        raise QuestionTooLong("question leaves no room for the context in the window")
    # An overlap as large as the window would never advance; keep at least half a window of progress.
    overlap = min(stride, capacity // 2)
    step = capacity - overlap
    bounds = []
    start = 0
    while True:
        end = min(start + capacity, n_ctx)
        bounds.append((start, end))
        if end >= n_ctx:
            break
        start += step
    return bounds


def check_question(q: Encoded, spec: WindowSpec) -> None:
    if len(q.ids) == 0:
        raise EmptyQuestion("question has no tokens")
    if len(q.ids) > spec.max_question_tokens:
        raise QuestionTooLong(f"question is {len(q.ids)} tokens; the limit is {spec.max_question_tokens}")


def build_windows(tok: WordPieceTokenizer, q: Encoded, ctx: Encoded, spec: WindowSpec) -> list[Window]:
    check_question(q, spec)
    cap = spec.capacity(len(q.ids))
    head = np.concatenate([[tok.cls_id], q.ids, [tok.sep_id]]).astype(np.int32)
    tail = np.asarray([tok.sep_id], dtype=np.int32)
    out = []
    for s, e in window_bounds(len(ctx.ids), cap, spec.doc_stride):
        ids = np.concatenate([head, ctx.ids[s:e], tail]).astype(np.int32)
        out.append(Window(ids, len(head), s, e))
    return out


def answer_token_span(ctx: Encoded, char_start: int, char_end: int) -> tuple[int, int] | None:
    """Context-token indices (inclusive) covering characters ``[char_start, char_end)``."""
    if len(ctx.ids) == 0 or char_end <= char_start:
        return None
    starts, ends = ctx.offsets[:, 0], ctx.offsets[:, 1]
    # First token ending after the answer starts; last token starting before it ends.
    ts = int(np.searchsorted(ends, char_start, side="right"))
    te = int(np.searchsorted(starts, char_end, side="left")) - 1
    if ts >= len(ctx.ids) or te < ts:
        return None
    return ts, te


def label_window(w: Window, span: tuple[int, int] | None) -> tuple[int, int]:
    """Start/end positions in ``w.input_ids``; (0, 0) = [CLS] when the answer is not inside."""
    if span is None:
        return 0, 0
    ts, te = span
    if ts < w.tok_start or te >= w.tok_end:
        return 0, 0
    return w.ctx_offset + ts - w.tok_start, w.ctx_offset + te - w.tok_start


def padded_batch(seqs, pad_id: int = 0, ids_dtype=np.int64, mask_dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences as one right-padded [batch, longest] ids array and its attention mask."""
    longest = max(len(s) for s in seqs)
    ids = np.full((len(seqs), longest), pad_id, dtype=ids_dtype)
    mask = np.zeros((len(seqs), longest), dtype=mask_dtype)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask
