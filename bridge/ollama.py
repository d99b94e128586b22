"""Ollama as model store and embedding service.

Ollama's API returns pooled embeddings only (``/api/embed`` L2-normalises them) and has
no tokenize endpoint, so per-token states come from llama.cpp in-process, loading the very
GGUF blob Ollama holds (``/api/show`` names it in its ``modelfile`` text).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from qabridge.errors import (
    EmbeddingModelUnsupported,
    ModelError,
    ModelNotFound,
    OllamaResponseError,
    OllamaUnavailable,
)

log = logging.getLogger("qabridge.bridge")
_FROM = re.compile(r"^FROM\s+(\S.*?)\s*$", re.MULTILINE)
_ADAPTER = re.compile(r"^ADAPTER\s+(\S.*?)\s*$", re.MULTILINE)

#: llama.cpp's pooling types (enum llama_pooling_type). Ollama calls any GGUF with a
#: ``<arch>.pooling_type`` key an embedding model, but embeds only with mean, cls or last: with
#: none, v0.34.4 answers /api/embed 400 "input exceeds maximum context length and cannot be
#: truncated further" and v0.24.0 answers 500 "model failed to load, this may be due to resource
#: limitations or an internal error" (its runner panics on the unknown pooling).
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
EMBED_POOLING = frozenset({1, 2, 3})


def version_note(version: str) -> str:
    """What this Ollama version does with an imported GGUF; logged once per version seen."""
    try:
        v = tuple(int(x) for x in version.split("-")[0].split(".")[:3])
    except ValueError:
        return "version not recognised; tested: 0.34.4 and 0.24.0"
    if v < (0, 24):
        return "older than 0.24.0, the oldest version tested"
    if v < (0, 30):
        return "Go engine; keeps an imported GGUF as-is (tested: 0.24.0)"
    if v < (0, 34):
        return ("llama-server runner; rewrites an imported GGUF at create time (the blob differs from "
                "the exported file, its qabridge keys survive; not tested)")
    return "llama-server runner; keeps an imported GGUF as-is (tested: 0.34.4)"


def normalise_host(host: str) -> str:
    host = host.strip().rstrip("/")
    if not host.startswith(("http://", "https://")):
        host = "http://" + host
    return host


def _error_text(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", r.text))[:200]
    except ValueError:
        return r.text[:200]


@dataclass
class OllamaModel:
    name: str
    #: The GGUF blob of the model's FROM line.
    blob: Path
    info: dict
    #: The blobs of its ADAPTER lines (LoRA GGUFs applied over ``blob``; Ollama v0.24.0 keeps them,
    #: v0.30 and later refuse ADAPTER at create time).
    adapters: tuple[Path, ...] = ()


class OllamaClient:
    """A small typed client: errors become OllamaUnavailable (no answer) or OllamaResponseError (Ollama's status kept)."""

    def __init__(self, host: str, timeout: float = 30.0):
        self.host = normalise_host(host)
        self._http = httpx.Client(base_url=self.host, timeout=timeout)

    def _post(self, path: str, body: dict) -> dict:
        try:
            r = self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise OllamaUnavailable(f"Ollama at {self.host} does not answer ({exc.__class__.__name__})") from None
        if r.status_code >= 400:
            raise OllamaResponseError(f"Ollama {path} for model {body.get('model')!r} answered {r.status_code}: {_error_text(r)}", r.status_code)
        try:
            return r.json()
        except ValueError:
            raise OllamaResponseError(f"Ollama {path} answered a body that is not JSON", 502) from None

    def version(self) -> str:
        try:
            r = self._http.get("/api/version", timeout=3)
            r.raise_for_status()
            return str(r.json().get("version", "?"))
        except (httpx.HTTPError, ValueError):
            raise OllamaUnavailable(f"Ollama at {self.host} does not answer") from None

    def show(self, name: str) -> OllamaModel:
        try:
            data = self._post("/api/show", {"model": name, "verbose": True})
        except OllamaResponseError as exc:
            if exc.status == 404:  # only here is a 404 about the model the client asked for
                raise ModelNotFound(f"Ollama at {self.host} has no model {name!r}") from None
            raise
        m = _FROM.search(data.get("modelfile", ""))
        if not m:
            raise ModelError(f"Ollama model {name!r}: no FROM line in its modelfile")
        blob = Path(m.group(1))
        adapters = tuple(Path(a) for a in _ADAPTER.findall(data.get("modelfile", "")))
        for f in (blob, *adapters):
            if not f.is_file():
                raise ModelError(
                    f"Ollama model {name!r}: its GGUF {f} is not readable from here "
                    "(the bridge must run on the machine that holds Ollama's models)"
                )
        return OllamaModel(name, blob, data.get("model_info", {}), adapters)

    def embedding_pooling(self, name: str) -> str:
        """The pooling type of Ollama model ``name``; ModelError when Ollama cannot embed with it."""
        try:
            data = self._post("/api/show", {"model": name})
        except OllamaResponseError as exc:
            if exc.status == 404:
                raise ModelNotFound(f"Ollama at {self.host} has no model {name!r}") from None
            raise
        info = data.get("model_info") or {}
        pooling = info.get(f"{info.get('general.architecture')}.pooling_type")
        if pooling not in EMBED_POOLING:
            what = "no pooling type" if pooling is None else f"pooling type {POOLING_NAMES.get(pooling, pooling)!r}"
            raise EmbeddingModelUnsupported(
                f"Ollama model {name!r} cannot serve embeddings: its GGUF has {what} (Ollama embeds with "
                "mean, cls or last pooling); use a mean-pooled model (`qabridge export --embedding`)"
            )
        return POOLING_NAMES[pooling]

    def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        try:
            data = self._post("/api/embed", {"model": model, "input": texts, "truncate": True})
        except OllamaResponseError as exc:
            # Ollama's message for a model it cannot pool names something else (see POOLING_NAMES):
            # ask /api/show once, and say so when the pooling is the cause.
            if exc.status in (400, 500):
                try:
                    self.embedding_pooling(model)
                except ModelNotFound:
                    pass
                except ModelError as bad:
                    raise OllamaResponseError(f"{bad.message}. {exc.message}", 502,
                                              code="embedding_model_unsupported") from None
                except OllamaResponseError:
                    pass
            raise
        vecs = data.get("embeddings")
        if not isinstance(vecs, list) or len(vecs) != len(texts):
            raise OllamaResponseError("Ollama /api/embed returned an unexpected body", 502)
        return vecs

    def close(self) -> None:
        self._http.close()


class OllamaWatch:
    """Polls Ollama so health can say ``degraded`` while it is away and recover by itself."""

    def __init__(self, client: OllamaClient, interval: float = 1.0, on_up: Callable[[], None] | None = None):
        self.client = client
        self.interval = interval
        self.on_up = on_up
        self.up = False
        self.version: str | None = None
        self._logged_version: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qabridge-ollama-watch", daemon=True)

    def start(self) -> None:
        self.check()
        self._thread.start()

    def check(self) -> bool:
        try:
            v = self.client.version()
            up = True
        except OllamaUnavailable:
            v, up = self.version, False
        self.up, self.version = up, v
        if up and v != self._logged_version:  # once per version: a restart into another one logs again
            self._logged_version = v
            log.info("Ollama %s at %s: %s", v, self.client.host, version_note(v or ""))
        return up

    def mark_down(self) -> None:
        self.up = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            was_up = self.up
            if self.check() and not was_up and self.on_up is not None:
                try:
                    self.on_up()
                except Exception:  # a failed reload is retried on the next transition
                    log.exception("reloading Ollama models failed")

    def stop(self) -> None:
        self._stop.set()
