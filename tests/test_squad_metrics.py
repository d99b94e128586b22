"""SQuAD loading and the official metric, against hand-computed cases."""

import gzip
import json
import lzma

import pytest

from qabridge.errors import DataError
from qabridge.train import metrics
from qabridge.train.squad import load_squad

from .helpers import DEV_SAMPLE


def test_normalisation_drops_case_punctuation_articles_and_spaces():
    assert metrics.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert metrics.normalize_answer("an apple, a day") == "apple day"
    assert metrics.normalize_answer("theory") == "theory"  # 'the' inside a word stays


@pytest.mark.parametrize(
    "pred, gold, em, f1",
    [
        ("Denver Broncos", "Denver Broncos", 1.0, 1.0),
        ("the Denver Broncos", "Denver Broncos", 1.0, 1.0),
        ("Broncos", "Denver Broncos", 0.0, 2 * (1 * 0.5) / 1.5),  # p=1, r=1/2 -> 2/3
        ("Denver Broncos team", "Denver Broncos", 0.0, 2 * (2 / 3 * 1) / (2 / 3 + 1)),  # p=2/3, r=1 -> 0.8
        ("Carolina Panthers", "Denver Broncos", 0.0, 0.0),
        ("", "Denver Broncos", 0.0, 0.0),
    ],
)
def test_em_and_f1_by_hand(pred, gold, em, f1):
    assert metrics.exact_match(pred, gold) == em
    assert metrics.f1(pred, gold) == pytest.approx(f1)


def test_score_takes_the_max_over_gold_answers():
    em, f1 = metrics.score("Santa Clara", ["Levi's Stadium", "Santa Clara, California", "Santa Clara"])
    assert (em, f1) == (1.0, 1.0)
    em, f1 = metrics.score("Santa Clara California", ["Levi's Stadium", "Santa Clara, California"])
    assert em == 1.0


def test_evaluate_counts_missing_predictions_as_wrong():
    gold = [("a", ["x y"]), ("b", ["z"])]
    res = metrics.evaluate({"a": "x y"}, gold)
    assert res == {"exact_match": 50.0, "f1": 50.0, "count": 2}


def test_load_sample_has_valid_offsets():
    ex = load_squad(DEV_SAMPLE)
    assert len(ex) == 95
    for e in ex:
        for a in e.answers:
            assert e.context[a.start : a.end] == a.text


@pytest.mark.parametrize("suffix, opener", [(".json.gz", gzip.open), (".json.xz", lzma.open)])
def test_load_compressed(tmp_path, suffix, opener):
    p = tmp_path / f"s{suffix}"
    with opener(p, "wt") as fh:
        fh.write(DEV_SAMPLE.read_text())
    assert load_squad(p) == load_squad(DEV_SAMPLE)


def test_load_truncated_xz(tmp_path):
    p = tmp_path / "s.json.xz"
    p.write_bytes(lzma.compress(DEV_SAMPLE.read_bytes())[:500])
    with pytest.raises(DataError, match="not readable as SQuAD JSON"):
        load_squad(p)


def _doc(context, text, start):
    return {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "Who?", "answers": [{"text": text, "answer_start": start}]}]}]}]}


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "no such file"),
        ("{not json", "not readable as SQuAD JSON"),
        (json.dumps({"data": 3}), "not SQuAD format"),
        (json.dumps({"data": [{"title": "t", "paragraphs": [{"qas": []}]}]}), "not SQuAD format"),
        (json.dumps(_doc("Alice met Bob.", "Bob", 0)), "answer_start 0 does not point at its answer text 'Bob'"),
        (json.dumps({"data": []}), "holds no questions"),
    ],
)
def test_bad_files_name_the_file_and_problem(tmp_path, content, needle):
    p = tmp_path / "bad.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(DataError) as ei:
        load_squad(p)
    assert needle in str(ei.value)
    assert str(p) in str(ei.value)
