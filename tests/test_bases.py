"""Named bases beyond the hub: bge-small-en-v1.5 from Maven Central, converted, checked, and a
12-layer model trained, exported (GGUF, ONNX) and served end to end."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from qabridge.errors import ModelError

from .helpers import (
    TRAIN_SAMPLE,
    free_port,
    lazy_exports,
    max_logit_delta,
    qa_windows,
    run_cli,
    start_server,
    torch_and_gguf_logits,
)

BGE = "bge-small-en-v1.5"


def _bases():
    from qabridge.train import bases

    return bases


@pytest.fixture(scope="session")
def bge_jar(bge_dir) -> Path:
    b = _bases()
    jar = b.bases_dir() / "downloads" / b.BASES[BGE].jar.file_name
    assert jar.exists(), "ensure() keeps the verified jar for re-conversion"
    return jar


def test_names_resolve_and_unknown_ones_are_clear():
    from qabridge.paths import OFFLINE_BASE_NAME
    from qabridge.train.model import resolve_base

    b = _bases()
    for name in (BGE, "BAAI/bge-small-en-v1.5", "BGE-Small-EN-v1.5", "bge-small"):
        assert b.lookup(name).key == BGE
    for name in (None, "all-minilm-l6-v2", "all-MiniLM-L6-v2", OFFLINE_BASE_NAME, "default"):
        assert b.lookup(name).key == "all-minilm-l6-v2"
    assert b.lookup("bge-small-en-v1.6") is None and b.lookup("bert-base-uncased") is None
    ref = resolve_base(None)  # the existing default is unchanged: the PyPI package, its recorded name
    assert ref.name == OFFLINE_BASE_NAME and (Path(ref.path) / "model.safetensors").exists()

    r = run_cli("bases", "fetch", "bge-small-en-v1.6")
    assert r.returncode == 4 and "unknown named base" in r.stderr and BGE in r.stderr and "Traceback" not in r.stderr
    r = run_cli("bases", "list", "--json")
    rows = {row["key"]: row for row in json.loads(r.stdout)}
    assert rows[BGE]["layers"] == 12 and rows[BGE]["licence"] == "MIT"
    assert rows[BGE]["url"].startswith("https://repo1.maven.org/maven2/dev/langchain4j/")
    assert rows["all-minilm-l6-v2"]["installed"]


class _WrongJar(http.server.BaseHTTPRequestHandler):
    """A 'mirror' that answers every path with bytes that are not the pinned jar."""

    def do_GET(self):
        body = b"PK\x03\x04 not the jar"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_fetch_failures_are_clear_and_leave_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("QABRIDGE_CACHE", str(cache))

    bogus = tmp_path / "bogus.jar"
    bogus.write_bytes(b"PK not a jar")
    r = run_cli("bases", "fetch", BGE, "--from-file", str(bogus))
    assert r.returncode == 4 and "checksum mismatch" in r.stderr and "Traceback" not in r.stderr

    monkeypatch.setenv("QABRIDGE_MAVEN_URL", f"http://127.0.0.1:{free_port()}/maven2")  # nothing listens
    r = run_cli("bases", "fetch", BGE)
    assert r.returncode == 4 and "cannot download" in r.stderr and "--from-file" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WrongJar)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("QABRIDGE_MAVEN_URL", f"http://127.0.0.1:{srv.server_address[1]}/maven2")
        # Through the command that needs the base, not only `bases fetch`.
        r = run_cli("export", "--embedding", "--base", BGE, "--output", str(tmp_path / "e.gguf"), "--modelfile", "")
    finally:
        srv.shutdown()
    assert r.returncode == 4 and "checksum mismatch" in r.stderr and "Traceback" not in r.stderr, r.stderr
    left = [p for p in cache.rglob("*") if p.is_file()]
    assert left == [], left  # no partial download, no half-converted base
    assert not (tmp_path / "e.gguf").exists()


def test_conversion_matches_onnxruntime(bge_dir, bge_jar):
    """The converted BertModel computes what the jar's ONNX computes (padding and both segments)."""
    import onnxruntime as ort
    import torch
    from transformers import BertModel

    with zipfile.ZipFile(bge_jar) as z:
        sess = ort.InferenceSession(z.read("bge-small-en-v1.5.onnx"), providers=["CPUExecutionProvider"])
    model = BertModel.from_pretrained(str(bge_dir), add_pooling_layer=False).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(3, 96))
    ids[:, 0] = 101
    mask = np.ones_like(ids)
    mask[1, 60:] = 0
    mask[2, 9:] = 0
    types = np.zeros_like(ids)
    types[0, 40:] = 1
    want = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
    with torch.no_grad():
        got = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    assert model.config.num_hidden_layers == 12 and model.config.num_attention_heads == 12
    assert np.abs(want).max() > 1.0  # the comparison means something
    delta = float((np.abs(want - got) * mask[..., None]).max())  # padded rows are undefined in both
    assert delta < 1e-5, delta


def test_conversion_is_reproducible_torch_free_and_checked(bge_dir, bge_jar, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("QABRIDGE_CACHE", str(cache))
    # A second conversion from the jar, in a process where torch and transformers cannot import.
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from qabridge.train.bases import BASES, install\n"
        f"print(install(BASES[{BGE!r}], jar_file={str(bge_jar)!r}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "QABRIDGE_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr[-2000:]
    again = Path(r.stdout.strip())
    assert again == cache / "bases" / BGE
    meta, ref_meta = (json.loads((d / "qabridge-base.json").read_text()) for d in (again, bge_dir))
    assert meta["tensor_digest"] == ref_meta["tensor_digest"] == _bases().BASES[BGE].tensor_digest
    for name in ("model.safetensors", "config.json", "vocab.txt", "tokenizer.json"):
        assert meta["files"][name] == ref_meta["files"][name], name
    assert meta["licence"] == "MIT" and meta["source"]["licence"] == "Apache-2.0"
    assert meta["source"]["sha256"] == _bases().BASES[BGE].jar.sha256
    assert "MIT" in (again / "NOTICE").read_text() and "Apache-2.0" in (again / "NOTICE").read_text()
    # Same vocabulary and ids as the default base: adapters and windows are interchangeable.
    from qabridge.paths import offline_base_dir

    assert (again / "vocab.txt").read_bytes() == (offline_base_dir() / "vocab.txt").read_bytes()

    # A damaged cache is refused with the way out, not loaded.
    from qabridge.train.model import resolve_base

    assert resolve_base(BGE).path == str(again)
    st = again / "model.safetensors"
    data = bytearray(st.read_bytes())
    data[-5] ^= 0xFF
    st.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch.*bases fetch bge-small-en-v1.5 --force"):
        resolve_base("BAAI/bge-small-en-v1.5")
    r = run_cli("bases", "fetch", BGE, "--force", "--from-file", str(bge_jar))
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(st.read_bytes()).hexdigest() == ref_meta["files"]["model.safetensors"]["sha256"]


# -- a 12-layer model end to end ------------------------------------------------------------------
@pytest.fixture(scope="session")
def bge_adapter(tmp_path_factory, bge_dir) -> Path:
    """A LoRA adapter on bge-small, a few real steps on the SQuAD sample (CPU)."""
    from qabridge.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("bge") / "adapter"
    # lr 5e-3: a few steps must move the span head far enough from its init for parity to mean something.
    train(TrainConfig(base=BGE, data=str(TRAIN_SAMPLE), output=str(out), max_steps=4, batch_size=4, max_seq_len=128,
                      doc_stride=32, lora_r=4, lora_alpha=8, lr=5e-3, checkpoint_every=0, device="cpu"), progress=False)
    return out


@pytest.fixture(scope="session")
def bge_exported(tmp_path_factory, bge_adapter):
    return lazy_exports(bge_adapter, tmp_path_factory.mktemp("bge_gguf"), "bge-qa", modelfile=True)


@pytest.fixture(scope="session")
def bge_torch(bge_adapter):
    from qabridge.train.evaluate import torch_pipeline

    return torch_pipeline(bge_adapter)


@pytest.mark.slow
def test_bge_adapter_records_its_base_and_merges_in_numpy(bge_adapter):
    from qabridge.export.merge import lora_merge_supported, merge_adapter_torch, merge_lora_numpy

    acfg = json.loads((bge_adapter / "adapter_config.json").read_text())
    qcfg = json.loads((bge_adapter / "qabridge.json").read_text())
    assert acfg["base_model_name_or_path"] == qcfg["base_model"] == "BAAI/bge-small-en-v1.5"  # a name, not a cache path
    assert lora_merge_supported(bge_adapter)
    fast, ref = merge_lora_numpy(bge_adapter), merge_adapter_torch(bge_adapter)
    assert fast.spec.num_layers == 12 and fast.base_name == "BAAI/bge-small-en-v1.5"
    assert fast.tensors.keys() == ref.tensors.keys()
    worst = max(float(np.abs(fast.tensors[k] - ref.tensors[k]).max()) for k in ref.tensors)
    assert worst < 1e-5, worst


@pytest.mark.slow
@pytest.mark.parametrize("outtype, tol", [("f32", 0.01), ("f16", 0.01), ("q8_0", 0.05)])  # measured 0.002, 0.002, 0.018
def test_bge_gguf_logits_match_torch(bge_torch, bge_exported, dev_examples, outtype, tol):
    from qabridge.core.model_file import ModelFile

    path = bge_exported(outtype)
    mf = ModelFile(path)
    try:
        assert mf.get("bert.block_count") == 12
        assert mf.get("qabridge.base_model") == "BAAI/bge-small-en-v1.5"
    finally:
        mf.close()
    assert "MIT (BAAI/bge-small-en-v1.5)" in (path.parent / f"Modelfile.{outtype}").read_text()
    wins = qa_windows(bge_torch.tokenizer, dev_examples, bge_torch.spec, 8)
    t, g = torch_and_gguf_logits(bge_torch.encoder.model, path, wins)
    spread = max(float(np.ptp(x[0])) for x in t)
    assert spread > 0.5  # the span head has moved off its init (0.77 measured): the comparison means something
    delta = max_logit_delta(t, g)
    assert delta <= tol, (outtype, delta, spread)


@pytest.mark.slow
def test_bge_full_model_dir_parity(bge_dir, tmp_path, dev_examples):
    """The base's own weights with a large random head: f32 GGUF vs torch, no LoRA in between."""
    import shutil

    import torch
    from transformers import BertForQuestionAnswering

    from qabridge.core.tokenizer import WordPieceTokenizer
    from qabridge.core.windows import WindowSpec
    from qabridge.export.run import export

    torch.manual_seed(0)
    d = tmp_path / "bge_qa"
    model = BertForQuestionAnswering.from_pretrained(str(bge_dir)).eval()
    with torch.no_grad():
        model.qa_outputs.weight.normal_(0, 0.5)
    model.save_pretrained(d)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(bge_dir / name, d / name)
    out = tmp_path / "bge.f32.gguf"
    export(d, output=out, outtype="f32", modelfile=None)
    wins = qa_windows(WordPieceTokenizer.from_hf_dir(d), dev_examples, WindowSpec(384, 128, 64), 8)
    t, g = torch_and_gguf_logits(model, out, wins)
    assert max(float(np.ptp(x[0])) for x in t) > 5.0
    # As for the 6-layer tiny model (tests/test_export.py): 0.036 measured with logits spanning ~13.
    assert max_logit_delta(t, g) <= 0.05


@pytest.mark.slow
def test_bridge_serves_the_12_layer_model(bge_exported, bge_torch, dev_examples, tmp_path):
    import httpx

    from qabridge.core.model_file import ModelFile

    s = start_server(bge_exported("q8_0"), tmp_path)
    try:
        info = httpx.get(s.url + "/api/model/info", timeout=30).json()
        e = dev_examples[0]
        r = httpx.post(s.url + "/api/qa", json={"question": e.question, "context": e.context}, timeout=60)
    finally:
        s.stop()
    assert info["metadata"]["qabridge.base_model"] == info["base_model"] == "BAAI/bge-small-en-v1.5"
    assert info["layers"] == 12
    mf = ModelFile(info["file"])
    try:
        assert mf.get("bert.block_count") == 12
    finally:
        mf.close()
    assert r.status_code == 200, r.text
    body = r.json()
    answer = body["answers"][0] if "answers" in body else body
    assert 0 <= answer["start"] < answer["end"] <= len(e.context)
    assert e.context[answer["start"]:answer["end"]] == answer["answer"]


@pytest.mark.slow
def test_bge_onnx_export_matches_torch(bge_adapter, bge_torch, dev_examples, tmp_path):
    from qabridge.bridge.onnx_engine import OnnxEngine
    from qabridge.export.onnx_export import export_onnx

    out = tmp_path / "bge-qa.f32.onnx"
    export_onnx(bge_adapter, out, quantize="none")
    wins = qa_windows(bge_torch.tokenizer, dev_examples, bge_torch.spec, 8)
    eng = OnnxEngine(out)
    try:
        o = eng.logits(wins)
    finally:
        eng.close()
    assert max_logit_delta(bge_torch.encoder.logits(wins), o) <= 0.01
