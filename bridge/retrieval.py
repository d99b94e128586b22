"""Passage ranking for ``documents`` requests: embeddings from Ollama or from llama.cpp in-process."""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from qabridge.core.tokenizer import WordPieceTokenizer
from qabridge.errors import (
    EmbeddingsUnavailable,
    EngineUnavailable,
    OllamaUnavailable,
    QABridgeError,
)

from .llama_engine import LlamaCppEngine
from .ollama import OllamaClient, OllamaWatch


class Embedder(Protocol):
    name: str

    def embed(self, texts: list[str]) -> np.ndarray: ...


def _normalise(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


class LocalEmbedder:
    """Mean-pooled per-token states from llama.cpp (what Ollama computes for a mean-pooled model)."""

    def __init__(self, engine: LlamaCppEngine, tokenizer: WordPieceTokenizer, label: str, max_tokens: int = 256):
        self.engine = engine
        self.tokenizer = tokenizer
        self.name = f"local:{label}"
        self.max_tokens = max_tokens

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for t in texts:
            ids = self.tokenizer.ids(t)
            if len(ids) > self.max_tokens:
                ids = ids[: self.max_tokens - 1] + [self.tokenizer.sep_id]
            h = self.engine.hidden_states(np.asarray(ids, dtype=np.int32))
            out.append(h.mean(axis=0))
        return _normalise(np.asarray(out, dtype=np.float32))


class LazyLocalEmbedder:
    """A LocalEmbedder over a GGUF that is built and loaded on first use (the base sentence model
    costs nothing until a ``documents`` request needs it)."""

    def __init__(self, locate, label: str, n_threads: int | None = None):
        self._locate = locate  # () -> Path of the embedding GGUF (may build it)
        self._inner: LocalEmbedder | None = None
        self._engine: LlamaCppEngine | None = None
        self._lock = threading.Lock()
        self.n_threads = n_threads
        self.name = f"local:{label}"

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._inner is None:
            with self._lock:
                if self._inner is None:
                    from qabridge.core.model_file import ModelFile

                    try:
                        mf = ModelFile(self._locate(), require_qa=False)
                    except QABridgeError as exc:
                        raise EmbeddingsUnavailable(f"the default embedder could not be built: {exc.message}") from None
                    self._engine = LlamaCppEngine(mf, n_threads=self.n_threads)
                    self._inner = LocalEmbedder(self._engine, mf.tokenizer, mf.path.name)
        return self._inner.embed(texts)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


class OllamaEmbedder:
    def __init__(self, client: OllamaClient, model: str):
        self.client = client
        self.model = model
        self.name = f"ollama:{model}"

    def embed(self, texts: list[str]) -> np.ndarray:
        return _normalise(np.asarray(self.client.embed(self.model, texts), dtype=np.float32))


@dataclass(frozen=True)
class Passage:
    document: int
    start: int  # character offsets into the document
    end: int


_WORD = re.compile(r"\S+")


def split_passages(documents: list[str], max_words: int = 120, overlap: int = 20) -> list[Passage]:
    """Each document as itself, or (when long) as overlapping runs of ``max_words`` words."""
    out: list[Passage] = []
    for d, text in enumerate(documents):
        words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
        if not words:
            continue
        if len(words) <= max_words:
            out.append(Passage(d, words[0][0], words[-1][1]))
            continue
        step = max(1, max_words - overlap)
        for i in range(0, len(words), step):
            chunk = words[i : i + max_words]
            out.append(Passage(d, chunk[0][0], chunk[-1][1]))
            if i + max_words >= len(words):
                break
    return out


class EmbeddingCache:
    """Passage vectors by (embedder, content hash): a repeated corpus costs one question embedding."""

    def __init__(self, capacity: int = 50_000):
        self.capacity = capacity
        self._d: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "size": len(self._d)}

    @staticmethod
    def key(embedder: str, text: str) -> tuple[str, str]:
        return embedder, hashlib.sha256(text.encode("utf-8")).hexdigest()

    def get_many(self, embedder: Embedder, texts: list[str]) -> np.ndarray:
        keys = [self.key(embedder.name, t) for t in texts]
        with self._lock:
            found = {k: self._d[k] for k in keys if k in self._d}
            for k in found:
                self._d.move_to_end(k)
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            vecs = embedder.embed([texts[i] for i in missing])
            with self._lock:
                for i, v in zip(missing, vecs):
                    self._d[keys[i]] = v
                    found[keys[i]] = v
                while len(self._d) > self.capacity:
                    self._d.popitem(last=False)
        return np.stack([found[k] for k in keys])


class Retriever:
    """Ranks passages with Ollama's embeddings when it answers, else with the local embedder."""

    def __init__(self, primary: OllamaEmbedder | None, fallback: Embedder | None, watch: OllamaWatch | None):
        self.primary = primary
        self.fallback = fallback
        self.watch = watch
        self.cache = EmbeddingCache()

    def _embedders(self) -> list[Embedder]:
        out: list[Embedder] = []
        if self.primary is not None and (self.watch is None or self.watch.up):
            out.append(self.primary)
        if self.fallback is not None:
            out.append(self.fallback)
        return out

    def rank(self, question: str, documents: list[str]) -> tuple[list[tuple[Passage, float]], str]:
        passages = split_passages(documents)
        if not passages:
            return [], "none"
        texts = [documents[p.document][p.start : p.end] for p in passages]
        last: Exception | None = None
        for emb in self._embedders():
            try:
                q = emb.embed([question])[0]
                m = self.cache.get_many(emb, texts)
            except EngineUnavailable as exc:
                last = exc
                if self.watch is not None and isinstance(exc, OllamaUnavailable):
                    self.watch.mark_down()
                continue
            sims = m @ q
            order = np.argsort(-sims, kind="stable")
            return [(passages[i], float(sims[i])) for i in order], emb.name
        raise EmbeddingsUnavailable(f"no embedding engine is available ({last})")
