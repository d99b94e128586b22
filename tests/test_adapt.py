"""``qabridge adapt`` (issue 34): folds by document, the starting model scored beside the adapted
one on the same held-out documents, the final adapter, resuming, and refusals.

Real training runs (the trainer, a warm start from the built-in bert-qa) on whole SQuAD dev
articles as long documents: small and short, so the numbers say nothing about quality (that is
benchmarks/adapt.md); what is asserted is the bookkeeping that could go wrong.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from qabridge.train.adapt import split_folds, write_squad
from qabridge.train.features import Features, cap_null_windows
from qabridge.train.squad import Answer, Example, load_squad

from .helpers import DEV_SAMPLE, run_cli


def _long_docs(per_article: int) -> list[Example]:
    """The fixture's articles, each one document (paragraphs joined), answers shifted."""
    ex = load_squad(DEV_SAMPLE)
    out = []
    for title in dict.fromkeys(e.title for e in ex):
        exs = [e for e in ex if e.title == title]
        paras = list(dict.fromkeys(e.context for e in exs))
        doc = "\n\n".join(paras)
        for e in exs[:per_article]:
            o = doc.index(e.context)
            out.append(Example(e.id, title, doc, e.question, tuple(Answer(a.text, a.start + o) for a in e.answers)))
    return out


def test_folds_keep_documents_whole_and_balance_questions():
    ex = [Example(f"q{i}", f"doc{i % 7}", f"context {i % 7}", "?", (Answer("context", 0),)) for i in range(70)]
    ex += [Example(f"r{i}", "big", "big context", "?", (Answer("big", 0),)) for i in range(25)]
    folds = split_folds(ex, 3, seed=1)
    assert sorted(i for f in folds for i in f) == list(range(len(ex)))
    docs = [{ex[i].title for i in f} for f in folds]
    assert all(not (a & b) for j, a in enumerate(docs) for b in docs[j + 1:])  # no document in two folds
    assert max(map(len, folds)) - min(map(len, folds)) <= 10  # 25, then 10-question documents fill the others
    assert split_folds(ex, 3, seed=1) == folds and split_folds(ex, 3, seed=2) != folds


def test_cap_null_windows_keeps_answer_windows_and_k_others():
    starts = np.array([0, 5, 0, 0, 0, 7, 0, 0])
    qs = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    f = Features([np.array([i]) for i in range(8)], starts, starts + 1 * (starts > 0), qs)
    f.end_positions[starts == 0] = 0
    c = cap_null_windows(f, 1, np.random.default_rng(0))
    got = [int(x[0]) for x in c.input_ids]
    assert 1 in got and 5 in got  # every answer window stays
    assert [int(q) for q in c.example_index].count(0) == 2 and [int(q) for q in c.example_index].count(2) == 1
    assert got == sorted(got)  # file order kept


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapt")
    data = write_squad(_long_docs(6), tmp / "mine.json")
    out = tmp / "models" / "mine"
    args = ["adapt", "--from", "bert-qa", "--data", str(data), "--output", str(out), "--folds", "2", "--epochs", "0.5",
            "--score-engine", "torch", "--device", "cpu", "--quiet"]
    r = run_cli(*args, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, data, out, args, r


def test_adapt_reports_start_and_adapted_on_the_same_held_out_documents(adapted):
    tmp, data, out, _, r = adapted
    s = json.loads((out / "adapt_summary.json").read_text())
    assert len(s["folds"]) == 2 and s["questions"] == 12 and s["documents"] == 2
    for f in s["folds"]:
        trained_on = {a["title"] for a in json.loads((out / "cv" / f"fold-{f['fold']}" / "train.json").read_text())["data"]}
        assert not trained_on & set(f["documents"])  # the held-out document was not trained on
        assert f["start"]["count"] == f["adapted"]["count"] == 6
        for k in ("start", "adapted"):
            assert 0 <= f[k]["exact_match"] <= f[k]["top3_recall"] <= 100  # the top answer is among the best three
    cv = s["cross_validated"]
    assert cv["start"]["count"] == cv["adapted"]["count"] == 12
    assert cv["start"]["f1"] == pytest.approx(sum(f["start"]["f1"] for f in s["folds"]) / 2, abs=0.01)
    assert "cross-validated over 2 folds" in r.stdout and "adapted" in r.stdout

    # The "start" column is the starting model itself, scored again here on fold 0's documents.
    from qabridge.core.builtin import lookup_builtin
    from qabridge.train.adapt import score
    from qabridge.train.evaluate import torch_pipeline

    held = [e for e in load_squad(data) if e.title in set(s["folds"][0]["documents"])]
    again = score(torch_pipeline(lookup_builtin("bert-qa").adapter()), held)
    assert (again["exact_match"], again["f1"]) == (s["folds"][0]["start"]["exact_match"], s["folds"][0]["start"]["f1"])


def test_the_final_adapter_is_a_normal_adapter(adapted):
    tmp, data, out, _, _ = adapted
    assert (out / "adapter_model.safetensors").stat().st_size < 10_000_000
    ts = json.loads((out / "training_summary.json").read_text())
    assert ts["train_examples"] == 12  # the final run trains on every question
    r = run_cli("eval", "--adapter", str(out), "--data", str(data), "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["count"] == 12


def test_adapted_models_are_listed_with_what_they_bought(adapted):
    import subprocess
    import sys

    tmp, _, out, _, _ = adapted
    r = subprocess.run([sys.executable, "-m", "qabridge.cli", "models", "--json"], cwd=tmp, capture_output=True, text=True)
    rows = [x for x in json.loads(r.stdout) if x.get("adapted")]
    assert len(rows) == 1 and rows[0]["source"] == "bert-qa" and rows[0]["cross_validated"]["adapted"]["count"] == 12
    r = subprocess.run([sys.executable, "-m", "qabridge.cli", "models"], cwd=tmp, capture_output=True, text=True)
    assert "adapted from bert-qa" in r.stdout and "cross-validated F1" in r.stdout


def test_rerun_resumes_and_other_settings_are_refused(adapted, tmp_path):
    tmp, data, out, args, first = adapted
    before = json.loads((out / "adapt_summary.json").read_text())["cross_validated"]
    r = run_cli(*args, timeout=1200)
    assert r.returncode == 0 and r.stderr.count("done before") == 2, r.stderr[-2000:]
    assert json.loads((out / "adapt_summary.json").read_text())["cross_validated"] == before
    r = run_cli(*[a if a != "0.5" else "0.7" for a in args])
    assert r.returncode == 2 and "other settings" in r.stderr


def test_bad_adapt_inputs(adapted, tmp_path):
    _, data, _, _, _ = adapted
    r = run_cli("adapt", "--data", str(data), "--output", str(tmp_path / "a"), "--folds", "3")
    assert r.returncode == 2 and "has 2 document(s)" in r.stderr and "at least 3" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "Alice met Bob.", "qas": [
        {"id": "x", "question": "Who?", "answers": [{"text": "Carol", "answer_start": 0}]}]}]}]}))
    r = run_cli("adapt", "--data", str(bad), "--output", str(tmp_path / "b"))
    assert r.returncode == 3 and "no usable question" in r.stderr and "x" in r.stderr
    r = run_cli("adapt", "--from", str(tmp_path), "--data", str(data), "--output", str(tmp_path / "c"))
    assert r.returncode == 2 and "not a built-in model" in r.stderr
