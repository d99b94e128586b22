"""benchmarks/experiments/documents_margins.py: the numbers quality.md gives for how readers rank passages."""

from __future__ import annotations

import pytest

from .helpers import load_script


@pytest.fixture(scope="module")
def dm():
    return load_script("documents_margins")


def q(article, answerable, *rows):
    return {"article": article, "answerable": answerable,
            "rows": [{"margin": m, "f1": f, "sim": 0.5, "prob": 0.5} for m, f in rows]}


def test_summary_counts_the_tuning_set_only(dm):
    rows = [
        q("R", True, (-50.0, 1.0), (50.0, 0.0)),  # the first article is the report set: left out
        q("A", True, (20.0, 1.0), (5.0, 0.0), (4.0, 0.0)),  # the answer's passage has the best margin
        q("A", True, (6.0, 1.0), (9.0, 0.0)),  # a passage without it outranks it
        q("A", False, (25.0, 0.0), (3.0, 0.0)),  # off-topic: confident on text that does not answer
        q("A", False, (12.0, 0.0)),
    ]
    s = dm.summary(rows)
    assert s["questions"] == 2 and s["best_margin_answers"] == 50.0
    assert s["auc"] == pytest.approx(5 / 6, abs=1e-3)  # 20 beats all 3 others, 6 beats 5 and 4 but not 9
    assert s["median_margin_with_answer"] == 13.0 and s["median_margin_without"] == 5.0
    assert s["off_topic"] == 2 and s["off_topic_median_best_margin"] == 18.5 and s["off_topic_above_20"] == 50.0


def test_auc_splits_ties(dm):
    assert dm.auc([1.0], [1.0]) == 0.5 and dm.auc([2.0, 0.0], [1.0]) == 0.5


def test_documents_cut_is_tuned_on_the_tuning_set_and_stored(tmp_path):
    """documents_tune.py --save-threshold: the rank cut with the most kept answers plus off-topic
    abstentions (tuning set only; ties to the lower cut), stored as the threshold the bridge uses."""
    import json

    dt = load_script("documents_tune")

    def qs(article, answerable, margin, f1=1.0):
        return {"article": article, "answerable": answerable, "rows": [{"margin": margin, "f1": f1, "sim": 0.5, "prob": 0.5}]}

    # rank = margin + 20 x 0.5. Answerable: ranks 14 (right), 16 (a wrong span), 30 (right);
    # off-topic: 11, 13, 15. A cut in (13, 14] keeps 14 and 30 and abstains on 11 and 13 (4); one in
    # (15, 16] keeps 30 alone and abstains on all three (4 too): the tie goes to the lower cut, 13.5
    # on the 0.5 grid.
    tune = [qs("T", True, 4.0), qs("T", True, 6.0, f1=0.0), qs("T", True, 20.0),
            qs("T", False, 1.0), qs("T", False, 3.0), qs("T", False, 5.0)]
    report = [qs("R", True, 90.0), qs("R", False, -90.0)]  # the report set never moves the cut
    cut, (ok, n, nulls) = dt.best_cut(tune, 20.0)
    assert (cut, ok, n, nulls) == (13.5, 2, 3, 2)
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "qabridge.json").write_text(json.dumps({"base_model": "x"}))
    t = dt.save_threshold(adapter, tmp_path / "m.int8.onnx", 20.0, report, tune)
    d = json.loads((adapter / "qabridge.json").read_text())
    assert t == d["documents_null_threshold"] == 20.0 * 1.0 - 13.5 and d["base_model"] == "x"
    assert d["documents_passage_weight"] == 20.0
    assert "m.int8.onnx" in d["documents_null_threshold_tuning"] and "kept 1/1, abstained 1/1" in d["documents_null_threshold_tuning"]


def test_single_text_rule_reads_the_answer_passage_and_the_closest_off_topic_one():
    """documents_tune.py's single-text block: an answerable question is judged on its passage with the
    answer (the highest F1, at least 0.5; others are not counted), an off-topic one on its most similar
    passage; a text is refused iff -margin > threshold, as the bridge refuses a `context`."""
    dt = load_script("documents_tune")

    def row(margin, f1, sim):
        return {"margin": margin, "f1": f1, "sim": sim, "prob": 0.5}

    items = [
        {"article": "T", "answerable": True, "rows": [row(-9.0, 0.0, 0.9), row(3.0, 1.0, 0.2)]},  # judged on 3.0
        {"article": "T", "answerable": True, "rows": [row(-1.0, 0.6, 0.5)]},
        {"article": "T", "answerable": True, "rows": [row(8.0, 0.4, 0.5)]},  # no passage holds the answer
        {"article": "T", "answerable": False, "rows": [row(-5.0, 0.0, 0.8), row(9.0, 0.0, 0.1)]},  # judged on -5.0
        {"article": "T", "answerable": False, "rows": [row(2.0, 0.0, 0.7)]},
    ]
    assert dt.single_text(items, 0.0) == (1, 2, 1, 2)
    assert dt.single_text(items, 1.0) == (2, 2, 1, 2)
    assert dt.single_text(items, -3.0) == (1, 2, 2, 2)
    assert dt.single_text(items, -4.0) == (0, 2, 2, 2)
    assert dt.single_text(items, 5.0) == (2, 2, 0, 2)
