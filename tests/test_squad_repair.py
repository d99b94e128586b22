"""Forgiving SQuAD loading (issue 34): what the official evaluation script scores is not refused.

Hand-made broken files: an answer_start off by whitespace or at another copy is re-anchored to the
nearest exact occurrence and counted; an answer text absent from its context is left out with its
question's id listed; ``--strict`` refuses the file as before; integer ids are read.
"""

from __future__ import annotations

import gzip
import json

import pytest

from qabridge.errors import DataError
from qabridge.train.squad import load_squad, reanchor, squad_file

from .helpers import run_cli

CTX = "Alice met Bob in Paris. Later, Bob  moved to Rome, and Bob stayed."
#      0         1         2         3         4         5         6
#      0123456789012345678901234567890123456789012345678901234567890123456


def _file(tmp_path, qas, context=CTX, name="d.json"):
    p = tmp_path / name
    p.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}))
    return p


def _qa(qid, *answers):
    return {"id": qid, "question": "Who?", "answers": [{"text": t, "answer_start": s} for t, s in answers]}


@pytest.mark.parametrize(
    "text, start, want_text, want_start",
    [
        ("Bob", 10, "Bob", 10),  # already right: untouched
        ("Bob", 11, "Bob", 10),  # off by one: the nearest copy
        ("Bob", 33, "Bob", 31),  # near the second copy: that one, not the first
        ("Bob", 60, "Bob", 55),  # past the last copy
        (" Bob", 9, " Bob", 9),  # leading space that the context has
        ("moved  to", 36, "moved to", 36),  # whitespace runs differ: the context's own text
        ("Bob moved", 31, "Bob  moved", 31),
        ("Paris.  ", 16, "Paris.", 17),  # trailing whitespace trimmed by the loose match
    ],
)
def test_reanchor_picks_the_nearest_occurrence(text, start, want_text, want_start):
    a = reanchor(CTX, text, start)
    assert a is not None and (a.text, a.start) == (want_text, want_start)
    assert CTX[a.start : a.end] == a.text


def test_reanchor_gives_up_on_text_that_is_not_there():
    assert reanchor(CTX, "Carol", 3) is None
    assert reanchor(CTX, "   ", 3) is None


def test_repairs_are_counted_and_absent_answers_listed(tmp_path):
    p = _file(tmp_path, [
        _qa("ok", ("Bob", 10)),
        _qa("ws", ("Bob", 11)),
        _qa("copy", ("Rome", 3)),
        _qa("gone", ("Carol", 0)),
        _qa("half", ("Carol", 0), ("Paris", 16)),  # one answer absent, one re-anchored
        _qa(7, ("Alice", 0)),  # an integer id
    ])
    ex = load_squad(p)
    by_id = {e.id: e for e in ex}
    assert list(by_id) == ["ok", "ws", "copy", "half", "7"]  # "gone" skipped, file order kept
    assert ex.reanchored == 3 and ex.skipped == ("gone",) and ex.dropped == ("half",)
    assert by_id["half"].answers[0].start == 17 and not by_id["half"].is_impossible
    assert all(e.context[a.start : a.end] == a.text for e in ex for a in e.answers)
    notes = " ".join(ex.notes(str(p)))
    assert "3 answer(s) re-anchored" in notes and "gone" in notes and "half" in notes and str(p) in notes


def test_strict_refuses_the_first_bad_offset(tmp_path):
    p = _file(tmp_path, [_qa("ok", ("Bob", 10)), _qa("ws", ("Bob", 11))])
    with pytest.raises(DataError, match="question 'ws': answer_start 11 does not point at its answer text 'Bob'"):
        load_squad(p, strict=True)
    assert load_squad(p, validate=False)[1].answers[0].start == 11  # validate=False takes offsets as written


def test_a_file_with_no_usable_question_says_why(tmp_path):
    p = _file(tmp_path, [_qa("a", ("Carol", 0)), _qa("b", ("Dave", 4))])
    with pytest.raises(DataError, match=r"holds no usable question.*all 2 .*\(a, b\)"):
        load_squad(p)


def test_eval_scores_a_broken_file_and_reports_the_repairs(tmp_path):
    # The question's answer_start points one character early; the official script would score it.
    ctx = "The Eiffel Tower was completed in 1889 for the World's Fair in Paris."
    p = _file(tmp_path, [
        {"id": 1, "question": "When was the tower completed?", "answers": [{"text": "1889", "answer_start": 33}]},
        {"id": 2, "question": "Where was the fair?", "answers": [{"text": "Lyon", "answer_start": 0}]},
    ], context=ctx)
    r = run_cli("eval", "--adapter", "bert-qa", "--data", str(p), "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["count"] == 1 and res["exact_match"] == 100.0
    assert res["data_repairs"] == {"reanchored": 1, "skipped": ["2"], "answers_dropped": []}
    assert "1 answer(s) re-anchored" in r.stderr and "skipped" in r.stderr
    r = run_cli("eval", "--adapter", "bert-qa", "--data", str(p), "--json", "--strict")
    assert r.returncode == 3 and "does not point at its answer text" in r.stderr


def test_official_dev_set_loads_unchanged():
    f = squad_file("dev")
    if f is None:
        pytest.skip("SQuAD v1.1 dev not found (QABRIDGE_SQUAD_DIR or ../shared/data/squad)")
    ex = load_squad(f)
    assert (len(ex), ex.reanchored, ex.skipped, ex.dropped) == (10570, 0, (), ())


def test_gzipped_broken_file(tmp_path):
    p = tmp_path / "d.json.gz"
    with gzip.open(p, "wt") as fh:
        json.dump({"data": [{"title": "t", "paragraphs": [{"context": CTX, "qas": [_qa("ws", ("Bob", 12))]}]}]}, fh)
    ex = load_squad(p)
    assert ex.reanchored == 1 and ex[0].answers[0].start == 10
