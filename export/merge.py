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


def read_local_base(ref) -> tuple[dict, dict[str, np.ndarray]]:
    """``(config.json, encoder tensors in float32)`` of a base on disk, read without torch or
    transformers, so a serving install can build the default model and embedder."""
    import json

    from safetensors.numpy import load_file

    d = Path(ref.path)
    if not (d / "model.safetensors").exists() or not (d / "config.json").exists():
        raise ModelError(f"{ref.name}: base has no local model.safetensors/config.json")
    cfg = json.loads((d / "config.json").read_text())
    if cfg.get("model_type") != "bert":
        raise ModelError(f"base model {ref.name!r} is {cfg.get('model_type')!r}, not BERT-family (GGUF export supports BERT only)")
    return cfg, encoder_tensors(load_file(str(d / "model.safetensors")))


def merge_adapter(adapter_dir: str | os.PathLike, *, base: str | None = None) -> MergedModel:
    """The adapter merged into its base: in numpy for plain LoRA adapters (no torch needed, so a
    serving install can build the default model), through peft otherwise."""
    if lora_merge_supported(adapter_dir, base=base):
        return merge_lora_numpy(adapter_dir, base=base)
    return merge_adapter_torch(adapter_dir, base=base)


_LORA_PREFIX = "base_model.model."


def lora_merge_supported(adapter_dir: str | os.PathLike, *, base: str | None = None) -> bool:
    """Plain LoRA (no DoRA, no per-module rank or alpha) over a base with local safetensors."""
    from qabridge.train.bases import lookup
    from qabridge.train.model import read_adapter, resolve_base

    d = Path(adapter_dir)
    if not (d / "adapter_model.safetensors").exists():
        return False
    acfg, qcfg = read_adapter(d)
    name = base or qcfg.get("base_model") or acfg.get("base_model_name_or_path")
    if lookup(name) is not None:
        ref = resolve_base(name)  # a named base that cannot be fetched: report it once, not download twice
    else:
        try:
            ref = resolve_base(name)
        except ModelError:
            return False  # the torch path reports it
    if not (Path(ref.path) / "model.safetensors").exists():
        return False
    return (
        acfg.get("peft_type") == "LORA"
        and not acfg.get("use_dora")
        and not acfg.get("rank_pattern")
        and not acfg.get("alpha_pattern")
        and not acfg.get("fan_in_fan_out")
        and not acfg.get("layer_replication")
        and acfg.get("bias", "none") == "none"
    )


@dataclass
class LoraPairs:
    """A plain LoRA adapter read without torch: its pairs by base module, and what it needs."""

    pairs: dict[str, tuple[np.ndarray, np.ndarray]]  # "encoder.layer.0.attention.self.query" -> (A [r, in], B [out, r])
    scale: float  # alpha / r (alpha / sqrt(r) for rsLoRA)
    rank: int
    base_tensors: dict[str, np.ndarray]
    spec: EncoderSpec
    span_weight: np.ndarray
    span_bias: np.ndarray
    base_name: str
    base_dir: Path
    qa_config: dict


def read_lora(adapter_dir: str | os.PathLike, *, base: str | None = None) -> LoraPairs:
    """The LoRA pairs of a plain LoRA adapter, checked against its base's safetensors."""
    from safetensors.numpy import load_file

    from qabridge.core.tokenizer import WordPieceTokenizer
    from qabridge.train.model import read_adapter, resolve_base

    d = Path(adapter_dir)
    acfg, qcfg = read_adapter(d)
    ref = resolve_base(base or qcfg.get("base_model") or acfg.get("base_model_name_or_path"))
    bdir = Path(ref.path)
    cfg, tensors = read_local_base(ref)
    lora = load_file(str(d / "adapter_model.safetensors"))
    r = int(acfg["r"])
    scale = float(acfg["lora_alpha"]) / (r**0.5 if acfg.get("use_rslora") else r)
    head_w = head_b = None
    pairs = {}
    for key, a in lora.items():
        name = key.removeprefix(_LORA_PREFIX)
        name = name[5:] if name.startswith("bert.") else name
        if name.startswith("qa_outputs."):
            field = name.removeprefix("qa_outputs.").removeprefix("modules_to_save.default.")
            if field == "weight":
                head_w = a.astype(np.float32)
            elif field == "bias":
                head_b = a.astype(np.float32)
            continue
        if not name.endswith(".lora_A.weight"):
            if ".lora_B." in name:
                continue
            raise ModelError(f"{d}: adapter tensor {key} is not LoRA (use the torch merge)")
        module = name.removesuffix(".lora_A.weight")
        if module.startswith(_DROP_PREFIXES):
            continue
        b = lora.get(key.replace(".lora_A.weight", ".lora_B.weight"))
        target = module + ".weight"
        if b is None or target not in tensors:
            raise ModelError(f"{d}: LoRA pair for {module} does not match the base {ref.name!r}")
        a, b = a.astype(np.float32), b.astype(np.float32)
        w = tensors[target]
        if (b.shape[0], a.shape[1]) != w.shape or a.shape[0] != b.shape[1]:
            raise ModelError(f"{d}: LoRA for {module} is {(b.shape[0], a.shape[1])}, the base weight is {w.shape}")
        pairs[module] = (a, b)
    if head_w is None or head_b is None:
        raise ModelError(f"{adapter_dir}: adapter has no qa_outputs span head")
    tok_dir = d if (d / "vocab.txt").exists() else bdir
    tok = WordPieceTokenizer.from_hf_dir(tok_dir)
    return LoraPairs(pairs, scale, r, tensors, EncoderSpec.from_config(cfg, tok.vocab, tok.lowercase), head_w, head_b,
                     ref.name, bdir, qcfg)


def merge_lora_numpy(adapter_dir: str | os.PathLike, *, base: str | None = None) -> MergedModel:
    """W + (alpha / r) * B @ A for every LoRA pair, on the base's safetensors, in float32."""
    lp = read_lora(adapter_dir, base=base)
    tensors = lp.base_tensors
    for module, (a, b) in lp.pairs.items():
        tensors[module + ".weight"] = tensors[module + ".weight"] + (b @ a) * lp.scale
    return MergedModel(tensors, lp.spec, lp.span_weight, lp.span_bias, lp.base_name, lp.qa_config)


def merge_adapter_torch(adapter_dir: str | os.PathLike, *, base: str | None = None) -> MergedModel:
    from qabridge.core.tokenizer import WordPieceTokenizer
    from qabridge.train.model import adapter_tokenizer_dir, load_config, load_for_inference

    model, ref, qcfg = load_for_inference(adapter_dir, device="cpu", base=base)
    if model.config.model_type != "bert":
        raise ModelError(f"{adapter_dir}: base is {model.config.model_type!r}; GGUF export supports BERT only")
    state = model.state_dict()
    head_w = state.get("qa_outputs.weight")
    head_b = state.get("qa_outputs.bias")
    if head_w is None:
        raise ModelError(f"{adapter_dir}: merged model has no qa_outputs span head")
    tok = WordPieceTokenizer.from_hf_dir(adapter_tokenizer_dir(adapter_dir, ref))
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
    from qabridge.core.tokenizer import WordPieceTokenizer
    from qabridge.train.model import resolve_base

    ref = resolve_base(base)
    cfg, tensors = read_local_base(ref)
    tok = WordPieceTokenizer.from_hf_dir(Path(ref.path))
    return MergedModel(tensors, EncoderSpec.from_config(cfg, tok.vocab, tok.lowercase), None, None, ref.name, {})
