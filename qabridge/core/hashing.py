"""Content hashes: model files (reported by the bridge) and adapters (name the cached default model)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Files whose bytes identify an adapter (or a fully fine-tuned model directory).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "model.safetensors")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def adapter_hash(d: str | os.PathLike) -> str:
    h = hashlib.sha256()
    for name in sorted(ADAPTER_FILES):
        p = Path(d) / name
        if p.exists():
            h.update(name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()
