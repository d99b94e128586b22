"""The public Python API (qabridge.pipeline) and the HTTP client (qabridge.Client / AsyncClient)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import qabridge
from qabridge.errors import (
    ConnectError,
    EngineError,
    InvalidField,
    MissingContext,
    ModelError,
    ModelNotFound,
    OllamaUnavailable,
    QABridgeError,
    UnsupportedMediaType,
    UsageError,
)

from .helpers import DEV_SAMPLE, FIXTURES, free_port, run_cli

HF_RECORD = FIXTURES / "hf_pipeline_4.57.6.json"


@pytest.fixture(scope="module")
def qa(exported):
    with qabridge.pipeline(model=exported("q8_0")) as p:
        yield p


def test_call_shapes_follow_the_transformers_pipeline(qa, dev_examples):
    e, f = dev_examples[0], dev_examples[1]
    one = qa(question=e.question, context=e.context)
    assert set(one) == {"score", "start", "end", "answer"}
    assert e.context[one["start"] : one["end"]] == one["answer"] and 0 < one["score"] <= 1
    assert qa(e.question, e.context) == one  # positional pair
    assert qa({"question": e.question, "context": e.context}) == one  # one dict
    two = qa([{"question": e.question, "context": e.context}, {"question": f.question, "context": f.context}])
    assert two[0] == one and two[1] == qa(question=f.question, context=f.context)
    assert qa(question=[e.question, f.question], context=[e.context, f.context]) == two
    top = qa(question=e.question, context=e.context, top_k=3)
    assert isinstance(top, list) and len(top) == 3 and top[0] == one
    assert [a["score"] for a in top] == sorted((a["score"] for a in top), reverse=True)
    assert len({(a["start"], a["end"]) for a in top}) == 3  # distinct spans


def test_window_options_change_the_windows(qa, dev_examples):
    e = max(dev_examples, key=lambda x: len(x.context))
    short = qa(question=e.question, context=e.context, max_seq_len=64, doc_stride=16, top_k=2)
    assert all(e.context[a["start"] : a["end"]] == a["answer"] for a in short)
    assert qa(question=e.question, context=e.context, max_answer_len=1)["answer"].count(" ") == 0
    with pytest.raises(UsageError) as ei:
        qa(question="why " * 40, context=e.context, max_question_len=8)
    assert ei.value.code == "question_too_long"


def test_bad_calls_raise_typed_errors(qa, exported, tmp_path):
    with pytest.raises(MissingContext):
        qa(question="who?")
    with pytest.raises(UsageError, match="unknown argument"):
        qa(question="who?", context="Ada wrote it.", topk=2)
    with pytest.raises(UsageError):
        qa(question=["a?", "b?", "c?"], context=["x", "y"])
    with pytest.raises(ModelError):
        qabridge.pipeline(model=tmp_path / "missing.gguf")
    with pytest.raises(UsageError, match="question-answering"):
        qabridge.pipeline("text-generation", model=exported("q8_0"))


def test_close_frees_the_engine(exported):
    p = qabridge.pipeline(model=exported("q8_0"))
    with p:
        assert p(question="Who wrote it?", context="It was written by Ada Lovelace.")["answer"]
    with pytest.raises(EngineError):
        p(question="Who wrote it?", context="It was written by Ada Lovelace.")


def test_handle_impossible_answer_adds_the_empty_answer(qa, dev_examples):
    e = dev_examples[0]
    ctx = "The Eiffel Tower is in Paris. It was completed in 1889."
    plain = qa(question="What is the capital of Japan?", context=ctx, top_k=3)
    assert all(a["answer"] for a in plain)
    withnull = qa(question="What is the capital of Japan?", context=ctx, top_k=3, handle_impossible_answer=True)
    empty = [a for a in withnull if a["answer"] == ""]
    assert len(empty) <= 1 and withnull == sorted(withnull, key=lambda a: -a["score"])
    if empty:
        assert empty[0]["start"] == empty[0]["end"] == 0
    # The empty answer competes: an answerable question keeps its span first.
    assert qa(question=e.question, context=e.context, handle_impossible_answer=True)["answer"] != ""


@pytest.mark.slow
@pytest.mark.skipif(not HF_RECORD.exists(), reason="tests/fixtures/hf_pipeline_4.57.6.json not recorded (scripts/record_hf_pipeline.py)")
def test_top_k_and_impossible_answers_match_transformers_4_57_6(exported):
    """Recorded from transformers 4.57.6's pipeline on the same merged weights (fp32); qabridge on the f32 GGUF."""
    rec = json.loads(HF_RECORD.read_text())
    o = rec["options"]
    same_top, same_null, n = 0, 0, len(rec["records"])
    with qabridge.pipeline(model=exported("f32")) as p:
        for r in rec["records"]:
            kw = {"top_k": o["top_k"], "max_answer_len": o["max_answer_len"], "max_seq_len": o["max_seq_len"],
                  "doc_stride": o["doc_stride"], "max_question_len": o["max_question_len"]}
            ours = p(question=r["question"], context=r["context"], **kw)
            theirs = r["plain"]
            same_top += (ours[0]["start"], ours[0]["end"]) == (theirs[0]["start"], theirs[0]["end"])
            for a, b in zip(ours, theirs):
                if (a["start"], a["end"]) == (b["start"], b["end"]):
                    assert a["score"] == pytest.approx(b["score"], abs=0.02)
            ours_n = p(question=r["question"], context=r["context"], handle_impossible_answer=True, **kw)
            theirs_n = r["impossible"]
            rank = lambda xs: next((i for i, a in enumerate(xs) if a["answer"] == ""), None)  # noqa: E731
            same_null += rank(ours_n) == rank(theirs_n)
            if rank(ours_n) is not None and rank(theirs_n) is not None:
                assert ours_n[rank(ours_n)]["score"] == pytest.approx(theirs_n[rank(theirs_n)]["score"], abs=0.02)
    assert same_top / n >= 0.98, f"top answer agrees on {same_top}/{n}"
    assert same_null / n >= 0.95, f"empty answer ranked the same on {same_null}/{n}"
    assert any(r["impossible"][0]["answer"] == "" for r in rec["records"])  # the record has abstentions to match


@pytest.mark.slow
def test_python_api_answers_like_the_bridge_over_http(server, exported, squad_dev_full):
    """The first 500 SQuAD v1.1 dev questions: same text and offsets from qabridge.pipeline and POST /api/qa."""
    examples = squad_dev_full[:500]
    with qabridge.pipeline(model=exported("q8_0")) as p, httpx.Client(base_url=server.url, timeout=120) as c:
        for e in examples:
            local = p(question=e.question, context=e.context)
            remote = c.post("/api/qa", json={"question": e.question, "context": e.context}).json()
            assert (local["answer"], local["start"], local["end"]) == (remote["answer"], remote["start"], remote["end"]), e.id
            assert local["score"] == pytest.approx(remote["score"], abs=1e-6)


# -- the client ---------------------------------------------------------------------------------
def test_client_returns_typed_responses(server, dev_examples):
    e = dev_examples[0]
    with qabridge.Client(server.url) as c:
        r = c.qa(e.question, context=e.context, top_k=2)
        assert r.answer == e.context[r.start : r.end] and len(r.answers) == 2 and r.engine == "llama.cpp"
        assert c.health().ready is True
        info = c.model_info()
        assert info.name == r.model and info.sha256 and info.max_seq_len == 384
        assert [m.name for m in c.models().models] == [info.name]
        res = c.batch([{"question": e.question, "context": e.context}, {"question": "q?"}])
        assert res[0].answer == r.answer
        assert isinstance(res[1], MissingContext) and res[1].code == "missing_context" and res[1].status == 400


def test_client_raises_the_bridges_error_class(server):
    with qabridge.Client(server.url) as c:
        with pytest.raises(ModelNotFound) as ei:
            c.qa("who?", context="Ada wrote it.", model="nope")
        assert ei.value.status == 404 and ei.value.code == "model_not_found"
        with pytest.raises(InvalidField) as ei:
            c.qa("who?", context="Ada wrote it.", top_k=0)
        assert ei.value.status == 422 and ei.value.code == "out_of_range"
    # A non-JSON body on a JSON route: 415 with its code, mapped to its class.
    r = httpx.post(server.url + "/api/qa", content="question=who", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    exc = qabridge.errors.from_response(r.status_code, r.json())
    assert isinstance(exc, UnsupportedMediaType)


def test_client_connect_error_when_nothing_listens():
    with qabridge.Client(f"http://127.0.0.1:{free_port()}", timeout=2) as c:
        with pytest.raises(ConnectError) as ei:
            c.health()
    assert isinstance(ei.value, QABridgeError) and ei.value.exit_code == 7


def test_async_client(server, dev_examples):
    async def go():
        async with qabridge.AsyncClient(server.url) as c:
            return await asyncio.gather(*(c.qa(e.question, context=e.context) for e in dev_examples[:4]))

    answers = asyncio.run(go())
    assert [a.answer for a in answers] == [e.context[a.start : a.end] for e, a in zip(dev_examples[:4], answers)]


def test_cli_exit_code_follows_the_error_class(tmp_path):
    from .helpers import run_cli

    # Ollama is down: a service error (7), not a usage error (2).
    r = run_cli("ask", "q?", "--context", "c", "--model", "ollama:bert-qa", "--ollama-host", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 7 and "does not answer" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("ask", "q?", "--model", str(tmp_path / "x.gguf"))  # neither --context nor --context-file
    assert r.returncode == 2 and "--context" in r.stderr
    r = run_cli("ask", "q?", "--context", "c", "--model", str(tmp_path / "x.gguf"))
    assert r.returncode == 4 and "no such model file" in r.stderr


def test_builtin_models_by_name_and_files_first(qa, exported, dev_examples, tmp_path, monkeypatch):
    """``pipeline("bert-qa")`` is the built-in model (built into the cache from its adapter); a file
    of that name in the working directory wins; ``ollama:`` names never resolve to a built-in model."""
    import shutil

    from qabridge.api import _builtin

    monkeypatch.setenv("QABRIDGE_CACHE", str(tmp_path / "cache"))
    with qabridge.pipeline("bert-qa", engine="llama.cpp", outtype="q8_0") as p:
        assert (p.name, p.source) == ("bert-qa", "file")
        assert p.model_file.path.parent == tmp_path / "cache" / "models"
        for e in dev_examples[:5]:  # the committed adapter as q8_0: what the exported fixture answers
            assert p(question=e.question, context=e.context) == qa(question=e.question, context=e.context)
    monkeypatch.chdir(tmp_path)
    shutil.copy(exported("f32"), tmp_path / "bert-qa")
    assert _builtin("bert-qa") is None
    with qabridge.pipeline("bert-qa") as p:
        assert p.model_file.path.resolve() == (tmp_path / "bert-qa").resolve() and p.model_file.outtype == "f32"
    assert _builtin("ollama:bert-qa") is None
    with pytest.raises(OllamaUnavailable):  # a bare name that is neither built in nor a file: Ollama's
        qabridge.pipeline("no-such-model", ollama_host=f"http://127.0.0.1:{free_port()}")


def test_models_command_and_eval_of_a_builtin_model_by_name(committed_adapter, exported, tmp_path):
    """`qabridge models` lists the built-in models with their training summary's scores;
    `qabridge eval --model bert-qa` scores the cached GGUF built from its adapter, which answers
    as the same adapter exported by hand does."""
    from pathlib import Path

    from qabridge.export.run import auto_outtype

    r = run_cli("models", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)[0]
    summary = json.loads((committed_adapter / "training_summary.json").read_text())
    assert row["name"] == "bert-qa" and row["default"] and Path(row["adapter"]).resolve() == committed_adapter.resolve()
    assert row["squad_v1_dev"]["f1"] == round(summary["dev"]["f1"], 2) and row["negatives"] == "topical"
    qcfg = json.loads((committed_adapter / "qabridge.json").read_text())
    assert row["null_threshold"] is None and row["documents_null_threshold"] == qcfg["documents_null_threshold"]
    text = run_cli("models").stdout
    assert f"no stored threshold; documents cut {qcfg['documents_null_threshold']:g}" in text, text
    env = {"QABRIDGE_CACHE": str(tmp_path / "cache")}
    by_name = run_cli("eval", "--model", "bert-qa", "--data", str(DEV_SAMPLE), "--limit", "20", "--json", env=env)
    assert by_name.returncode == 0, by_name.stderr
    got = json.loads(by_name.stdout)
    assert Path(got["model"]).parent == tmp_path / "cache" / "models"
    by_file = json.loads(run_cli("eval", "--model", str(exported(auto_outtype())), "--data", str(DEV_SAMPLE),
                                 "--limit", "20", "--json").stdout)
    assert (got["exact_match"], got["f1"], got["count"]) == (by_file["exact_match"], by_file["f1"], 20)
