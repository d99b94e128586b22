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

from qabridge.errors import ModelError, ModelNotFound, OllamaResponseError, OllamaUnavailable

log = logging.getLogger("qabridge.bridge")
_FROM = re.compile(r"^FROM\s+(\S.*?)\s*$", re.MULTILINE)


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
    blob: Path
    info: dict


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
