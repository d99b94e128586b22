"""scripts/documents_margins.py: the numbers quality.md gives for how readers rank passages."""

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
