"""Ollama as model store and embedding service.

Ollama's API returns pooled embeddings only (``/api/embed`` L2-normalises them) and has
no tokenize endpoint, so per-token states come from llama.cpp in-process, loading the very
GGUF blob Ollama holds (``/api/show`` names it in its ``modelfile`` text).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx

from qabridge.errors import EngineUnavailable, ModelError, ModelNotFound

_FROM = re.compile(r"^FROM\s+(\S.*?)\s*$", re.MULTILINE)


def normalise_host(host: str) -> str:
    host = host.strip().rstrip("/")
    if not host.startswith(("http://", "https://")):
        host = "http://" + host
    return host


@dataclass
class OllamaModel:
    name: str
    blob: Path
    info: dict


class OllamaClient:
    """A small typed client: errors become EngineUnavailable / ModelNotFound with the status kept."""

    def __init__(self, host: str, timeout: float = 30.0):
        self.host = normalise_host(host)
        self._http = httpx.Client(base_url=self.host, timeout=timeout)

    def _post(self, path: str, body: dict) -> dict:
        try:
            r = self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"Ollama at {self.host} does not answer ({exc.__class__.__name__})", code="ollama_unavailable") from None
        if r.status_code == 404:
            raise ModelNotFound(f"Ollama at {self.host} has no model {body.get('model')!r}")
        if r.status_code >= 400:
            raise EngineUnavailable(f"Ollama {path} answered {r.status_code}: {r.text[:200]}", code="ollama_error")
        return r.json()

    def version(self) -> str:
        try:
            r = self._http.get("/api/version", timeout=3)
            r.raise_for_status()
            return str(r.json().get("version", "?"))
        except (httpx.HTTPError, ValueError):
            raise EngineUnavailable(f"Ollama at {self.host} does not answer", code="ollama_unavailable") from None

    def show(self, name: str) -> OllamaModel:
        data = self._post("/api/show", {"model": name, "verbose": True})
        m = _FROM.search(data.get("modelfile", ""))
        if not m:
            raise ModelError(f"Ollama model {name!r}: no FROM line in its modelfile")
        blob = Path(m.group(1))
        if not blob.is_file():
            raise ModelError(
                f"Ollama model {name!r}: its GGUF {blob} is not readable from here "
                "(the bridge must run on the machine that holds Ollama's models)"
            )
        return OllamaModel(name, blob, data.get("model_info", {}))

    def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        data = self._post("/api/embed", {"model": model, "input": texts, "truncate": True})
        vecs = data.get("embeddings")
        if not isinstance(vecs, list) or len(vecs) != len(texts):
            raise EngineUnavailable("Ollama /api/embed returned an unexpected body", code="ollama_error")
        return vecs

    def close(self) -> None:
        self._http.close()


class OllamaWatch:
    """Polls Ollama so health can say ``degraded`` while it is away and recover by itself."""

    def __init__(self, client: OllamaClient, interval: float = 1.0):
        self.client = client
        self.interval = interval
        self.up = False
        self.version: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qabridge-ollama-watch", daemon=True)

    def start(self) -> None:
        self.check()
        self._thread.start()

    def check(self) -> bool:
        try:
            v = self.client.version()
            up = True
        except EngineUnavailable:
            v, up = self.version, False
        self.up, self.version = up, v
        return up

    def mark_down(self) -> None:
        self.up = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def stop(self) -> None:
        self._stop.set()
