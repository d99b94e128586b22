"""Windows, labels and the span decoder (tokenizer from the real offline base)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qabridge.core.decode import best_spans
from qabridge.core.tokenizer import WordPieceTokenizer
from qabridge.core.windows import (
    WindowSpec,
    answer_token_span,
    build_windows,
    label_window,
    window_bounds,
)
from qabridge.errors import UsageError
from qabridge.train.features import build_features
from qabridge.train.squad import Answer, Example


@pytest.fixture(scope="module")
def tok(offline_base):
    return WordPieceTokenizer.from_hf_dir(offline_base)


def test_window_bounds_cover_everything_with_overlap():
    b = window_bounds(1000, 300, 128)
    assert b[0] == (0, 300)
    assert b[-1][1] == 1000
    for (_, e0), (s1, _) in zip(b, b[1:]):
        assert e0 - s1 == 128  # the overlap
    assert window_bounds(10, 300, 128) == [(0, 10)]


def test_stride_larger_than_window_still_advances():
    b = window_bounds(100, 10, 50)
    assert b[-1][1] == 100 and len(b) < 100


def test_labels_land_on_answer_tokens(tok, dev_examples):
    spec = WindowSpec(384, 128, 64)
    for e in dev_examples[:30]:
        q, c = tok.encode(e.question), tok.encode(e.context)
        a = e.answers[0]
        span = answer_token_span(c, a.start, a.end)
        w = build_windows(tok, q, c, spec)[0]
        s, t = label_window(w, span)
        assert 0 < s <= t
        ts, te = s - w.ctx_offset + w.tok_start, t - w.ctx_offset + w.tok_start
        text = e.context[c.offsets[ts, 0] : c.offsets[te, 1]]
        # Token boundaries cover the answer exactly, up to case.
        assert text.lower() == a.text.lower() or a.text.lower() in text.lower()


def test_answer_in_second_window_is_labelled_there_and_cls_elsewhere(tok):
    filler = " ".join(f"word{i}" for i in range(200))
    context = filler + " The capital of Freedonia is Zembla City. " + filler
    start = context.index("Zembla City")
    ex = Example("x", "t", context, "What is the capital of Freedonia?", (Answer("Zembla City", start),))
    spec = WindowSpec(128, 32, 64)
    feats = build_features([ex], tok, spec)
    assert len(feats) > 3
    labelled = [i for i in range(len(feats)) if feats.start_positions[i] > 0]
    assert labelled and labelled[0] >= 1  # not in the first window
    for i in labelled:
        ids = feats.input_ids[i]
        s, t = feats.start_positions[i], feats.end_positions[i]
        assert tok.decode(ids[s : t + 1].tolist()) == "zembla city"
    assert all(feats.start_positions[i] == 0 == feats.end_positions[i] for i in range(len(feats)) if i not in labelled)


def test_answer_ending_at_last_context_token_is_not_padding(tok):
    context = "The treaty was signed in Paris"
    ex = Example("x", "t", context, "Where was it signed?", (Answer("Paris", context.index("Paris")),))
    feats = build_features([ex], tok, WindowSpec(64, 16, 32))
    ids = feats.input_ids[0]
    s, t = feats.start_positions[0], feats.end_positions[0]
    assert t == len(ids) - 2  # last context token, just before the final [SEP]
    assert tok.decode(ids[s : t + 1].tolist()) == "paris"


def test_question_too_long_is_a_usage_error(tok):
    q = tok.encode("why " * 100)
    c = tok.encode("short context")
    with pytest.raises(UsageError) as ei:
        build_windows(tok, q, c, WindowSpec(384, 128, 64))
    assert ei.value.code == "question_too_long"


def test_decoder_picks_the_highest_probability_span_across_windows(tok):
    context = "alpha beta gamma delta epsilon zeta eta theta"
    c = tok.encode(context)
    q = tok.encode("which?")
    wins = build_windows(tok, q, c, WindowSpec(10, 2, 8))
    assert len(wins) >= 2
    logits = []
    for w in wins:
        s = np.zeros(len(w.input_ids))
        e = np.zeros(len(w.input_ids))
        logits.append((s, e))
    # Make "zeta eta" (tokens 5..6) strongly preferred in the window that holds it.
    target = next(i for i, w in enumerate(wins) if w.tok_start <= 5 and w.tok_end > 6)
    w = wins[target]
    logits[target][0][w.ctx_offset + 5 - w.tok_start] = 10
    logits[target][1][w.ctx_offset + 6 - w.tok_start] = 10
    spans = best_spans(logits, wins, c, max_answer_len=5, top_k=3)
    assert context[spans[0].start : spans[0].end] == "zeta eta"
    assert spans[0].score > spans[1].score
    assert 0 < spans[0].score <= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    context=st.text(min_size=1, max_size=400),
    max_len=st.integers(20, 80),
    stride=st.integers(0, 40),
    max_answer=st.integers(1, 40),
    top_k=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_offsets_always_slice_the_context(tok, context, max_len, stride, max_answer, top_k, seed):
    c = tok.encode(context)
    if len(c.ids) == 0:
        return
    q = tok.encode("what is it?")
    wins = build_windows(tok, q, c, WindowSpec(max_len, stride, 16))
    rng = np.random.default_rng(seed)
    logits = [(rng.normal(size=len(w.input_ids)) * 5, rng.normal(size=len(w.input_ids)) * 5) for w in wins]
    spans = best_spans(logits, wins, c, max_answer_len=max_answer, top_k=top_k)
    assert 1 <= len(spans) <= top_k
    for s in spans:
        assert 0 <= s.start < s.end <= len(context)
        assert 0 <= s.score <= 1
        # Spans are whole tokens: they start where a context token starts and end where one ends.
        assert s.start in set(c.offsets[:, 0].tolist()) and s.end in set(c.offsets[:, 1].tolist())
    assert [s.score for s in spans] == sorted((s.score for s in spans), reverse=True)
