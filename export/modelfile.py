"""The Ollama Modelfile for an exported GGUF."""

from __future__ import annotations

import os
from pathlib import Path

BASE_LICENSES = {
    "sentence-transformers/all-MiniLM-L6-v2": "Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
}
DATA_LICENSE = "SQuAD v1.1 (Rajpurkar et al. 2016), CC BY-SA 4.0"


def render_modelfile(gguf_path: Path, modelfile_path: Path, *, num_ctx: int, base_model: str, embedding: bool = False) -> str:
    rel = os.path.relpath(gguf_path.resolve(), modelfile_path.parent.resolve())
    if not rel.startswith((".", "/")):
        rel = "./" + rel
    base_lic = BASE_LICENSES.get(base_model, f"see the license of {base_model}")
    lines = [
        "# Written by `qabridge export`: an encoder-only BERT model for Ollama.",
        "# Ollama serves it as an embedding model (/api/embed); extractive QA needs per-token",
        "# states, which the qabridge bridge computes with llama.cpp from this same GGUF.",
        f"FROM {rel}",
        f"PARAMETER num_ctx {num_ctx}",
        'LICENSE """',
        f"Model weights: {base_lic}.",
    ]
    if not embedding:
        lines.append(f"Span-QA fine-tuning data: {DATA_LICENSE}.")
    lines.append('"""')
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: Path, modelfile_path: Path, **kw) -> Path:
    modelfile_path.parent.mkdir(parents=True, exist_ok=True)
    text = render_modelfile(gguf_path, modelfile_path, **kw)
    tmp = modelfile_path.with_suffix(modelfile_path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, modelfile_path)
    return modelfile_path
