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
        load_squad(p, strict=True)  # strict: the mis-pointed answer_start is refused, as before
    assert needle in str(ei.value)
    assert str(p) in str(ei.value)


# --- SQuAD 2.0 ---------------------------------------------------------------------------------

# Four questions, two unanswerable, worked out by hand (the official evaluate-v2.0.py gives the
# same numbers; see train/metrics.py):
#   q1 answerable, gold "Denver Broncos"/"Broncos", pred "the Denver Broncos": EM 1, F1 1
#   q2 answerable, gold "Santa Clara, California", pred "Santa Clara":
#      EM 0; tokens santa clara vs santa clara california: p = 2/2, r = 2/3, F1 = 2*(2/3)/(5/3) = 0.8
#   q3 unanswerable, pred "" (abstains): EM 1, F1 1 (the only gold answer is "")
#   q4 unanswerable, pred "Levi's Stadium": EM 0, F1 0
# No threshold: EM = (1+0+1+0)/4 = 50; F1 = (1+0.8+1+0)/4 = 70;
#   HasAns EM (1+0)/2 = 50, F1 (1+0.8)/2 = 90; NoAns EM = F1 = (1+0)/2 = 50.
V2_GOLD = [("q1", ["Denver Broncos", "Broncos"]), ("q2", ["Santa Clara, California"]), ("q3", []), ("q4", [])]
V2_PREDS = {"q1": "the Denver Broncos", "q2": "Santa Clara", "q3": "", "q4": "Levi's Stadium"}
# No-answer probabilities; sorted: q1 0.1, q2 0.2, q4 0.4, q3 0.9.
V2_NA = {"q1": 0.1, "q2": 0.2, "q3": 0.9, "q4": 0.4}


def test_v2_metric_by_hand_without_threshold():
    r = metrics.evaluate_v2(V2_PREDS, V2_GOLD)
    assert r["exact"] == pytest.approx(50.0) and r["f1"] == pytest.approx(70.0) and r["total"] == 4
    assert r["HasAns_exact"] == pytest.approx(50.0) and r["HasAns_f1"] == pytest.approx(90.0)
    assert r["NoAns_exact"] == pytest.approx(50.0) and r["NoAns_f1"] == pytest.approx(50.0)
    assert r["HasAns_total"] == 2 and r["NoAns_total"] == 2
    assert "best_f1" not in r  # only with no-answer probabilities
    assert (r["exact_match"], r["count"]) == (r["exact"], 4)


def test_v2_best_thresholds_by_hand():
    # The official sweep starts from abstaining everywhere (q3, q4 right: 2 points) and answers
    # the questions in order of rising no-answer probability:
    #   EM: q1 +1 -> 3 (best, thresh 0.1); q2 +0 -> 3 (not better); q4 -1 -> 2; q3 +0 -> 2
    #       best_exact = 3/4 = 75, best_exact_thresh = 0.1
    #   F1: q1 +1 -> 3 (0.1); q2 +0.8 -> 3.8 (best, thresh 0.2); q4 -1 -> 2.8; q3 +0 -> 2.8
    #       best_f1 = 3.8/4 = 95, best_f1_thresh = 0.2
    r = metrics.evaluate_v2(V2_PREDS, V2_GOLD, V2_NA)
    assert r["best_exact"] == pytest.approx(75.0) and r["best_exact_thresh"] == 0.1
    assert r["best_f1"] == pytest.approx(95.0) and r["best_f1_thresh"] == 0.2
    # The headline numbers use na_prob_thresh = 1.0 (never abstain) as the official script does.
    assert r["exact"] == pytest.approx(50.0) and r["f1"] == pytest.approx(70.0)


def test_v2_threshold_applied_by_hand():
    # Threshold 0.3: q4 (0.4) and q3 (0.9) abstain -> both right; q1, q2 keep their spans.
    # EM = (1+0+1+1)/4 = 75, F1 = (1+0.8+1+1)/4 = 95; NoAns EM 100; HasAns unchanged.
    r = metrics.evaluate_v2(V2_PREDS, V2_GOLD, V2_NA, na_prob_thresh=0.3)
    assert r["exact"] == pytest.approx(75.0) and r["f1"] == pytest.approx(95.0)
    assert r["NoAns_exact"] == pytest.approx(100.0) and r["HasAns_f1"] == pytest.approx(90.0)
    # Abstaining on an answerable question costs it: threshold 0.15 also drops q2 (0.2) -> 0.
    # F1 = (1+0+1+1)/4 = 75.
    assert metrics.evaluate_v2(V2_PREDS, V2_GOLD, V2_NA, na_prob_thresh=0.15)["f1"] == pytest.approx(75.0)


def test_tune_null_threshold_by_hand():
    # Null-score diffs sorted as the probabilities above: answering q1 and q2 only is best
    # (F1 95, as above); the threshold lies midway between q2's 0.2 and q4's 0.4.
    t, f = metrics.tune_null_threshold(V2_NA, V2_GOLD, V2_PREDS)
    assert t == pytest.approx(0.3) and f == pytest.approx(95.0)
    # Every question answerable and right: answering everything is best, above the largest diff.
    t, f = metrics.tune_null_threshold({"a": -2.0, "b": 5.0}, [("a", ["x"]), ("b", ["y"])], {"a": "x", "b": "y"})
    assert t > 5.0 and f == pytest.approx(100.0)
    # Every question unanswerable with a span predicted: abstain on all, below the smallest diff.
    t, f = metrics.tune_null_threshold({"a": -2.0, "b": 5.0}, [("a", []), ("b", [])], {"a": "x", "b": "y"})
    assert t < -2.0 and f == pytest.approx(100.0)


def test_tune_null_threshold_is_reproducible_with_ties():
    # q1 (right) and q4 (wrong span on an unanswerable) share a diff: no threshold splits them,
    # so the tuned F1 must be one that applying the threshold really gives.
    diffs = {"q1": 0.1, "q4": 0.1, "q2": 0.2, "q3": 0.9}
    t, f = metrics.tune_null_threshold(diffs, V2_GOLD, V2_PREDS)
    assert metrics.evaluate_v2(V2_PREDS, V2_GOLD, diffs, na_prob_thresh=t)["f1"] == pytest.approx(f)
    # Answer none: 2 (q3, q4); answer q1+q4: 2 - 1 + 1 = 2; + q2: 2.8 -> 70; + q3: 2.8. Best: 70.
    assert f == pytest.approx(70.0) and 0.2 <= t < 0.9


def test_v2_empty_strings_and_missing_predictions():
    assert metrics.f1_v2("", "") == 1.0 and metrics.f1_v2("x", "") == 0.0 and metrics.f1_v2("", "x") == 0.0
    assert metrics.f1_v2("the", "") == 1.0  # normalises to nothing = no answer
    # A gold answer that normalises to nothing counts as "" (the official rule).
    assert metrics.evaluate_v2({"a": ""}, [("a", ["The"])])["f1"] == 100.0
    r = metrics.evaluate_v2({"q1": "Broncos"}, V2_GOLD)  # q2..q4 missing: scored 0, still counted
    assert r["total"] == 4 and r["exact"] == pytest.approx(25.0)


def _v2_doc(qa: dict) -> dict:
    return {"version": "v2.0", "data": [{"title": "t", "paragraphs": [
        {"context": "Alice met Bob in Paris.", "qas": [qa]}]}]}


def test_load_v2_reads_unanswerable_questions(tmp_path):
    p = tmp_path / "v2.json"
    doc = _v2_doc({"id": "u1", "question": "Where did Carol go?", "answers": [], "is_impossible": True,
                   "plausible_answers": [{"text": "Paris", "answer_start": 17}]})
    doc["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "a1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 17}], "is_impossible": False})
    p.write_text(json.dumps(doc))
    u, a = load_squad(p)
    assert u.is_impossible and u.answers == () and not u.has_answer
    assert not a.is_impossible and a.has_answer and a.answers[0].text == "Paris"
    from qabridge.train.squad import has_unanswerable

    assert has_unanswerable([u, a]) and not has_unanswerable(load_squad(DEV_SAMPLE))
    assert not any(e.is_impossible for e in load_squad(DEV_SAMPLE))  # v1.1 unchanged


@pytest.mark.parametrize(
    "qa, needle",
    [
        ({"id": "bad-q7", "question": "Who?", "answers": [{"text": "Bob", "answer_start": 10}], "is_impossible": True},
         "question 'bad-q7' is marked is_impossible but lists 1 answer(s)"),
        ({"id": "bad-q8", "question": "Who?", "answers": [], "is_impossible": False},
         "question 'bad-q8' is marked is_impossible: false but lists no answers"),
        ({"id": "bad-q9", "question": "Who?", "answers": [], "is_impossible": "yes"},
         "question 'bad-q9': is_impossible must be true or false"),
    ],
)
def test_load_v2_contradictions_name_the_question(tmp_path, qa, needle):
    p = tmp_path / "bad-v2.json"
    p.write_text(json.dumps(_v2_doc(qa)))
    with pytest.raises(DataError) as ei:
        load_squad(p)
    assert needle in str(ei.value) and str(p) in str(ei.value)


def test_squad2_dev_file_reads_with_official_counts():
    from qabridge.train.squad import squad2_dev_file

    f = squad2_dev_file()
    if f is None:
        pytest.skip("SQuAD 2.0 dev not found (../shared/data/squad2 or QABRIDGE_SQUAD2_DIR)")
    ex = load_squad(f)
    assert len(ex) == 11873
    assert sum(e.is_impossible for e in ex) == 5945 and sum(e.has_answer for e in ex) == 5928
    # Abstaining everywhere scores exactly the unanswerable share (the README's 'always abstain').
    r = metrics.evaluate_v2({e.id: "" for e in ex}, [(e.id, [a.text for a in e.answers]) for e in ex])
    assert r["f1"] == pytest.approx(100 * 5945 / 11873) and r["HasAns_f1"] == 0.0 and r["NoAns_f1"] == 100.0


def test_first_articles_keeps_file_order():
    """The tune/report split of SQuAD 2.0 dev: the first n titles as the file orders them, each once."""
    from qabridge.train.squad import Example, first_articles

    exs = [Example(str(i), t, "c", "q?", ()) for i, t in enumerate(["B", "B", "A", "C", "A", "D"])]
    assert first_articles(exs, 2) == {"B", "A"}
    assert first_articles(exs, 3) == {"B", "A", "C"} and first_articles(exs, 9) == {"A", "B", "C", "D"}
