"""The Ollama Modelfile for an exported GGUF."""

from __future__ import annotations

import os
from pathlib import Path

from qabridge.core.model_file import ModelFile
from qabridge.errors import ModelError

BASE_LICENSES = {
    "sentence-transformers/all-MiniLM-L6-v2": "Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
    "BAAI/bge-small-en-v1.5": "MIT (BAAI/bge-small-en-v1.5)",  # train/bases.py: named base from Maven Central
}
DATA_LICENSE = "SQuAD v1.1 (Rajpurkar et al. 2016), CC BY-SA 4.0"

#: llama.cpp's ``<arch>.pooling_type`` values (enum llama_pooling_type).
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
#: Pooling types Ollama can serve on /api/embed. Ollama calls a GGUF an embedding model when the
#: key is present at all, but with ``none`` llama-server (Ollama >= 0.30) refuses /v1/embeddings
#: and Ollama reports a misleading "input exceeds maximum context length"; ``rank`` yields
#: reranker scores, not vectors; without the key Ollama takes the model for a text generator.
OLLAMA_POOLING = frozenset({"mean", "cls", "last"})


def ollama_pooling(gguf_path: Path) -> str:
    """The GGUF's pooling type if Ollama can serve it as an embedding model, else ModelError."""
    mf = ModelFile(gguf_path, require_qa=False)
    try:
        arch = mf.get("general.architecture")
        raw = mf.get(f"{arch}.pooling_type")
    finally:
        mf.close()
    if raw is None:
        raise ModelError(
            f"{gguf_path}: no {arch}.pooling_type key; Ollama would treat it as a text-generation "
            "model, not an embedding model, so no Modelfile is written"
        )
    name = POOLING_NAMES.get(int(raw), f"unknown ({int(raw)})")
    if name not in OLLAMA_POOLING:
        raise ModelError(
            f"{gguf_path}: pooling type {name!r} cannot be served by Ollama (/api/embed needs one of "
            f"{', '.join(sorted(OLLAMA_POOLING))}); export with mean pooling, or load the GGUF "
            "without Ollama (`qabridge serve --model FILE.gguf`); no Modelfile is written"
        )
    return name


def render_modelfile(gguf_path: Path, modelfile_path: Path, *, num_ctx: int, base_model: str, embedding: bool = False) -> str:
    rel = _relative(gguf_path, modelfile_path)
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
    # Checked before anything is written: a Modelfile that `ollama create` accepts but whose
    # model then fails every /api/embed call is worse than none.
    ollama_pooling(gguf_path)
    modelfile_path.parent.mkdir(parents=True, exist_ok=True)
    text = render_modelfile(gguf_path, modelfile_path, **kw)
    tmp = modelfile_path.with_suffix(modelfile_path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, modelfile_path)
    return modelfile_path


def write_lora_modelfile(base_gguf: Path, lora_gguf: Path, modelfile_path: Path, *, num_ctx: int, base_model: str) -> Path:
    """A Modelfile ``FROM`` the base with ``ADAPTER`` the LoRA GGUF: Ollama stores the two as
    separate blobs, so ten adapters cost ten adapter files over one base."""
    ollama_pooling(base_gguf)
    modelfile_path.parent.mkdir(parents=True, exist_ok=True)
    lines = render_modelfile(base_gguf, modelfile_path, num_ctx=num_ctx, base_model=base_model).splitlines()
    rel = _relative(lora_gguf, modelfile_path)
    at = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    lines[1:at] = [
        "# Ollama serves the base as an embedding model; the bridge reads both blobs and applies the",
        "# adapter at run time (`qabridge serve --ollama-model NAME`). Ollama v0.24.0 accepts ADAPTER",
        "# for this BERT model; v0.30 and later refuse it (\"LoRA adapters are no longer supported\").",
    ]
    at = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    lines.insert(at + 1, f"ADAPTER {rel}")
    tmp = modelfile_path.with_suffix(modelfile_path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, modelfile_path)
    return modelfile_path


def _relative(path: Path, modelfile_path: Path) -> str:
    rel = os.path.relpath(path.resolve(), modelfile_path.parent.resolve())
    return rel if rel.startswith((".", "/")) else "./" + rel
