"""The models a bridge serves: loading them (files and Ollama models), their health, closing them."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from qabridge.core.hashing import sha256_file
from qabridge.core.model_file import ModelFile
from qabridge.core.pipeline import QAPipeline
from qabridge.errors import (
    ModelError,
    ModelLoading,
    ModelNotFound,
    ModelUnavailable,
    OllamaUnavailable,
    QABridgeError,
    UsageError,
)

from .config import ServeConfig
from .llama_engine import LlamaCppEngine, gguf_pipeline

log = logging.getLogger("qabridge.bridge")


@dataclass
class LoadedModel:
    name: str
    file: ModelFile
    engine: LlamaCppEngine
    pipeline: QAPipeline
    sha256: str
    source: str = "file"


def load_model(name: str, path: Path, cfg: ServeConfig, source: str = "file", device: str | None = None) -> LoadedModel:
    """The file in the engine its format needs: ``.onnx`` in ONNX Runtime, ``.xml`` in OpenVINO, GGUF in
    llama.cpp; on ``device`` (default: the configured one; an engine that cannot reach it stays on the
    CPU), behind a WindowBatcher with ``cfg.batch_requests``."""
    from .devices import cuda_available, llama_gpu_offload

    device = device or cfg.device
    if Path(path).suffix == ".onnx":
        from .onnx_engine import onnx_pipeline

        # A wide session for a request alone, a narrow one shared by concurrent requests
        # (docs/performance.md: +18-26% q/s at 8 clients, peak RSS 321 vs 240 MB).
        on = "cuda" if device == "cuda" and cuda_available() else "cpu"
        pipe = onnx_pipeline(path, n_threads=cfg.n_threads, n_contexts=cfg.onnx_sessions, device=on)
    elif Path(path).suffix == ".xml":
        from .openvino_engine import openvino_pipeline

        # As the ONNX engine's two sessions: a multi-stream compilation for concurrent requests.
        pipe = openvino_pipeline(path, n_threads=cfg.n_threads, n_contexts=cfg.onnx_sessions)
    else:
        gpu_layers = -1 if device == "cuda" and llama_gpu_offload() else 0
        pipe = gguf_pipeline(path, n_threads=cfg.n_threads, flash_attn=cfg.flash_attn, n_contexts=cfg.n_contexts,
                             n_gpu_layers=gpu_layers)
    if cfg.batch_requests:
        from .batching import WindowBatcher

        pipe.encoder = WindowBatcher(pipe.encoder, max_wait_ms=cfg.batch_wait_ms)
    return LoadedModel(name, pipe.encoder.file, pipe.encoder, pipe, sha256_file(path), source)


def choose_builtin(cfg: ServeConfig, name: str):
    """A built-in model's file and engine: measured on this CPU among the candidates (cached)."""
    from qabridge.core.builtin import BUILTIN_MODELS

    from .engine_select import choose_default

    if cfg.engine == "llama.cpp":  # one GGUF, no measuring
        from qabridge.export.run import default_model

        return None, default_model(cfg.default_outtype, adapter=BUILTIN_MODELS[name].adapter(), log=log.info)
    choice = choose_default(cfg.engine, cfg.default_outtype, adapter=BUILTIN_MODELS[name].adapter(),
                            n_threads=cfg.n_threads, device=cfg.device, log=log.info)
    log.info("%s engine: %s (%s)", name, choice.label, "cached choice" if choice.cached else f"measured in {choice.seconds:.1f} s")
    return choice, Path(choice.path)


def model_name(path: Path) -> str:
    """A model file's name without its format suffix (``bert-qa.q8_0.gguf`` -> ``bert-qa.q8_0``)."""
    p = Path(path)
    return p.name.removesuffix(p.suffix) if p.suffix in (".gguf", ".onnx", ".xml") else p.name


class ModelRegistry:
    """Loads in the background; ``status()`` and ``pick()`` only read, never load."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.models: dict[str, LoadedModel] = {}
        self.default: str | None = None
        self.state = "loading"
        self.error: str | None = None
        self.ollama = None
        self.watch = None
        self.retriever = None
        self.pending_ollama: list[str] = list(cfg.ollama_models)
        #: EngineChoice per built-in model under --engine auto/onnx.
        self.engine_choices: dict = {}
        self._embed_engine: LlamaCppEngine | None = None
        #: The one base engine every --adapter runs over.
        self.adapter_base: LlamaCppEngine | None = None
        #: Base engines of Ollama models with an ADAPTER, by base blob.
        self.ollama_bases: dict[Path, LlamaCppEngine] = {}
        self._lazy_embedder = None
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------
    def load(self) -> None:
        try:
            if self.cfg.model_path is None and not self.cfg.ollama_models and not self.cfg.builtin_model and not self.cfg.adapters:
                raise UsageError("no model given")
            if self.cfg.builtin_model:
                name = self.cfg.model_name or self.cfg.builtin_model
                self._load_builtin(name, self.cfg.builtin_model)
                self.default = name
            elif self.cfg.model_path is not None:
                name = self.cfg.model_name or model_name(self.cfg.model_path)
                self.models[name] = load_model(name, Path(self.cfg.model_path), self.cfg)
                self.default = name
            for path in self.cfg.more_models:
                name = model_name(path)
                if name in self.models:
                    raise UsageError(f"two models would be served as {name!r}: rename one file")
                self.models[name] = load_model(name, Path(path), self.cfg)
            for name in self.cfg.more_builtins:
                if name in self.models:
                    raise UsageError(f"two models would be served as {name!r}")
                self._load_builtin(name, name)
            if self.cfg.adapters:
                self._load_adapters()
            if self.cfg.ollama_host:
                from .ollama import OllamaClient, OllamaWatch

                self.ollama = OllamaClient(self.cfg.ollama_host, timeout=self.cfg.request_timeout_s)
                # Models Ollama could not give at start are loaded by the watch when it comes back.
                self.watch = OllamaWatch(self.ollama, self.cfg.ollama_poll_s, on_up=self.load_pending_ollama)
                self.watch.start()
                self.load_pending_ollama()
                if not self.models:
                    raise OllamaUnavailable(f"none of the Ollama models could be loaded from {self.ollama.host}")
            self._setup_retriever()
            self.state = "ok"
            served = ", ".join(f"{n} ({Path(getattr(m.file, 'path', n)).name})" for n, m in self.models.items())
            log.info("%sready: serving %s", "stage 3/3: " if self.cfg.builtin_model else "", served)
        except QABridgeError as exc:
            self.state, self.error = "error", exc.message
            log.error("model load failed: %s", exc.message)
        except Exception as exc:  # keep serving health with the reason
            self.state, self.error = "error", f"{exc.__class__.__name__}: {exc}"
            log.exception("model load failed")

    def _load_adapters(self) -> None:
        from .adapters import adapter_engine, load_adapters

        for spec in self.cfg.adapters:
            if spec.name in self.models:
                raise UsageError(f"--adapter {spec.name}: a model is already served under that name")
        engine, outtype = self.cfg.engine, self.cfg.default_outtype
        if engine == "auto" and outtype == "auto":
            engine, outtype = adapter_engine(self.engine_choice)
            log.info("adapters in %s (%s): the faster runtime-LoRA engine of the measured candidates", engine, outtype)
        self.adapter_base, loaded = load_adapters(
            self.cfg.adapters, self.cfg.adapter_base, outtype=outtype, n_threads=self.cfg.n_threads,
            flash_attn=self.cfg.flash_attn, n_contexts=self.cfg.n_contexts, log_fn=log.info, engine=engine)
        for name, enc, pipe, sha in loaded:
            self.models[name] = LoadedModel(name, enc.file, enc, pipe, sha, source="adapter")
        if self.default is None and loaded:
            self.default = loaded[0][0]
        log.info("%d adapter(s) over one base %s", len(loaded), self.adapter_base.file.path.name)

    def _load_builtin(self, served_as: str, builtin: str) -> None:
        choice, path = choose_builtin(self.cfg, builtin)
        if choice is not None:
            self.engine_choices[served_as] = choice
        self.models[served_as] = load_model(served_as, path, self.cfg,
                                            device=choice.device if choice is not None else None)

    @property
    def engine_choice(self):
        """How the default model's engine was chosen (a built-in model under --engine auto/onnx), else None."""
        return self.engine_choices.get(self.default)

    def load_pending_ollama(self) -> None:
        """Load the Ollama models not loaded yet (at start, and again when Ollama comes back)."""
        if self.ollama is None or not self.pending_ollama:
            return
        with self._lock:
            for name in list(self.pending_ollama):
                try:
                    om = self.ollama.show(name)
                except OllamaUnavailable:
                    return  # Ollama away: the watch calls again when it is back
                if om.adapters:
                    self.models[name] = self._load_ollama_adapter(name, om)
                else:
                    self.models[name] = load_model(name, om.blob, self.cfg, source="ollama")
                self.pending_ollama.remove(name)
                if self.default is None:
                    self.default = name

    def _load_ollama_adapter(self, name: str, om) -> LoadedModel:
        """An Ollama model made ``FROM`` a base with an ``ADAPTER``: its adapter blob applied at run
        time over its base blob, one engine per base blob (shared by every such model)."""
        from .adapters import adapter_pipeline

        if len(om.adapters) > 1:
            raise ModelError(f"Ollama model {name!r} has {len(om.adapters)} ADAPTER lines; the bridge applies one")
        engine = self.ollama_bases.get(om.blob)
        if engine is None:
            engine = self.ollama_bases[om.blob] = LlamaCppEngine(
                ModelFile(om.blob, require_qa=False), n_threads=self.cfg.n_threads, flash_attn=self.cfg.flash_attn,
                n_contexts=self.cfg.n_contexts)
        enc, pipe, sha = adapter_pipeline(engine, om.adapters[0])
        log.info("Ollama model %s: adapter %s over base %s", name, om.adapters[0].name, om.blob.name)
        return LoadedModel(name, enc.file, enc, pipe, sha, source="ollama")

    def _setup_retriever(self) -> None:
        """Ollama's embedding model if given; else (and while Ollama is away) a local one: the given
        embedding GGUF, else the offline base as a sentence embedder (built on first use), and the
        QA model's own pooled states only when neither exists."""
        from qabridge.paths import offline_base_dir

        from .retrieval import LazyLocalEmbedder, LocalEmbedder, OllamaEmbedder, Retriever

        primary = None
        if self.ollama and self.cfg.embedding_model:
            if self.watch is None or self.watch.up:  # a model Ollama cannot embed with fails at start, not per request
                self.ollama.embedding_pooling(self.cfg.embedding_model)
            primary = OllamaEmbedder(self.ollama, self.cfg.embedding_model)
        fallback = None
        if self.cfg.embedding_gguf is not None:
            mf = ModelFile(self.cfg.embedding_gguf, require_qa=False)
            self._embed_engine = LlamaCppEngine(mf, n_threads=self.cfg.n_threads, flash_attn=self.cfg.flash_attn)
            fallback = LocalEmbedder(self._embed_engine, mf.tokenizer, mf.path.name)
        elif self.cfg.default_embedder and offline_base_dir() is not None:
            from qabridge.export.run import default_embedder

            fallback = self._lazy_embedder = LazyLocalEmbedder(lambda: default_embedder(log=log.info), "minilm-embed",
                                                               n_threads=self.cfg.n_threads)
        elif self.default in self.models:
            m = self.models[self.default]
            fallback = LocalEmbedder(m.engine, m.file.tokenizer, m.file.path.name)
        self.retriever = Retriever(primary, fallback, self.watch)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        for m in self.models.values():
            m.engine.close()
        if self.adapter_base is not None:
            self.adapter_base.close()
        for engine in self.ollama_bases.values():
            engine.close()
        if self._embed_engine is not None:
            self._embed_engine.close()
        if self._lazy_embedder is not None:
            self._lazy_embedder.close()

    # -- reading ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state == "ok" and self.default in self.models

    def status(self) -> str:
        if self.state != "ok":
            return self.state
        if self.watch is not None and (not self.watch.up or self.pending_ollama):
            return "degraded"
        return "ok"

    def pick(self, name: str | None) -> LoadedModel:
        if self.state == "loading":
            raise ModelLoading("the model is still loading")
        if self.state == "error" and not self.models:
            raise ModelUnavailable(f"no model could be loaded: {self.error}")
        key = name or self.default
        if key not in self.models:
            raise ModelNotFound(f"unknown model {name!r}; see GET /api/models")
        return self.models[key]
