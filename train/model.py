"""Base models and adapters: resolve, check the family, build LoRA/QLoRA, load for inference."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from qabridge.errors import DeviceUnsupported, ModelError

from .bases import ensure as ensure_base
from .bases import lookup as lookup_base

SUPPORTED_MODEL_TYPES = ("bert",)
DEFAULT_TARGET_MODULES = ("query", "key", "value", "dense")
QA_CONFIG = "qabridge.json"  # training/decoding settings saved beside the adapter


@dataclass
class BaseRef:
    """A base model: the name recorded in adapters, and where to load it from."""

    name: str
    path: str  # local directory or hub id


def resolve_base(base: str | None) -> BaseRef:
    """A named base (``qabridge bases``; None: the default), a local HF directory, or a hub id.

    Named bases resolve before directories so an adapter's recorded name (``BAAI/bge-small-en-v1.5``)
    finds the cached conversion, fetching it on first use, instead of going to the hub.
    """
    named = lookup_base(base)
    if named is not None:
        return BaseRef(named.name, str(ensure_base(named)))
    p = Path(base).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(f"{p}: not a model directory (no config.json)")
        return BaseRef(str(p.resolve()), str(p.resolve()))
    if os.sep in base and not base.count("/") == 1:
        raise ModelError(f"{base}: no such model directory")
    return BaseRef(base, base)


def load_config(ref: BaseRef):
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(ref.path)
    except Exception as exc:
        from .bases import BASES

        raise ModelError(
            f"unknown base model {ref.name!r} (named bases: {', '.join(BASES)}; or a local HF directory): "
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None
    if cfg.model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelError(
            f"base model {ref.name!r} is {cfg.model_type!r}, not BERT-family "
            f"(llama.cpp's bert graph needs model_type {'/'.join(SUPPORTED_MODEL_TYPES)})"
        )
    return cfg


def tokenizer_dir(ref: BaseRef) -> str:
    """Directory with vocab.txt/tokenizer.json for a base (downloads via the hub for ids)."""
    p = Path(ref.path)
    if p.exists():
        return str(p)
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(ref.path, allow_patterns=["vocab.txt", "tokenizer*.json", "special_tokens_map.json"])
    except Exception as exc:
        raise ModelError(f"cannot fetch the tokenizer of {ref.name!r}: {exc.__class__.__name__}") from None


def adapter_tokenizer_dir(adapter_dir: str | os.PathLike, ref: BaseRef | None = None) -> str:
    """The tokenizer for an adapter or model directory: its own when it carries one (a full
    fine-tune saves vocab.txt; a QA model directory may hold tokenizer.json), else its base's
    (``ref``, or the base the adapter records)."""
    d = Path(adapter_dir)
    if (d / "vocab.txt").exists() or (d / "tokenizer.json").exists():
        return str(d)
    if ref is None:
        acfg, qcfg = read_adapter(d)
        ref = resolve_base(qcfg.get("base_model") or acfg.get("base_model_name_or_path"))
    return tokenizer_dir(ref)


@functools.cache  # the trainer probes before feature building; loading the model then asks again
def check_quantize(quantize: str, device: str) -> None:
    """Fail at once where bitsandbytes cannot run the requested quantisation here."""
    if quantize == "none":
        return
    try:
        import bitsandbytes as bnb
    except Exception as exc:
        raise DeviceUnsupported(f"--quantize {quantize} needs bitsandbytes, which does not import here ({exc.__class__.__name__}: {exc})") from None
    version = getattr(bnb, "__version__", "?")
    try:
        import torch

        # A tiny quantised layer, forward and backward: what training will ask of the device.
        if quantize == "4bit":
            w = bnb.nn.Linear4bit(64, 64, quant_type="nf4", compute_dtype=torch.float32).to(device)
        else:
            w = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False).to(device)
        x = torch.randn(2, 64, device=device, requires_grad=True)
        w(x).sum().backward()
    except Exception as exc:
        raise DeviceUnsupported(
            f"--quantize {quantize}: bitsandbytes {version} cannot run on device {device!r} "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
        ) from None


def load_qa_model(ref: BaseRef, *, quantize: str = "none", device: str = "cpu"):
    import torch
    from transformers import AutoModelForQuestionAnswering, BitsAndBytesConfig
    from transformers.utils import logging as hf_logging

    load_config(ref)
    kwargs = {}
    if quantize != "none":
        check_quantize(quantize, device)
        if quantize == "4bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.float32,
                llm_int8_skip_modules=["qa_outputs"],
            )
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["qa_outputs"])
        kwargs["device_map"] = {"": device}
    if quantize == "none":
        kwargs["dtype"] = torch.float32  # an fp16 copy of the base still trains in fp32
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the fresh qa_outputs head is expected, not news
    try:
        model = AutoModelForQuestionAnswering.from_pretrained(ref.path, **kwargs)
    except Exception as exc:
        raise ModelError(f"cannot load base model {ref.name!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if quantize == "none":
        model.to(device)
    return model


def read_adapter(adapter_dir: str | os.PathLike) -> tuple[dict, dict]:
    """(adapter_config.json, qabridge.json) of an adapter directory, with clear errors."""
    d = Path(adapter_dir)
    if not d.is_dir():
        raise ModelError(f"{d}: no such adapter directory")
    cfg_file = d / "adapter_config.json"
    full_file = d / "config.json"
    if not cfg_file.exists() and not full_file.exists():
        raise ModelError(f"{d}: not an adapter directory (no adapter_config.json)")
    try:
        acfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {"full_model": True}
        qcfg = json.loads((d / QA_CONFIG).read_text()) if (d / QA_CONFIG).exists() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{d}: unreadable adapter config ({exc})") from None
    return acfg, qcfg


def load_for_inference(adapter_dir: str | os.PathLike, *, device: str = "cpu", base: str | None = None):
    """The merged torch QA model for an adapter (or a full fine-tuned directory)."""
    import torch
    from peft import PeftModel

    d = Path(adapter_dir)
    acfg, qcfg = read_adapter(d)
    if acfg.get("full_model"):
        from transformers import AutoModelForQuestionAnswering

        model = AutoModelForQuestionAnswering.from_pretrained(str(d))
        return model.to(device).eval(), BaseRef(qcfg.get("base_model", str(d)), str(d)), qcfg
    ref = resolve_base(base or qcfg.get("base_model") or acfg.get("base_model_name_or_path"))
    model = load_qa_model(ref, device="cpu")
    try:
        model = PeftModel.from_pretrained(model, str(d))
    except Exception as exc:
        raise ModelError(f"{d}: adapter does not load onto {ref.name!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}") from None
    model = model.merge_and_unload()
    with torch.no_grad():
        model.eval()
    return model.to(device), ref, qcfg
