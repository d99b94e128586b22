"""What `qabridge serve` was asked to do: models, limits, security. Plain data, no behaviour."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from qabridge.core.builtin import DEFAULT_BUILTIN

#: The name the built-in default model is served under (its file hash is in /api/model/info).
DEFAULT_MODEL_NAME = DEFAULT_BUILTIN


def default_contexts() -> int:
    """llama.cpp contexts (requests encoded at once) when not given: up to 4, one per core."""
    return min(4, os.cpu_count() or 1)


def env_api_key() -> str | None:
    return os.environ.get("QABRIDGE_API_KEY") or None


@dataclass
class ServeConfig:
    model_path: Path | None = None
    #: Name the model file is served under (default: the file name without ``.gguf``).
    model_name: str | None = None
    #: More model files (GGUF or ONNX) served beside the default, each under its file name.
    more_models: list[Path] = field(default_factory=list)
    #: More built-in models (qabridge.core.builtin names) served beside the default, each under its name.
    more_builtins: list[str] = field(default_factory=list)
    #: LoRA adapters served over one shared copy of their base (bridge.adapters.AdapterSpec).
    adapters: list = field(default_factory=list)
    #: The base every adapter must share (checked at start; "" when there are no adapters).
    adapter_base: str = ""
    #: auto (measure candidates for built-in models; by format for a file), llama.cpp or onnx.
    engine: str = "llama.cpp"
    #: The built-in model served as the default (a qabridge.core.builtin name), its engine and file
    #: chosen at load (``model_path`` is then None); None: a file or Ollama model is the default.
    builtin_model: str | None = None
    #: GGUF outtype candidates of built-in models: auto (q8_0 and bf16) or one of them.
    default_outtype: str = "auto"
    max_body_bytes: int = 2_000_000
    max_context_chars: int = 400_000
    max_batch: int = 64
    max_documents: int = 200
    #: ``documents``: weight of a passage's similarity to the question beside the reader's margin
    #: (service.PASSAGE_WEIGHT; tuned for the default embedder, 0 = the reader alone).
    passage_weight: float = 20.0
    request_timeout_s: float = 120.0
    max_inflight: int = 64
    n_contexts: int = field(default_factory=default_contexts)
    n_threads: int | None = None
    #: ONNX Runtime sessions: 2 adds a narrow one that concurrent requests share without a lock
    #: (bridge/onnx_engine.py); 1: one session with every thread, requests take turns.
    onnx_sessions: int = 2
    flash_attn: bool = True
    #: Where encoders run: "cpu" or "cuda" (resolved from --device by bridge.devices.resolve_device).
    device: str = "cpu"
    #: Encode the windows of concurrent requests in one engine call (bridge/batching.py); on by
    #: default on a GPU, off on the CPU (there the engines split their threads between requests).
    batch_requests: bool = False
    #: With batch_requests: how long an engine call waits for more requests (0: takes what is queued).
    batch_wait_ms: float = 0.0
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    ollama_host: str | None = None
    ollama_models: list[str] = field(default_factory=list)
    #: Ollama model for /api/embed (passage ranking).
    embedding_model: str | None = None
    #: Local embedding GGUF: ranking without Ollama, and the fallback while Ollama is away.
    embedding_gguf: Path | None = None
    ollama_poll_s: float = 1.0
    #: Rank passages with the offline base as a sentence embedder when nothing better is given.
    default_embedder: bool = True
