"""`qabridge export`: adapter -> GGUF (+ Modelfile); and the cached default model."""

from __future__ import annotations

from pathlib import Path

from qabridge.errors import ModelError
from qabridge.paths import DEFAULT_ADAPTER, REPO_ROOT, cache_dir

from .gguf_writer import QAMeta, prepare_output, write_gguf
from .keys import TASK_EMBEDDING, OutType
from .modelfile import write_modelfile

DEFAULT_MODELFILE = REPO_ROOT / "modelfiles" / "Modelfile"


def default_output(outtype: str, name: str = "bert-qa") -> Path:
    return REPO_ROOT / "models" / f"{name}.{outtype}.gguf"


def export(
    adapter: str | Path | None,
    *,
    output: str | Path | None = None,
    outtype: str = "f16",
    modelfile: str | Path | None = DEFAULT_MODELFILE,
    name: str = "bert-qa",
    force: bool = False,
    embedding: bool = False,
    base: str | None = None,
) -> dict:
    from qabridge.train.trainer import adapter_hash

    from .merge import load_plain_encoder, merge_adapter

    outtype = OutType(outtype).value
    out = prepare_output(Path(output) if output else default_output(outtype, name), force=force)
    if embedding:
        merged = load_plain_encoder(base)
        meta = QAMeta(base_model=merged.base_name, task=TASK_EMBEDDING)
        pooling = "mean"
    else:
        if adapter is None:
            raise ModelError("--adapter is required (or --embedding for a plain embedding model)")
        adapter = Path(adapter)
        if not adapter.is_dir():
            raise ModelError(f"{adapter}: no such adapter directory")
        merged = merge_adapter(adapter, base=base)
        q = merged.qa_config
        meta = QAMeta(
            max_seq_len=int(q.get("max_seq_len", 384)),
            doc_stride=int(q.get("doc_stride", 128)),
            max_question_tokens=int(q.get("max_question_tokens", 64)),
            max_answer_len=int(q.get("max_answer_len", 30)),
            base_model=merged.base_name,
            adapter_sha256=adapter_hash(adapter),
        )
        pooling = "mean"
    info = write_gguf(
        out, merged.tensors, merged.spec, merged.span_weight, merged.span_bias, meta,
        outtype=OutType(outtype), pooling=pooling, name=name, force=force,
    )
    if modelfile:
        mf = write_modelfile(out, Path(modelfile), num_ctx=meta.max_seq_len if not embedding else merged.spec.max_position_embeddings,
                             base_model=merged.base_name, embedding=embedding)
        info["modelfile"] = str(mf)
    return info


def default_model(outtype: str = "q8_0", *, adapter: Path = DEFAULT_ADAPTER, log=None) -> Path:
    """The committed adapter exported once, cached by adapter hash (rebuilt when it changes)."""
    from qabridge.train.trainer import adapter_hash

    if not (adapter / "adapter_config.json").exists():
        raise ModelError(f"{adapter}: the default adapter is missing; pass --model FILE.gguf")
    h = adapter_hash(adapter)[:16]
    path = cache_dir() / "models" / f"default-{h}.{outtype}.gguf"
    if path.exists():
        return path
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ModelError("building the default model needs torch (pip install 'qabridge[train]'), or pass --model FILE.gguf") from None
    if log:
        log(f"building the default model from {adapter} -> {path}")
    export(adapter, output=path, outtype=outtype, modelfile=None)
    return path
