"""The bridge over real HTTP on loopback, with a real exported model in llama.cpp."""

import concurrent.futures as cf
import json

import httpx
import pytest

from qabridge.train import metrics

from .helpers import start_server


def post(server, path, body, **kw):
    return httpx.post(server.url + path, json=body, timeout=120, **kw)


def assert_error(r, status, code):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return body


def test_health_and_model_info(server, exported):
    from qabridge.core.hashing import sha256_file

    h = httpx.get(server.url + "/api/health").json()
    assert h["status"] == "ok" and h["ready"] and h["engine"] == "llama.cpp"
    info = httpx.get(server.url + "/api/model/info").json()
    assert info["sha256"] == sha256_file(exported("q8_0"))
    assert info["quantization"] == "q8_0" and info["max_seq_len"] == 384 and info["doc_stride"] == 128
    assert info["metadata"]["qabridge.segment_ids"] == "zeros"
    assert info["layers"] == 6 and info["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "qabridge.span_head.weight" not in info["metadata"]
    schema = httpx.get(server.url + "/openapi.json").json()
    assert "/api/qa" in schema["paths"] and "/api/qa/batch" in schema["paths"]


def test_answers_and_offsets_on_squad_questions(server, dev_examples):
    f1s = []
    for e in dev_examples:
        r = post(server, "/api/qa", {"question": e.question, "context": e.context, "top_k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert e.context[body["start"] : body["end"]] == body["answer"]
        for a in body["answers"]:
            assert e.context[a["start"] : a["end"]] == a["answer"]
        assert 0 < body["score"] <= 1 and body["answers"][0]["score"] == body["score"]
        assert [a["score"] for a in body["answers"]] == sorted((a["score"] for a in body["answers"]), reverse=True)
        f1s.append(metrics.score(body["answer"], [a.text for a in e.answers])[1])
    assert sum(f1s) / len(f1s) > 0.75


def test_long_context_answer_in_last_window(server):
    filler = " ".join(f"The committee met on day {i} and discussed routine matters of the archive." for i in range(120))
    context = filler + " The treasure was buried beneath the old lighthouse at Port Amberley."
    r = post(server, "/api/qa", {"question": "Where was the treasure buried?", "context": context})
    body = r.json()
    assert r.status_code == 200 and body["windows"] > 3
    assert context[body["start"] : body["end"]] == body["answer"]
    assert body["start"] > len(filler)  # from the last sentence, the only one about treasure
    assert "Amberley" in body["answer"] or "lighthouse" in body["answer"]


def test_twenty_thousand_words_still_answer(server):
    words = " ".join(["lorem ipsum dolor sit amet consectetur"] * 1650)  # 2 x 9,900 words: ~20k in all
    context = words + " The capital of Freedonia is Zembla City. " + words
    r = post(server, "/api/qa", {"question": "What is the capital of Freedonia?", "context": context})
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == "Zembla City"


def test_batch_with_one_bad_item(server, dev_examples):
    e0, e1 = dev_examples[0], dev_examples[5]
    r = post(server, "/api/qa/batch", {"qa_pairs": [
        {"question": e0.question, "context": e0.context},
        {"question": "", "context": "x"},
        {"question": e1.question, "context": e1.context, "top_k": 2},
        {"context": "no question"},
    ]})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 4
    assert res[0]["answer"] == e0.context[res[0]["start"] : res[0]["end"]]
    assert res[1]["error"]["code"] == "empty_field"
    assert len(res[2]["answers"]) == 2
    assert res[3]["error"]["code"] == "missing_field"


@pytest.mark.parametrize(
    "raw, status, code",
    [
        (b"{not json", 400, "invalid_json"),
        (json.dumps({"context": "c"}).encode(), 422, "missing_field"),
        (json.dumps({"question": "q?", "context": ""}).encode(), 422, "empty_field"),
        (json.dumps({"question": 5, "context": "c"}).encode(), 422, "invalid_type"),
        (json.dumps({"question": "q?", "context": "c", "top_k": 0}).encode(), 422, "out_of_range"),
        (json.dumps({"question": "q?", "context": "c", "top_k": 1000}).encode(), 422, "out_of_range"),
        (json.dumps({"question": "q?", "context": "c", "bogus": 1}).encode(), 422, "unknown_field"),
        (json.dumps({"question": "q?"}).encode(), 400, "missing_context"),
        (json.dumps({"question": "   ", "context": "c"}).encode(), 400, "empty_question"),
        (json.dumps({"question": "why " * 200, "context": "c"}).encode(), 400, "question_too_long"),
        (b'{"question": "q\\ud800?", "context": "c"}', 422, "invalid_unicode"),
        (json.dumps({"question": "q?", "context": "c", "model": "nope"}).encode(), 404, "model_not_found"),
        (json.dumps({"question": "q?", "context": "\u0000\u0001"}).encode(), 400, "empty_context"),
    ],
)
def test_bad_input_gets_a_json_error(server, raw, status, code):
    r = httpx.post(server.url + "/api/qa", content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert_error(r, status, code)


def test_oversized_bodies_and_contexts(server):
    r = httpx.post(server.url + "/api/qa", content=b"x" * 3_000_000, headers={"content-type": "application/json"}, timeout=30)
    assert_error(r, 413, "payload_too_large")
    r = post(server, "/api/qa", {"question": "q?", "context": "word " * 90_000})  # 450k chars < 2 MB body
    assert_error(r, 413, "context_too_long")


def test_odd_unicode_and_control_characters_are_answered(server):
    context = "Zoë\u200b Ångström\u0007 lived in Łódź.\u0000 She studied naïve façades in Genève 🙂."
    r = post(server, "/api/qa", {"question": "Where did Zoë live?", "context": context})
    assert r.status_code == 200, r.text
    b = r.json()
    assert context[b["start"] : b["end"]] == b["answer"] and b["answer"]


def test_unknown_path_and_method(server):
    assert_error(httpx.get(server.url + "/api/nope"), 404, "not_found")
    assert_error(httpx.get(server.url + "/api/qa"), 405, "method_not_allowed")


def test_fifty_concurrent_requests(server, dev_examples):
    items = [dev_examples[i % len(dev_examples)] for i in range(50)]
    expected = {}
    for e in {e.id: e for e in items}.values():
        expected[e.id] = post(server, "/api/qa", {"question": e.question, "context": e.context}).json()["answer"]
    with cf.ThreadPoolExecutor(50) as ex:
        futs = [ex.submit(post, server, "/api/qa", {"question": e.question, "context": e.context}) for e in items]
        results = [f.result() for f in futs]
    assert all(r.status_code == 200 for r in results)
    assert [r.json()["answer"] for r in results] == [expected[e.id] for e in items]
    assert httpx.get(server.url + "/api/health").json()["ready"]


def test_bridge_equals_gguf_eval_on_first_500_dev_questions(server, exported, squad_dev_full):
    from qabridge.bridge.llama_engine import gguf_pipeline
    from qabridge.train.evaluate import predict_examples

    examples = squad_dev_full[:500]
    pipe = gguf_pipeline(exported("q8_0"))
    try:
        ev = predict_examples(pipe, examples)
    finally:
        pipe.encoder.close()
    with cf.ThreadPoolExecutor(4) as ex:
        bodies = list(ex.map(lambda e: post(server, "/api/qa", {"question": e.question, "context": e.context}).json(), examples))
    diff = [(e.id, b["answer"], ev[e.id]["text"]) for e, b in zip(examples, bodies) if (b["start"], b["end"]) != (ev[e.id]["start"], ev[e.id]["end"])]
    assert diff == []


def test_api_key(exported, tmp_path):
    s = start_server(exported("q8_0"), tmp_path, env={"QABRIDGE_API_KEY": "s3cret"})
    try:
        body = {"question": "Who?", "context": "Alice met Bob."}
        assert_error(post(s, "/api/qa", body), 401, "unauthorized")
        assert_error(post(s, "/api/qa", body, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        assert_error(httpx.get(s.url + "/api/model/info"), 401, "unauthorized")
        ok = post(s, "/api/qa", body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["answer"]
        assert httpx.get(s.url + "/api/health").status_code == 200
    finally:
        assert s.stop() == 0


def test_loading_state_answers_503_with_retry_after():
    from starlette.testclient import TestClient

    from qabridge.bridge.config import ServeConfig
    from qabridge.bridge.registry import ModelRegistry
    from qabridge.bridge.routes import create_app

    reg = ModelRegistry(ServeConfig())
    app = create_app(reg.cfg, registry=reg, load_in_background=True)
    reg.load = lambda: None  # stays "loading": the window a real load has, held open
    with TestClient(app) as c:
        r = c.post("/api/qa", json={"question": "q?", "context": "c"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "model_loading"
        assert c.get("/api/health").json()["status"] == "loading"


def test_refuses_remote_bind_without_flag(exported):
    from .helpers import run_cli

    r = run_cli("serve", "--model", str(exported("q8_0")), "--host", "0.0.0.0", "--port", "1")
    assert r.returncode == 2 and "--allow-remote" in r.stderr


def test_serves_several_model_files_side_by_side(exported, tmp_path):
    """Repeated --model: the first is the default, the others answer when a request names them."""
    from qabridge.bridge.registry import model_name

    from .helpers import run_cli

    q8, f32 = exported("q8_0"), exported("f32")
    s = start_server(None, tmp_path, argv=["--model", str(q8), "--model", str(f32)])
    try:
        listed = httpx.get(s.url + "/api/models").json()
        assert listed["default"] == model_name(q8)
        assert [m["name"] for m in listed["models"]] == [model_name(q8), model_name(f32)]
        body = {"question": "Who wrote the notes?", "context": "The notes were written by Ada Lovelace in 1843."}
        a, b = post(s, "/api/qa", body).json(), post(s, "/api/qa", {**body, "model": model_name(f32)}).json()
        assert a["model"] == model_name(q8) and b["model"] == model_name(f32)
        assert a["answer"] == b["answer"] == "Ada Lovelace"
        batch = post(s, "/api/qa/batch", {"qa_pairs": [body, {**body, "model": model_name(f32)}, {**body, "model": "nope"}]})
        assert batch.status_code == 200, batch.text
        results = batch.json()["results"]
        assert [r.get("model") for r in results[:2]] == [model_name(q8), model_name(f32)]
        assert results[2]["error"]["code"] == "model_not_found"
        assert_error(post(s, "/api/qa", {**body, "model": "nope"}), 404, "model_not_found")
    finally:
        assert s.stop() == 0
    # refused before the port opens: two files under one name, a built-in model twice, no file
    for argv, code, needle in (([str(q8), str(q8)], 2, "served as"), (["bert-qa", "bert-qa"], 2, "served as"),
                               ([str(q8), str(tmp_path / "missing.gguf")], 4, "no such model file (built-in models: bert-qa, bert-qa-accurate)")):
        r = run_cli("serve", "--port", "1", *(x for m in argv for x in ("--model", m)))
        assert r.returncode == code and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_serves_a_builtin_model_beside_a_file(exported, tmp_path):
    """A built-in model's name can follow a file: built from its adapter (here as the q8_0 GGUF
    into an empty cache, in the background) and served under its name."""
    from qabridge.bridge.registry import model_name

    q8 = exported("q8_0")
    cache = tmp_path / "cache"
    s = start_server(None, tmp_path, "--engine", "llama.cpp", "--default-outtype", "q8_0",
                     argv=["--model", str(q8), "--model", "bert-qa"], env={"QABRIDGE_CACHE": str(cache)})
    try:
        listed = httpx.get(s.url + "/api/models").json()
        assert listed["default"] == model_name(q8)
        assert [m["name"] for m in listed["models"]] == [model_name(q8), "bert-qa"]
        built = list((cache / "models").glob("default-*.q8_0.gguf"))
        assert len(built) == 1
        body = {"question": "Who wrote the notes?", "context": "The notes were written by Ada Lovelace in 1843."}
        a, b = post(s, "/api/qa", body).json(), post(s, "/api/qa", {**body, "model": "bert-qa"}).json()
        assert b["model"] == "bert-qa" and a["answer"] == b["answer"] == "Ada Lovelace"
        assert abs(a["score"] - b["score"]) < 1e-6  # the same adapter, the same outtype: the same model
        info = httpx.get(s.url + "/api/model/info", params={"model": "bert-qa"}).json()
        assert info["file"].endswith(built[0].name)
    finally:
        assert s.stop() == 0


def test_a_lone_keep_alive_client_is_answered_without_a_thread_hand_off(exported):
    """Worker threads cost one client 0.4-0.8 ms a request; the loop answers it itself only while its
    connection is the only one asking, and short: any other connection goes to a worker."""
    import threading

    from starlette.testclient import TestClient

    from qabridge.bridge.config import ServeConfig
    from qabridge.bridge.registry import ModelRegistry
    from qabridge.bridge.routes import create_app
    from qabridge.bridge.service import INLINE_CHARS

    reg = ModelRegistry(ServeConfig(model_path=exported("q8_0")))
    app = create_app(reg.cfg, registry=reg, load_in_background=False)
    svc = app.state.service
    on_worker: list[bool] = []
    real = svc.answer_sync

    def spy(req, deadline=None):
        on_worker.append(threading.current_thread().name.startswith("qabridge-engine"))
        return real(req, deadline)

    svc.answer_sync = spy
    short = {"question": "Who wrote the notes?", "context": "The notes were written by Ada Lovelace in 1843."}
    long = {**short, "context": "Filler text about other things. " * (INLINE_CHARS // 30) + short["context"]}
    with TestClient(app) as a:
        other = TestClient(app, client=("192.0.2.7", 40000))
        got = [a.post("/api/qa", json=short), a.post("/api/qa", json=short), a.post("/api/qa", json=long),
               a.post("/api/qa", json=short), other.post("/api/qa", json=short), a.post("/api/qa", json=short),
               a.post("/api/qa", json=short)]
    assert on_worker == [True, False, True, False, True, True, False]
    assert all(r.status_code == 200 for r in got)
    shorts = [r.json() for i, r in enumerate(got) if i != 2]
    assert all((s["answer"], s["start"], s["score"]) == (shorts[0]["answer"], shorts[0]["start"], shorts[0]["score"])
               for s in shorts)
    assert shorts[0]["answer"] == "Ada Lovelace" and got[2].json()["answer"] == "Ada Lovelace"
