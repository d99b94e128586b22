"""SQuAD examples -> training features, through the bridge's own windowing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qabridge.core.tokenizer import WordPieceTokenizer
from qabridge.core.windows import WindowSpec, answer_token_span, build_windows, label_window

from .squad import Example


@dataclass
class Features:
    input_ids: list[np.ndarray]
    start_positions: np.ndarray
    end_positions: np.ndarray
    example_index: np.ndarray
    skipped_questions: int = 0  # questions longer than the spec allows

    @property
    def null_windows(self) -> int:
        """Windows labelled [CLS] (no answer inside): unanswerable examples' and answerable ones' misses."""
        return int(np.count_nonzero((self.start_positions == 0) & (self.end_positions == 0)))

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int32, count=len(self.input_ids))

    def generated(self, examples: list[Example]) -> np.ndarray:
        """Per window: does it come from a generated negative (``Example.kind``) of ``examples``, the
        list these features were built from?"""
        return np.fromiter((bool(examples[i].kind) for i in self.example_index), dtype=bool, count=len(self))


def build_features(examples: list[Example], tok: WordPieceTokenizer, spec: WindowSpec, *, batch: int = 1000) -> Features:
    """One feature per window; the label is the first gold answer, or [CLS] where the window misses it.

    The SQuAD 2.0 recipe: an unanswerable example (``is_impossible``, or simply no answers) puts
    every one of its windows on [CLS] (start = end = 0), as does a window of an answerable
    example that does not hold the whole answer.
    """
    ids, starts, ends, ex_idx = [], [], [], []
    skipped = 0
    for b in range(0, len(examples), batch):
        chunk = examples[b : b + batch]
        qs = tok.encode_batch([e.question for e in chunk])
        cs = tok.encode_batch([e.context for e in chunk])
        for j, (e, q, c) in enumerate(zip(chunk, qs, cs)):
            if len(q.ids) == 0 or len(q.ids) > spec.max_question_tokens or len(c.ids) == 0:
                skipped += 1
                continue
            span = None
            if e.answers and not e.is_impossible:
                a = e.answers[0]
                span = answer_token_span(c, a.start, a.end)
            for w in build_windows(tok, q, c, spec):
                s, t = label_window(w, span)
                ids.append(w.input_ids)
                starts.append(s)
                ends.append(t)
                ex_idx.append(b + j)
    return Features(ids, np.asarray(starts, np.int64), np.asarray(ends, np.int64), np.asarray(ex_idx, np.int64), skipped)


def cap_null_windows(feats: Features, k: int, rng: np.random.Generator) -> Features:
    """At most ``k`` of each question's [CLS]-labelled windows (drawn by ``rng``) beside all its
    answer windows, file order kept: a long document's windows cost training time in proportion,
    and a few of them carry the "answer is elsewhere" signal."""
    is_null = (feats.start_positions == 0) & (feats.end_positions == 0)
    keep = ~is_null
    for q in np.unique(feats.example_index[is_null]):
        idx = np.flatnonzero(is_null & (feats.example_index == q))
        keep[rng.permutation(idx)[:k]] = True
    sel = np.flatnonzero(keep)
    return Features([feats.input_ids[i] for i in sel], feats.start_positions[sel], feats.end_positions[sel],
                    feats.example_index[sel], feats.skipped_questions)


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, *, mega: int = 50) -> list[np.ndarray]:
    """Shuffled batches of similar length (less padding), in a random order."""
    order = rng.permutation(len(lengths))
    batches = []
    step = batch_size * mega
    for m in range(0, len(order), step):
        chunk = order[m : m + step]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def pad_batch(seqs: list[np.ndarray], pad_id: int, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ids and attention mask padded to the longest sequence, or to ``length``.

    A data-parallel rank pads its share to the longest window of the whole global batch: the
    model then computes exactly what one process computes on the full batch (padded positions
    still get start/end logits, and they enter the softmax of the span loss).
    """
    n = max(len(s) for s in seqs) if length is None else length
    ids = np.full((len(seqs), n), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), n), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask
