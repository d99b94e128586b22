"""ONNX export and the ONNX Runtime engine: parity with torch, int8 spans, refusals, the auto choice."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from qabridge.errors import ModelError, OutputExists, UsageError

from .helpers import span_flips


def _windows(pipe, examples, n):
    out = []
    for e in examples[:n]:
        out.extend(pipe.prepare(e.question, e.context)[1])
    return out


def _max_delta(a, b):
    return max(max(np.abs(x[0] - y[0]).max(), np.abs(x[1] - y[1]).max()) for x, y in zip(a, b))


def _long_request(pipe, examples):
    """One question over several paragraphs: windows of different lengths in one padded batch."""
    ctx = " ".join(dict.fromkeys(e.context for e in examples))
    _, wins = pipe.prepare(examples[0].question, ctx)
    assert len(wins) >= 3 and len({len(w.input_ids) for w in wins}) >= 2
    return wins


def _op_counts(path) -> dict:
    import collections

    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


class _Counted:
    """An ORT session that counts its calls in ``calls[name]``."""

    def __init__(self, session, name: str, calls: dict, lock):
        self.session, self.name, self.calls, self.lock = session, name, calls, lock

    def run(self, *a, **kw):
        with self.lock:
            self.calls[self.name] += 1
        return self.session.run(*a, **kw)


def _rewrite_metadata(src, dst, **changes):
    import onnx

    m = onnx.load(str(src))
    kept = [p for p in m.metadata_props if p.key not in changes]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    for k, v in changes.items():
        if v is not None:
            m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(dst))
    return dst


def test_fp32_logits_match_torch(torch_pipe, onnx_exported, dev_examples):
    from qabridge.bridge.onnx_engine import onnx_pipeline, token_batches

    pipe = onnx_pipeline(onnx_exported("f32"), n_threads=2)
    try:
        wins = _windows(torch_pipe, dev_examples, 25)
        t = torch_pipe.encoder.logits(wins)
        o = pipe.encoder.logits(wins)  # 25 windows: short ones in pairs (BATCH_TOKENS), padded to the longer
        assert max(np.abs(x[0]).max() for x in t) > 0.5  # the comparison means something
        assert _max_delta(t, o) <= 0.05
        long = _long_request(torch_pipe, dev_examples)
        assert _max_delta(torch_pipe.encoder.logits(long), pipe.encoder.logits(long)) <= 0.05
        # Padding is masked out: a window alone gives what it gives inside a padded batch.
        alone = [pipe.encoder.logits([w])[0] for w in long]
        # Every window in one padded call (any padding allowed: the windows differ in length).
        pipe.encoder.batch_tokens, pipe.encoder.max_padding = 384 * len(long), 1.0
        assert len(token_batches([len(w.input_ids) for w in long], pipe.encoder.batch_tokens, 1.0)) == 1
        assert _max_delta(alone, pipe.encoder.logits(long)) <= 1e-3
    finally:
        pipe.encoder.close()


def test_token_batches_group_similar_lengths_within_the_budget():
    from qabridge.bridge.onnx_engine import token_batches

    lengths = [384, 120, 182, 384, 100, 90, 900, 110]
    groups = token_batches(lengths, 768, 0.1)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # each window once
    for g in groups:
        longest = max(lengths[i] for i in g)
        assert lengths[g[0]] == longest  # the padded length is the group's first
        assert len(g) == 1 or (len(g) * longest <= 768 and sum(lengths[i] for i in g) >= 0.9 * len(g) * longest)
    # Longest first; the 900 alone (over the budget), the two 384s together, 182 alone (a 120 beside
    # it would be a third padding), 120/110/100 within 10% of each other, 90 too far from 120.
    assert groups == [[6], [0, 3], [2], [1, 7, 4], [5]]
    assert token_batches(lengths, 10_000, 1.0) == [[6, 0, 3, 2, 1, 7, 4, 5]]
    assert token_batches(lengths, 1) == [[i] for i in (6, 0, 3, 2, 1, 7, 4, 5)]
    assert token_batches([], 768) == []


def test_export_metadata_and_fusions(onnx_exported, torch_pipe, committed_adapter, exported):
    from qabridge.bridge.onnx_engine import OnnxModel
    from qabridge.core.gguf_keys import Key
    from qabridge.core.hashing import adapter_hash
    from qabridge.core.settings import QASettings
    from qabridge.train.model import read_adapter

    path = onnx_exported("f32")
    info = onnx_exported.info("f32")
    assert info["outtype"] == "f32" and info["optimization"] == "O2"
    # ORT's BERT optimizer recognised the graph: one fused Attention per layer.
    assert info["fused"].get("Attention") == 6 and info["fused"].get("SkipLayerNormalization") == 12
    # ...and the written graph has them split back into Add + LayerNormalization (the faster CPU kernels).
    assert info["split_skip_layernorm"] == 12
    ops = _op_counts(path)
    assert "SkipLayerNormalization" not in ops and ops["LayerNormalization"] == 12, ops
    m = OnnxModel(path)
    assert m.settings == QASettings.from_mapping(read_adapter(committed_adapter)[1])
    assert m.get(Key.ADAPTER_SHA256) == adapter_hash(committed_adapter)
    assert m.outtype == "f32" and m.context_length == 512 and m.hidden_size == 384
    model = torch_pipe.encoder.model
    np.testing.assert_array_equal(m.span_head.weight, model.qa_outputs.weight.detach().numpy())
    np.testing.assert_array_equal(m.span_head.bias, model.qa_outputs.bias.detach().numpy())
    for text in ("Which NFL team represented the AFC at Super Bowl 50?", "Café naïve résumé – Zürich 1990s", "日本 x²"):
        assert m.tokenizer.ids(text) == torch_pipe.tokenizer.ids(text)
    assert "qabridge.vocab" not in m.qabridge_metadata() and "qabridge.max_seq_len" in m.qabridge_metadata()
    # Abstention travels as in the GGUF: same answer from both files of one adapter.
    from qabridge.core.model_file import ModelFile

    assert m.abstention == ModelFile(exported("q8_0")).abstention
    assert m.abstention["documents_null_threshold"] == read_adapter(committed_adapter)[1]["documents_null_threshold"]


def test_int8_argmax_spans_agree_with_torch(torch_pipe, onnx_exported, dev_examples):
    from qabridge.bridge.onnx_engine import onnx_pipeline

    path, f32 = onnx_exported("int8"), onnx_exported("f32")
    info = onnx_exported.info("int8")
    # Every weight MatMul, Q/K/V included (attention fused as MultiHeadAttention): 6 per layer.
    assert info["outtype"] == "int8" and info["quantized_matmuls"] == 36
    assert info["fused"].get("MultiHeadAttention") == 6
    assert info["size"] < 0.8 * f32.stat().st_size
    ops = _op_counts(path)
    assert ops["MatMulIntegerToFloat"] == 36 and ops["LayerNormalization"] == 12 and "SkipLayerNormalization" not in ops
    pipe = onnx_pipeline(path, n_threads=2)
    flips = span_flips(pipe, torch_pipe, dev_examples)
    # The bar of the dev-set test below: only near-ties flip (torch's top two spans within 0.1), at
    # most 1 in 20. Measured on this fixture: the plain recipe 95/95; the default since the evening
    # of 2026-11-28 92/95, its flips at margins 0.0006, 0.0006 and 0.063.
    assert len(flips) <= 0.05 * len(dev_examples), f"int8: {len(dev_examples) - len(flips)}/{len(dev_examples)}"
    assert all(m < 0.1 for m in flips), f"int8 changed a confident answer: margins {sorted(flips)}"


@pytest.mark.slow
@pytest.mark.squad
def test_int8_agreement_on_squad_dev(torch_pipe, onnx_exported, squad_dev_full):
    from qabridge.bridge.onnx_engine import onnx_pipeline

    examples = squad_dev_full[::50][:200]  # the fixed sample test_export uses for q8_0/bf16
    flips = span_flips(onnx_pipeline(onnx_exported("int8"), n_threads=2), torch_pipe, examples)
    # Measured with the plain recipe: 192/200 (96.0%), every flip a near-tie (torch's top two spans
    # within 0.07 in probability); llama.cpp q8_0 agrees on >= 98% of this sample (test_export), so
    # int8 is below q8_0's bar. The default since the evening of 2026-11-28: the same answer text on
    # 197/200 here and on 96.88% of the whole dev set (the plain recipe: 96.72%).
    assert len(flips) <= 0.05 * len(examples), f"{len(examples) - len(flips)}/{len(examples)}"
    assert all(m < 0.1 for m in flips), f"int8 changed a confident answer: margins {sorted(flips)}"


def test_engine_refuses_what_it_cannot_encode(onnx_exported, torch_pipe, dev_examples):
    from qabridge.bridge.onnx_engine import OnnxEngine
    from qabridge.core.windows import Window

    eng = OnnxEngine(onnx_exported("f32"), n_threads=2)
    try:
        with pytest.raises(UsageError) as e:
            eng.hidden_states(np.full(513, 1000, dtype=np.int32))
        assert e.value.code == "sequence_too_long" and "512" in e.value.message
        with pytest.raises(UsageError) as e:
            eng.hidden_states(np.zeros(0, dtype=np.int32))
        assert e.value.code == "empty_input"
        ok = _windows(torch_pipe, dev_examples, 1)
        too_long = Window(np.full(600, 1000, dtype=np.int32), 2, 0, 597)
        with pytest.raises(UsageError) as e:
            eng.logits([*ok, too_long])
        assert e.value.code == "sequence_too_long"
        h = eng.hidden_states(np.full(512, 1000, dtype=np.int32))  # the whole position table is fine
        assert h.shape == (512, 384) and np.isfinite(h).all()
    finally:
        eng.close()
    from qabridge.errors import EngineError

    with pytest.raises(EngineError):
        eng.hidden_states(np.array([101, 102], dtype=np.int32))


@pytest.mark.parametrize("concurrent", [False, True])
def test_engine_is_thread_safe(onnx_exported, torch_pipe, dev_examples, concurrent):
    from qabridge.bridge.onnx_engine import OnnxEngine

    wins = _windows(torch_pipe, dev_examples, 6)
    eng = OnnxEngine(onnx_exported("f32"), n_threads=2, concurrent=concurrent)
    try:
        want = eng.logits(wins)
        got: dict[int, list] = {}

        def run(i):
            with eng.demand():
                got[i] = eng.logits(wins)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 4 and all(_max_delta(want, g) <= 1e-4 for g in got.values())
    finally:
        eng.close()


def test_bad_files_are_clear_model_errors(tmp_path, onnx_exported, exported):
    from qabridge.bridge.onnx_engine import OnnxModel
    from qabridge.core.gguf_keys import Key

    good = onnx_exported("f32")
    data = good.read_bytes()
    cases = {
        tmp_path / "missing.onnx": "no such model file",
        tmp_path: "not a file",
    }
    (tmp_path / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "text.onnx").write_text("hello, I am not a model\n" * 10)
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "head.onnx").write_bytes(data[:64])
    cases.update({
        tmp_path / "random.onnx": "ONNX",
        tmp_path / "text.onnx": "not an ONNX model",
        tmp_path / "truncated.onnx": "not a readable ONNX model",
        tmp_path / "head.onnx": "not a readable ONNX model",
        exported("q8_0"): "is a GGUF file",
        _rewrite_metadata(good, tmp_path / "plain.onnx", **{Key.VERSION: None, Key.SPAN_HEAD_WEIGHT: None}):
            "not a qabridge QA model",
        _rewrite_metadata(good, tmp_path / "badhead.onnx", **{Key.SPAN_HEAD_WEIGHT: "[1.0, 2.0]"}): "span head",
        _rewrite_metadata(good, tmp_path / "nan.onnx", **{Key.MAX_SEQ_LEN: "lots"}): "not integers",
        _rewrite_metadata(good, tmp_path / "long.onnx", **{Key.MAX_SEQ_LEN: "1024"}): "exceeds the position table",
    })
    for path, words in cases.items():
        with pytest.raises(ModelError) as e:
            OnnxModel(path)
        assert e.value.code == "invalid_model"
        assert words in e.value.message and str(path) in e.value.message, (path, e.value.message)


def test_export_refuses_bad_arguments(tmp_path, committed_adapter, onnx_exported):
    from qabridge.export.onnx_export import export_onnx

    foreign = tmp_path / "notes.onnx"
    foreign.write_text("mine")
    with pytest.raises(OutputExists):
        export_onnx(committed_adapter, foreign, quantize="none")
    assert foreign.read_text() == "mine"
    with pytest.raises(UsageError) as e:
        export_onnx(committed_adapter, tmp_path / "x.onnx", quantize="int4")
    assert e.value.code == "invalid_request" and e.value.exit_code == 2
    with pytest.raises(UsageError) as e:
        export_onnx(committed_adapter, tmp_path / "x.onnx", quantize="int8", optimize=False)
    assert e.value.code == "invalid_request" and e.value.exit_code == 2
    with pytest.raises(UsageError) as e:
        export_onnx(committed_adapter, tmp_path, quantize="none")
    assert e.value.code == "output_unwritable"
    with pytest.raises(ModelError):
        export_onnx(tmp_path / "no-such-adapter", tmp_path / "y.onnx", quantize="none")


def test_auto_choice_measures_checks_and_caches(tmp_path, monkeypatch, onnx_exported, exported):
    from qabridge.bridge.engine_select import Candidate, candidate_for, choose_engine
    from qabridge.core.gguf_keys import Key

    monkeypatch.setenv("QABRIDGE_CACHE", str(tmp_path / "cache"))
    good = onnx_exported("int8")
    # A candidate that runs fast and answers wrong: the span head's start/end rows swapped and negated.
    from qabridge.bridge.onnx_engine import OnnxModel

    head = OnnxModel(good).span_head
    wrong = _rewrite_metadata(good, tmp_path / "wrong.onnx",
                              **{Key.SPAN_HEAD_WEIGHT: json.dumps((-head.weight[::-1]).ravel().tolist())})
    cands = [Candidate("onnx", onnx_exported("f32"), "f32"), candidate_for(good), candidate_for(exported("q8_0")),
             Candidate("onnx", wrong, "int8")]
    assert cands[1].outtype == "int8" and cands[2] == Candidate("llama.cpp", exported("q8_0"), "q8_0")
    logs: list[str] = []
    choice = choose_engine(cands, n_questions=16, rounds=1, n_threads=2, log=logs.append)
    by = {m.path: m for m in choice.candidates}
    assert not choice.cached and choice.reference == "onnxruntime f32"
    assert by[str(wrong)].passed is False and by[str(wrong)].agreement < 0.5
    assert by[str(onnx_exported("f32"))].agreement == 1.0
    assert by[choice.path].passed and choice.path != str(wrong)
    assert choice.ms_per_window[choice.label] == min(m.ms_per_window for m in choice.candidates if m.passed)
    assert all(m.ms_per_window > 0 for m in choice.candidates)
    # One line saying the stage, then one per candidate measured.
    assert logs[0].startswith("stage 2/3: measuring 4 engines") and len(logs) == 5
    assert sum(m.startswith("auto engine: ") for m in logs[1:]) == 4
    files = list((tmp_path / "cache" / "engine-choice").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["path"] == choice.path
    again = choose_engine(cands, n_questions=16, rounds=1, n_threads=2)
    assert again.cached and again.path == choice.path and again.seconds == 0.0
    assert again.ms_per_window == choice.ms_per_window
    # Another thread count is another machine setting: measured afresh.
    other = choose_engine(cands[:2], n_questions=4, rounds=1, n_threads=1)
    assert not other.cached and len(list((tmp_path / "cache" / "engine-choice").glob("*.json"))) == 2


def test_a_choice_measured_on_a_busy_machine_is_served_but_not_cached(tmp_path, monkeypatch, exported):
    import subprocess
    import sys

    from qabridge.bridge.engine_select import BUSY_SHARE, candidate_for, choose_engine

    monkeypatch.setenv("QABRIDGE_CACHE", str(tmp_path / "cache"))
    cands = [candidate_for(exported("q8_0")), candidate_for(exported("f16"))]
    # Real competition for the cores: one spinning process per core while the rounds run.
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    logs: list[str] = []
    try:
        busy = choose_engine(cands, n_questions=8, rounds=2, n_threads=2, log=logs.append)
    finally:
        for p in spin:
            p.kill()
            p.wait()
    assert busy.busy_share is not None and busy.busy_share > BUSY_SHARE, busy.busy_share
    assert any("not cached" in m for m in logs)
    assert not list((tmp_path / "cache").glob("engine-choice/*.json"))
    idle = choose_engine(cands, n_questions=8, rounds=2, n_threads=2)
    assert not idle.cached and idle.busy_share is not None and idle.busy_share < BUSY_SHARE, idle.busy_share
    assert len(list((tmp_path / "cache").glob("engine-choice/*.json"))) == 1


def test_auto_choice_fails_clearly_when_nothing_agrees(tmp_path, monkeypatch, onnx_exported):
    from qabridge.bridge.engine_select import Candidate, choose_engine
    from qabridge.core.gguf_keys import Key

    monkeypatch.setenv("QABRIDGE_CACHE", str(tmp_path / "cache"))
    good = onnx_exported("f32")
    wrong = _rewrite_metadata(good, tmp_path / "wrong.onnx", **{Key.SPAN_HEAD_BIAS: "[0.0, 0.0]",
                              Key.SPAN_HEAD_WEIGHT: json.dumps([0.0] * 768)})
    with pytest.raises(ModelError) as e:
        choose_engine([Candidate("onnx", wrong, "int8")], reference=Candidate("onnx", good, "f32"),
                      n_questions=8, rounds=1, n_threads=2)
    assert "no candidate engine passed the parity check" in e.value.message
    assert not (tmp_path / "cache" / "engine-choice").exists()


def test_http_answers_equal_eval_with_the_onnx_engine(onnx_exported, dev_examples, tmp_path):
    """`qabridge serve --engine onnx` answers over HTTP exactly what `qabridge eval` computes with that engine."""
    import httpx

    from qabridge.bridge.onnx_engine import onnx_pipeline
    from qabridge.train.evaluate import predict_examples

    from .helpers import start_server

    path = onnx_exported("int8")
    pipe = onnx_pipeline(path)
    try:
        ref = predict_examples(pipe, dev_examples)
    finally:
        pipe.encoder.close()
    s = start_server(path, tmp_path, "--engine", "onnx")
    try:
        info = httpx.get(s.url + "/api/model/info").json()
        assert info["engine"] == "onnxruntime" and info["file"] == str(path)
        assert info["layers"] == 6 and info["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
        for e in dev_examples:
            r = httpx.post(s.url + "/api/qa", json={"question": e.question, "context": e.context}, timeout=60).json()
            assert (r["answer"], r["start"], r["end"]) == (ref[e.id]["text"], ref[e.id]["start"], ref[e.id]["end"]), e.id
            assert r["score"] == pytest.approx(ref[e.id]["score"], abs=1e-4)
    finally:
        assert s.stop() == 0
    from .helpers import DEV_SAMPLE, run_cli

    # `qabridge eval` picks the ONNX engine for an .onnx file and answers the same.
    preds = tmp_path / "preds.json"
    r = run_cli("eval", "--model", str(path), "--data", str(DEV_SAMPLE), "--limit", str(len(dev_examples)), "--json",
                "--predictions", str(preds))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["engine"] == "onnx"
    assert json.loads(preds.read_text()) == {e.id: ref[e.id]["text"] for e in dev_examples}
    # An ONNX file cannot go to llama.cpp: a usage error before the port opens.

    r = run_cli("serve", "--model", str(path), "--engine", "llama.cpp", "--port", "1")
    assert r.returncode == 2 and "ONNX Runtime" in r.stderr


def test_python_api_over_an_onnx_file(onnx_exported, dev_examples):
    import qabridge
    from qabridge.bridge.onnx_engine import onnx_pipeline

    path = onnx_exported("int8")
    ref = onnx_pipeline(path)
    try:
        with qabridge.pipeline(model=path) as qa:
            assert qa.name == "bert-qa.int8"
            for e in dev_examples[:10]:
                got = qa(question=e.question, context=e.context)
                s = ref.predict(e.question, e.context).spans[0]
                assert (got["start"], got["end"]) == (s.start, s.end) and got["answer"] == e.context[s.start : s.end]
            with pytest.raises(UsageError) as ei:
                qa(question=e.question, context=e.context, max_seq_len=4096)
            assert ei.value.code == "sequence_too_long"
        # contexts=2: calls from several threads meet in the engine and share its narrow session.
        with qabridge.pipeline(model=path, contexts=2, threads=2) as qa:
            eng = qa._engine
            assert eng.narrow is not None and qa.model_file.shared  # the embedding table held once
            calls = {"narrow": 0}
            eng.narrow = _Counted(eng.narrow, "narrow", calls, threading.Lock())
            seq = [qa(question=e.question, context=e.context) for e in dev_examples[:16]]
            assert calls["narrow"] == 0  # one call at a time: the wide session
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(4) as ex:
                par = list(ex.map(lambda e: qa(question=e.question, context=e.context), dev_examples[:16]))
            assert [(a["start"], a["end"]) for a in par] == [(a["start"], a["end"]) for a in seq]
            assert calls["narrow"] > 0
        with pytest.raises(UsageError, match="cannot serve"):
            qabridge.pipeline(model=path, engine="llama.cpp")
    finally:
        ref.encoder.close()


def test_concurrent_requests_share_the_narrow_session(onnx_exported, torch_pipe, dev_examples):
    """A request alone runs on the wide session; requests in the engine together run side by side on
    the narrow one (no lock: both inside it at once); the logits do not change."""
    from qabridge.bridge.onnx_engine import OnnxEngine

    wins = _windows(torch_pipe, dev_examples, 4)
    eng = OnnxEngine(onnx_exported("int8"), n_threads=2, n_contexts=2)
    inside, most = [0], [0]
    calls = {"wide": 0, "narrow": 0}
    lock = threading.Lock()
    both_in = threading.Barrier(2, timeout=30)

    class Watched(_Counted):  # also counts calls inside the real session at once
        def run(self, *a, **kw):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            try:
                both_in.wait()  # returns only once the other request is inside as well
                return super().run(*a, **kw)
            finally:
                with lock:
                    inside[0] -= 1

    try:
        # The word-embedding table is held once, by both sessions.
        tables = [v for k, v in eng.file.shared.items() if "word_embeddings" in k]
        assert tables and tables[0].shape()[0] > 30000
        eng.session = _Counted(eng.session, "wide", calls, lock)
        eng.narrow = _Counted(eng.narrow, "narrow", calls, lock)
        alone = eng.logits(wins)
        assert calls == {"wide": 1, "narrow": 0}
        eng.narrow = Watched(eng.narrow.session, "narrow", calls, lock)
        out: list = [None, None]

        def one(i):
            with eng.demand():
                out[i] = eng.logits(wins[:1]) + eng.logits(wins[1:])

        with eng.demand():  # a request already waiting: the two below count as concurrent
            ts = [threading.Thread(target=one, args=(i,)) for i in range(2)]
            [t.start() for t in ts]
            [t.join() for t in ts]
    finally:
        eng.close()
    assert most[0] == 2 and calls["wide"] == 1 and calls["narrow"] == 4
    assert _max_delta(alone, out[0]) < 1e-3 and _max_delta(alone, out[1]) < 1e-3


def test_one_session_when_asked(onnx_exported):
    from qabridge.bridge.onnx_engine import OnnxEngine

    eng = OnnxEngine(onnx_exported("int8"), n_threads=2, n_contexts=1)
    try:
        assert eng.narrow is None
    finally:
        eng.close()
