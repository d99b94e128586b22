"""Many LoRA adapters served over one copy of their base (``qabridge serve --adapter NAME=DIR``).

The base encoder is loaded once into llama.cpp; each adapter is a LoRA GGUF (a few MB) that
llama.cpp applies at run time, switched per request on the context that encodes it, and its own
span head (in numpy, like every model's). A request's ``model`` picks the adapter by name.
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

    name = ENGINE_NAME

    def __init__(self, base: LlamaCppEngine, file: ModelFile):
        self.base = base
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
        self.n_ctx = base.n_ctx

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

    def thread_shares(self) -> list[int]:
        return self.base.thread_shares()

    @property
    def n_contexts(self) -> int:
        return self.base.n_contexts

    def close(self) -> None:
        """The base (and the adapters loaded over it) is closed once, by whoever loaded it."""


def load_adapters(specs: list[AdapterSpec], base_name: str, *, outtype: str = "auto", n_threads=None,
                  flash_attn: bool = True, n_contexts: int = 1, log_fn=None):
    """(the shared base engine, [(name, AdapterEncoder, QAPipeline, sha256)]) for ``specs``."""
    from qabridge.export.run import plain_base

    base_path = plain_base(base_name, outtype, log=log_fn)
    engine = LlamaCppEngine(ModelFile(base_path, require_qa=False), n_threads=n_threads, flash_attn=flash_attn,
                            n_contexts=n_contexts)
    out = []
    try:
        for s in specs:
            enc, pipe, sha = adapter_pipeline(engine, lora_file(s, log_fn=log_fn))
            out.append((s.name, enc, pipe, sha))
    except BaseException:
        engine.close()
        raise
    return engine, out


def adapter_pipeline(engine: LlamaCppEngine, lora_path: Path) -> tuple[AdapterEncoder, QAPipeline, str]:
    """The LoRA GGUF at ``lora_path`` over ``engine``: its encoder, its pipeline and its sha256."""
    f = ModelFile(lora_path)
    if not f.is_lora:
        raise ModelError(f"{lora_path}: not a LoRA GGUF from `qabridge export --lora-only`")
    enc = AdapterEncoder(engine, f)
    if f.get(Key.LOWERCASE) != engine.file.get(Key.LOWERCASE):
        raise ModelError(f"{f.path}: lowercases differently from its base {engine.file.path.name}")
    # The vocabulary is the base's (a LoRA GGUF does not repeat it): one tokenizer for all.
    pipe = QAPipeline(engine.file.tokenizer, enc, f.window_spec, max_answer_len=f.max_answer_len)
    return enc, pipe, sha256_file(f.path)
