"""Many LoRA adapters served over one copy of their base (``qabridge serve --adapter NAME=DIR``).

The base encoder is loaded once, into llama.cpp (a base GGUF) or, under ``--engine openvino``,
OpenVINO (a base IR compiled with LoRA inputs: bridge/openvino_lora.py); each adapter is a LoRA
GGUF (a few MB) applied at run time, switched per request, and its own span head (in numpy, like
every model's). A request's ``model`` picks the adapter by name.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qabridge.core.gguf_keys import Key
from qabridge.core.hashing import adapter_hash, sha256_file
from qabridge.core.model_file import ModelFile, SpanHead
from qabridge.core.pipeline import QAPipeline
from qabridge.core.windows import Window
from qabridge.errors import ModelError, UsageError

from .llama_engine import LlamaCppEngine

log = logging.getLogger("qabridge.bridge")

ENGINE_NAME = "llama.cpp+lora"
#: Engines that apply adapters at run time (``--engine``; auto: the faster as measured, adapter_engine).
ADAPTER_ENGINES = ("llama.cpp", "openvino")


@dataclass(frozen=True)
class AdapterSpec:
    """One ``--adapter`` value: the name requests use and an adapter directory or LoRA GGUF."""

    name: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> AdapterSpec:
        name, sep, path = text.partition("=")
        if not sep:
            name, path = "", text
        p = Path(path)
        if not p.exists():
            raise UsageError(f"--adapter {text}: {p} does not exist")
        if p.is_dir() and not (p / "adapter_config.json").exists():
            raise UsageError(f"--adapter {text}: {p} is not an adapter directory (no adapter_config.json)")
        if p.is_file() and not p.name.endswith(".gguf"):
            raise UsageError(f"--adapter {text}: {p} is neither an adapter directory nor a LoRA GGUF")
        return cls(name or (p.name.removesuffix(".gguf").removesuffix(".lora") if p.is_file() else p.name), p)

    def base_name(self) -> str:
        """The base this adapter was trained over, as its files name it."""
        if self.path.is_dir():
            from qabridge.train.model import read_adapter

            acfg, qcfg = read_adapter(self.path)
            return str(qcfg.get("base_model") or acfg.get("base_model_name_or_path") or "")
        f = ModelFile(self.path)
        if not f.is_lora:
            raise UsageError(f"--adapter {self.name}={self.path}: a full model, not a LoRA GGUF (serve it with --model)")
        return f.base_model or ""


def check_bases(specs: list[AdapterSpec], served_base: str | None) -> str:
    """The one base every adapter must share (``served_base``, else the first adapter's); refuses
    an adapter trained over another base, naming both."""
    if not specs:
        return served_base or ""
    base = served_base or specs[0].base_name()
    names = set()
    for s in specs:
        b = s.base_name()
        if b != base:
            raise UsageError(f"--adapter {s.name}: trained over {b!r}, but the served base is {base!r}; "
                             "adapters share one base (serve a model of that base with --model)")
        if s.name in names:
            raise UsageError(f"two --adapter values are named {s.name!r}")
        names.add(s.name)
    return base


def lora_file(spec: AdapterSpec, *, log_fn=None) -> Path:
    """The adapter as a LoRA GGUF: the file given, or its directory exported once (cached by hash)."""
    if spec.path.is_file():
        return spec.path
    from qabridge.export.run import export_lora
    from qabridge.paths import cache_dir

    out = cache_dir() / "models" / f"lora-{adapter_hash(spec.path)[:16]}.v2.lora.gguf"
    if not out.exists():
        if log_fn:
            log_fn(f"building the LoRA GGUF of {spec.path} -> {out}")
        export_lora(spec.path, output=out, name=spec.name)
    return out


class AdapterEncoder:
    """One adapter over a shared base engine: what a served model's ``engine`` is for an adapter."""

    def __init__(self, base, file: ModelFile):
        """``base``: a LlamaCppEngine or an OpenVinoLoraEngine (both encode with ``adapter=``)."""
        self.base = base
        self.name = base.name if base.name.endswith("+lora") else ENGINE_NAME
        self.file = file
        self.head: SpanHead = file.span_head
        if file.hidden_size != base.n_embd or file.num_layers != base.file.num_layers:
            raise ModelError(f"{file.path}: shaped for another base ({file.num_layers} layers x {file.hidden_size}) "
                             f"than {base.file.path.name}")
        want, have = file.get(Key.BASE_SHA256), base.file.get(Key.BASE_SHA256)
        if want and have and want != have:
            raise ModelError(f"{file.path}: made for a base with weights {want[:12]}..., not {base.file.path.name} ({have[:12]}...)")
        self.handle = base.load_adapter(file.path)
        self.n_positions = base.n_positions
        self.n_ctx = getattr(base, "n_ctx", base.n_positions)

    @property
    def base_path(self) -> Path:
        return self.base.file.path

    def hidden_states(self, ids: np.ndarray) -> np.ndarray:
        return self.base.hidden_states(ids, adapter=self.handle)

    def logits(self, windows: list[Window], deadline: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.base.logits(windows, deadline, adapter=self.handle, head=self.head)

    @contextmanager
    def demand(self):
        with self.base.demand():
            yield

    def close(self) -> None:
        """The base (and the adapters loaded over it) is closed once, by whoever loaded it."""


def openvino_precision(outtype: str) -> str:
    """The OpenVINO base precision for a GGUF ``--default-outtype``: f32 stays f32, the rest bf16
    where the CPU has bf16 kernels, else f32. Never int8: NNCF's activation ranges, calibrated on
    the base, clip what an adapter changes (the committed adapter over an int8 base answered 85 of
    200 SQuAD dev questions as its merged int8 model, against 199 over bf16 and 200 over f32)."""
    from .openvino_engine import has_bf16_kernels

    if outtype == "f32":
        return "f32"
    return "bf16" if has_bf16_kernels() else "f32"


def adapter_engine(choice) -> tuple[str, str]:
    """``(engine, outtype)`` for adapters under ``--engine auto``, by measurement: the faster of the
    runtime-LoRA engines among the candidates ``choice`` (the built-in model's EngineChoice, timed on
    this CPU) measured and kept (llama.cpp's GGUF types, OpenVINO bf16/f32; int8 and ONNX Runtime
    cannot apply adapters); llama.cpp where nothing was measured. The candidates are merged
    models: runtime LoRA adds its cost to either engine's time."""
    best = None
    for m in getattr(choice, "candidates", None) or []:
        lora = m.engine == "llama.cpp" or (m.engine == "openvino" and m.outtype in ("bf16", "f32"))
        if lora and m.passed and m.ms_per_window is not None and (best is None or m.ms_per_window < best.ms_per_window):
            best = m
    return ("llama.cpp", "auto") if best is None else (best.engine, best.outtype)


def load_adapters(specs: list[AdapterSpec], base_name: str, *, outtype: str = "auto", n_threads=None,
                  flash_attn: bool = True, n_contexts: int = 1, log_fn=None, engine: str = "llama.cpp"):
    """(the shared base engine, [(name, AdapterEncoder, QAPipeline, sha256)]) for ``specs``;
    ``engine``: llama.cpp (``auto`` too) or openvino."""
    files = [lora_file(s, log_fn=log_fn) for s in specs]
    if engine == "openvino":
        from qabridge.export.run import openvino_base

        from .openvino_lora import OpenVinoLoraEngine

        base = OpenVinoLoraEngine(openvino_base(base_name, openvino_precision(outtype), log=log_fn), files,
                                  n_threads=n_threads, n_contexts=n_contexts)
    elif engine in ("llama.cpp", "auto"):
        from qabridge.export.run import plain_base

        base = LlamaCppEngine(ModelFile(plain_base(base_name, outtype, log=log_fn), require_qa=False),
                              n_threads=n_threads, flash_attn=flash_attn, n_contexts=n_contexts)
    else:
        raise UsageError(f"--adapter runs in {' or '.join(ADAPTER_ENGINES)}, not {engine}")
    out = []
    try:
        for s, f in zip(specs, files):
            enc, pipe, sha = adapter_pipeline(base, f)
            out.append((s.name, enc, pipe, sha))
    except BaseException:
        base.close()
        raise
    return base, out


def adapter_pipeline(engine, lora_path: Path) -> tuple[AdapterEncoder, QAPipeline, str]:
    """The LoRA GGUF at ``lora_path`` over ``engine``: its encoder, its pipeline and its sha256."""
    f = ModelFile(lora_path)
    if not f.is_lora:
        raise ModelError(f"{lora_path}: not a LoRA GGUF from `qabridge export --lora-only`")
    enc = AdapterEncoder(engine, f)
    if str(f.get(Key.LOWERCASE)).lower() != str(engine.file.get(Key.LOWERCASE)).lower():
        raise ModelError(f"{f.path}: lowercases differently from its base {engine.file.path.name}")
    # The vocabulary is the base's (a LoRA GGUF does not repeat it): one tokenizer for all.
    pipe = QAPipeline(engine.file.tokenizer, enc, f.window_spec, max_answer_len=f.max_answer_len)
    return enc, pipe, sha256_file(f.path)
