"""Merge a LoRA adapter into its base and split encoder tensors from the span head."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qabridge.errors import ModelError

from .gguf_writer import EncoderSpec


@dataclass
class MergedModel:
    tensors: dict[str, np.ndarray]  # HF encoder names without the "bert." prefix
    spec: EncoderSpec
    span_weight: np.ndarray | None
    span_bias: np.ndarray | None
    base_name: str
    qa_config: dict


_DROP_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids")


def encoder_tensors(state: dict) -> dict[str, np.ndarray]:
    out = {}
    for k, v in state.items():
        name = k[5:] if k.startswith("bert.") else k
        if name.startswith(_DROP_PREFIXES) or name.startswith("qa_outputs."):
            continue
        out[name] = v.detach().float().cpu().numpy() if hasattr(v, "detach") else np.asarray(v, np.float32)
    return out


def merge_adapter(adapter_dir: str | os.PathLike, *, base: str | None = None) -> MergedModel:
    from qabridge.core.tokenizer import WordPieceTokenizer
    from qabridge.train.model import load_config, load_for_inference, tokenizer_dir

    model, ref, qcfg = load_for_inference(adapter_dir, device="cpu", base=base)
    if model.config.model_type != "bert":
        raise ModelError(f"{adapter_dir}: base is {model.config.model_type!r}; GGUF export supports BERT only")
    state = model.state_dict()
    head_w = state.get("qa_outputs.weight")
    head_b = state.get("qa_outputs.bias")
    if head_w is None:
        raise ModelError(f"{adapter_dir}: merged model has no qa_outputs span head")
    tok_dir = Path(adapter_dir) if (Path(adapter_dir) / "vocab.txt").exists() else tokenizer_dir(ref)
    tok = WordPieceTokenizer.from_hf_dir(tok_dir)
    if ref.name and Path(ref.path).exists():
        load_config(ref)  # re-checks the family with a clear message
    spec = EncoderSpec.from_config(model.config.to_dict(), tok.vocab, tok.lowercase)
    return MergedModel(
        encoder_tensors(state),
        spec,
        head_w.detach().float().numpy(),
        head_b.detach().float().numpy(),
        ref.name,
        qcfg,
    )


def load_plain_encoder(base: str | None = None) -> MergedModel:
    """A base encoder without a span head (for ``--embedding``: a pooled embedding model)."""
    from safetensors.numpy import load_file

    from qabridge.core.tokenizer import WordPieceTokenizer
    from qabridge.train.model import load_config, resolve_base

    ref = resolve_base(base)
    cfg = load_config(ref)
    d = Path(ref.path)
    st = d / "model.safetensors"
    if not st.exists():
        raise ModelError(f"{d}: no model.safetensors")
    state = load_file(str(st))
    tensors = {}
    for k, v in state.items():
        name = k[5:] if k.startswith("bert.") else k
        if name.startswith(_DROP_PREFIXES) or name.startswith("qa_outputs."):
            continue
        tensors[name] = v.astype(np.float32)
    tok = WordPieceTokenizer.from_hf_dir(d)
    return MergedModel(tensors, EncoderSpec.from_config(cfg.to_dict(), tok.vocab, tok.lowercase), None, None, ref.name, {})
