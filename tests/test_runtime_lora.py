"""Adapters served over one base (issue 34 part 3): LoRA GGUFs applied at run time in llama.cpp,
and in OpenVINO (``--engine openvino``).

Two real adapters over MiniLM (the committed one, and a copy with its LoRA B halved: another
adapter, other answers), each served by ``serve --adapter`` over one f32 base and compared over
HTTP with its own merged f32 export (GGUF, or OpenVINO IR) served beside it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from .helpers import DEV_SAMPLE, run_cli, start_server

N_QUESTIONS = 200


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, committed_adapter) -> dict[str, Path]:
    from safetensors.numpy import load_file, save_file

    d = tmp_path_factory.mktemp("adapters")
    half = d / "half"
    shutil.copytree(committed_adapter, half)
    f = half / "adapter_model.safetensors"
    t = load_file(str(f))
    save_file({k: v * 0.5 if ".lora_B." in k else v for k, v in t.items()}, str(f), metadata={"format": "pt"})
    return {"qa": committed_adapter, "half": half}


@pytest.fixture(scope="module")
def merged(tmp_path_factory, adapters) -> dict[str, Path]:
    from qabridge.export.run import export

    d = tmp_path_factory.mktemp("merged")
    out = {}
    for name, a in adapters.items():
        out[name] = d / f"merged-{name}.gguf"
        export(a, output=out[name], outtype="f32", modelfile=None)
    return out


@pytest.fixture(scope="module")
def bridge(tmp_path_factory, adapters, merged):
    tmp = tmp_path_factory.mktemp("lora-serve")
    argv = ["--model", str(merged["qa"]), "--model", str(merged["half"]), "--default-outtype", "f32", "--contexts", "2"]
    for name, a in adapters.items():
        argv += ["--adapter", f"{name}={a}"]
    s = start_server(None, tmp, argv=argv)
    yield s
    s.stop()


def _questions() -> list[dict]:
    from qabridge.train.squad import load_squad, squad_file

    f = squad_file("dev") or DEV_SAMPLE  # the full dev set where this machine has it
    return [{"question": e.question, "context": e.context} for e in list(load_squad(f))[:N_QUESTIONS]]


def test_lora_gguf_export_is_the_adapter_alone(tmp_path, committed_adapter):
    from qabridge.core.model_file import ModelFile

    # --modelfile into the temp dir: its default (modelfiles/Modelfile.<adapter>) is the repository's own file
    r = run_cli("export", "--adapter", str(committed_adapter), "--lora-only", "--output", str(tmp_path / "qa.lora.gguf"),
                "--modelfile", str(tmp_path / "Modelfile"))
    assert r.returncode == 0, r.stderr
    mf = (tmp_path / "Modelfile").read_text()
    assert "\nFROM " in mf and "\nADAPTER " in mf and "qa.lora.gguf" in mf
    f = ModelFile(tmp_path / "qa.lora.gguf")
    assert f.is_lora and f.span_head.weight.shape == (2, 384)
    assert f.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    size = (tmp_path / "qa.lora.gguf").stat().st_size
    adapter = (committed_adapter / "adapter_model.safetensors").stat().st_size
    # f32 pairs and the span head, no vocabulary (the base's is used): the adapter's size, not a
    # model's (~90 MB in f32).
    assert abs(size - adapter) < 100_000, (size, adapter)
    assert f.get("tokenizer.ggml.tokens") is None


def _against_merged(url: str, merged: dict[str, Path]) -> dict[str, np.ndarray]:
    """Each adapter and its merged model (served by the bridge at ``url``) on the same questions,
    interleaved batch by batch so the engine switches LoRA between them: asserts the same spans and
    that the two adapters answer differently; returns each adapter's score differences."""
    qs = _questions()
    names = {"qa": merged["qa"].stem, "half": merged["half"].stem}
    got: dict[str, list] = {}
    for i in range(0, len(qs), 20):
        for model in ("qa", names["qa"], "half", names["half"]):
            r = httpx.post(url + "/api/qa/batch", json={"qa_pairs": [{**q, "model": model} for q in qs[i:i + 20]]}, timeout=300)
            assert r.status_code == 200, r.text
            got.setdefault(model, []).extend(r.json()["results"])
    diffs = {}
    for adapter, full in names.items():
        a, m = got[adapter], got[full]
        assert len(a) == len(m) == len(qs)
        assert [(x["answer"], x["start"], x["end"]) for x in a] == [(x["answer"], x["start"], x["end"]) for x in m]
        diffs[adapter] = np.abs(np.array([x["score"] for x in a]) - np.array([x["score"] for x in m]))
    # Two different adapters: the halved one answers differently somewhere, so switching is real.
    assert [x["score"] for x in got["qa"]] != [x["score"] for x in got["half"]]
    return diffs


def test_each_adapter_answers_as_its_merged_model(bridge, merged):
    for adapter, diff in _against_merged(bridge.url, merged).items():
        # Not bit-equal: W x + s B (A x) rounds differently from (W + s B A) x, and llama.cpp's GELU
        # reads an f16 table, so a 1e-7 difference at its input can step a value by 1e-3. Measured on
        # a 2-core AMD EPYC (200 SQuAD dev questions): max 1.4e-3, most under 3e-4; spans identical.
        assert diff.max() < 3e-3 and diff.mean() < 3e-4, (adapter, diff.max(), diff.mean())


def test_models_lists_adapters_over_one_base(bridge, adapters):
    body = httpx.get(bridge.url + "/api/models").json()
    by = {m["name"]: m for m in body["models"]}
    assert by["qa"]["source"] == by["half"]["source"] == "adapter"
    assert by["qa"]["engine"] == "llama.cpp+lora"
    assert by["qa"]["adapter_of"] == by["half"]["adapter_of"] and Path(by["qa"]["adapter_of"]).exists()
    assert by["qa"]["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert by["qa"]["file"] != by["half"]["file"] and by["qa"]["sha256"] != by["half"]["sha256"]


def test_unknown_adapter_is_model_not_found(bridge):
    r = httpx.post(bridge.url + "/api/qa", json={"model": "legal", "question": "Who?", "context": "Ada wrote it."})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_adapter_of_another_base_is_refused_at_start_naming_both(tmp_path, committed_adapter):
    other = tmp_path / "other"
    shutil.copytree(committed_adapter, other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "BAAI/bge-small-en-v1.5"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    q = json.loads((other / "qabridge.json").read_text())
    q["base_model"] = "BAAI/bge-small-en-v1.5"
    (other / "qabridge.json").write_text(json.dumps(q))
    r = run_cli("serve", "--port", "1", "--adapter", f"x={other}", timeout=120)
    assert r.returncode == 2, r.stderr
    assert "BAAI/bge-small-en-v1.5" in r.stderr and "sentence-transformers/all-MiniLM-L6-v2" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_adapter_values_are_refused(tmp_path, adapters, merged):
    r = run_cli("serve", "--port", "1", "--adapter", f"x={tmp_path / 'missing'}")
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run_cli("serve", "--port", "1", "--adapter", f"x={merged['qa']}")
    assert r.returncode == 2 and "not a LoRA GGUF" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("serve", "--port", "1", "--engine", "onnx", "--adapter", f"x={adapters['qa']}")
    assert r.returncode == 2 and "--engine onnx cannot apply it" in r.stderr and "Traceback" not in r.stderr


def test_python_pipeline_takes_an_adapter(adapters, merged, dev_examples):
    from qabridge import pipeline
    from qabridge.errors import UsageError

    qs = [{"question": e.question, "context": e.context} for e in list(dev_examples)[:20]]
    with pipeline("bert-qa", adapter=adapters["half"], outtype="f32") as qa, pipeline(merged["half"]) as ref:
        assert qa.source == "adapter" and qa.name == "half"
        got, want = qa(qs), ref(qs)
    assert [(a["answer"], a["start"], a["end"]) for a in got] == [(a["answer"], a["start"], a["end"]) for a in want]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got, want)) < 3e-3
    with pytest.raises(UsageError):
        pipeline("bert-qa", adapter=adapters["half"], engine="onnx")
    if importlib.util.find_spec("openvino") is not None:
        with pipeline("bert-qa", adapter=adapters["half"], engine="openvino", outtype="f32") as qa:
            assert qa.source == "adapter" and qa._engine.name == "openvino+lora"
            got = qa(qs)
        # the merged f32 GGUF in llama.cpp as the reference: same spans, scores within its GELU's 3e-3
        assert [(a["answer"], a["start"], a["end"]) for a in got] == [(a["answer"], a["start"], a["end"]) for a in want]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(got, want)) < 3e-3


# -- the same adapters over one OpenVINO base (serve --engine openvino --adapter) ------------------


@pytest.fixture(scope="module")
def ov_merged(tmp_path_factory, adapters) -> dict[str, Path]:
    pytest.importorskip("openvino", reason="the openvino extra (pip install '.[openvino]'; scripts/setup.sh installs it)")
    from qabridge.export.openvino_export import export_openvino

    d = tmp_path_factory.mktemp("ov-merged")
    out = {}
    for name, a in adapters.items():
        out[name] = d / f"ov-merged-{name}.xml"
        export_openvino(a, out[name], precision="f32")
    return out


@pytest.fixture(scope="module")
def ov_bridge(tmp_path_factory, adapters, ov_merged):
    tmp = tmp_path_factory.mktemp("ov-lora-serve")
    argv = ["--engine", "openvino", "--model", str(ov_merged["qa"]), "--model", str(ov_merged["half"]),
            "--default-outtype", "f32", "--contexts", "2"]
    for name, a in adapters.items():
        argv += ["--adapter", f"{name}={a}"]
    s = start_server(None, tmp, argv=argv)
    yield s
    s.stop()


def test_openvino_adapters_answer_as_their_merged_models(ov_bridge, ov_merged):
    for adapter, diff in _against_merged(ov_bridge.url, ov_merged).items():
        # f32 throughout (no f16 table as in llama.cpp's GELU): W x + s B (A x) against (W + s B A) x
        # differs only by float32 rounding, so the 1e-4 holds.
        assert diff.max() < 1e-4, (adapter, diff.max(), diff.mean())
    by = {m["name"]: m for m in httpx.get(ov_bridge.url + "/api/models").json()["models"]}
    assert by["qa"]["engine"] == by["half"]["engine"] == "openvino+lora"
    assert by["qa"]["adapter_of"] == by["half"]["adapter_of"] and by["qa"]["adapter_of"].endswith(".xml")


def test_auto_puts_adapters_on_the_faster_measured_lora_engine():
    from qabridge.bridge.adapters import adapter_engine
    from qabridge.bridge.engine_select import EngineChoice, Measurement

    def m(engine, outtype, ms, passed=True):
        return Measurement(f"{engine} {outtype}", engine, "x", outtype, ms_per_window=ms, passed=passed)

    # The 2-core AMD EPYC Zen 4's measured choice: ONNX Runtime and int8 cannot apply adapters.
    cands = [m("llama.cpp", "q8_0", 27.4), m("llama.cpp", "bf16", 22.6), m("onnx", "int8", 11.3),
             m("openvino", "bf16", 14.7), m("openvino", "int8", 11.1)]
    choice = EngineChoice("openvino", "x", "int8", "openvino int8", "llama.cpp f32", "AMD EPYC", 2, "k", False, 21.5, cands)
    assert adapter_engine(choice) == ("openvino", "bf16")
    cands[3] = m("openvino", "bf16", 14.7, passed=False)  # disagreed with the reference
    assert adapter_engine(choice) == ("llama.cpp", "bf16")
    assert adapter_engine(None) == ("llama.cpp", "auto")


def test_auto_serves_adapters_beside_the_builtin_on_the_measured_engine(tmp_path, adapters):
    # The built-in model under --engine auto (its choice cached by the other tests' servers) with an
    # adapter: the adapter runs in whichever runtime-LoRA engine measured fastest on this CPU.
    s = start_server(None, tmp_path, argv=["--adapter", f"qa={adapters['qa']}"])
    try:
        health = httpx.get(s.url + "/api/health").json()
        lora = [c for c in health["engine_choice"]["candidates"] if c["passed"] and c["ms_per_window"] is not None
                and (c["engine"] == "llama.cpp" or (c["engine"] == "openvino" and c["outtype"] in ("bf16", "f32")))]
        fastest = min(lora, key=lambda c: c["ms_per_window"])
        by = {m["name"]: m for m in httpx.get(s.url + "/api/models").json()["models"]}
        assert by["qa"]["engine"] == fastest["engine"] + "+lora", (by["qa"], lora)
        r = httpx.post(s.url + "/api/qa", json={"model": "qa", "question": "Who wrote it?", "context": "Ada Lovelace wrote it."})
        assert r.status_code == 200 and "Ada" in r.json()["answer"], r.text
    finally:
        s.stop()
