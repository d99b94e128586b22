"""Write a merged BERT encoder + span head as GGUF in llama.cpp's ``bert`` layout."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qabridge._version import __version__
from qabridge.core.gguf_keys import Key, OutType, SegmentIds
from qabridge.core.hashing import sha256_file
from qabridge.core.settings import DEFAULTS, QASettings
from qabridge.errors import ModelError, OutputExists, OutputUnwritable

_CONTROL = 3  # gguf.TokenType.CONTROL
_NORMAL = 1
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass
class EncoderSpec:
    """What the writer needs from a HF BERT config."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    vocab: list[str]
    lowercase: bool
    hidden_act: str = "gelu"

    @classmethod
    def from_config(cls, cfg: Mapping, vocab: list[str], lowercase: bool) -> EncoderSpec:
        if cfg.get("model_type") not in ("bert",):
            raise ModelError(f"model_type {cfg.get('model_type')!r} is not BERT; llama.cpp's bert graph needs a BERT encoder")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError("only absolute position embeddings are supported by llama.cpp's bert graph")
        return cls(
            hidden_size=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]),
            max_position_embeddings=int(cfg["max_position_embeddings"]),
            type_vocab_size=int(cfg.get("type_vocab_size", 2)),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            vocab=vocab,
            lowercase=lowercase,
            hidden_act=str(cfg.get("hidden_act", "gelu")),
        )


@dataclass
class QAMeta:
    """The ``qabridge.*`` keys (see :mod:`qabridge.core.gguf_keys`)."""

    settings: QASettings = DEFAULTS
    base_model: str = ""
    adapter_sha256: str = ""
    task: str = "extractive-qa"
    negatives: str = ""
    null_threshold: float | None = None
    null_threshold_tuning: str = ""
    documents_null_threshold: float | None = None
    documents_null_threshold_tuning: str = ""
    documents_passage_weight: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.documents_null_threshold is not None and self.documents_passage_weight is None:
            raise ModelError("a documents_null_threshold needs the documents_passage_weight it was tuned at")


def abstention_fields(qa_config: dict) -> dict:
    """QAMeta's abstention fields from an adapter's qabridge.json: what both exports (GGUF, ONNX) write."""
    q = qa_config
    return dict(
        negatives=str((q.get("train_identity") or {}).get("negatives") or "none"),
        null_threshold=q.get("null_threshold"),
        null_threshold_tuning=str(q.get("null_threshold_tuning", "")),
        documents_null_threshold=q.get("documents_null_threshold"),
        documents_null_threshold_tuning=str(q.get("documents_null_threshold_tuning", "")),
        documents_passage_weight=q.get("documents_passage_weight"),
    )


def phantom_vocab(vocab: list[str]) -> tuple[list[str], list[int]]:
    """llama.cpp's WordPiece form: specials kept, ``##x`` -> ``x``, other tokens -> ``▁x``."""
    tokens, types = [], []
    for tok in vocab:
        if tok in _SPECIAL:
            tokens.append(tok)
            types.append(_CONTROL)
        elif tok.startswith("##"):
            tokens.append(tok[2:])
            types.append(_NORMAL)
        else:
            tokens.append("\u2581" + tok)
            types.append(_NORMAL)
    return tokens, types


def _keep_f32(gguf_name: str, arr: np.ndarray) -> bool:
    return arr.ndim == 1 or "norm" in gguf_name or gguf_name.startswith(("position_embd", "token_types"))


def owned_by_qabridge(path: Path) -> bool:
    """True if ``path`` is a GGUF that qabridge wrote (it carries ``qabridge.version``)."""
    try:
        from gguf import GGUFReader

        return Key.VERSION in GGUFReader(str(path)).fields
    except Exception:
        return False


def prepare_output(out_path: str | os.PathLike, *, force: bool = False, owned=None, kind: str = ".gguf") -> Path:
    """Check (before any slow work) that ``out_path`` can be written and may be replaced.

    ``owned(path)`` says whether an existing file is one qabridge wrote (default: a qabridge GGUF).
    """
    out = Path(out_path)
    owned = owned or owned_by_qabridge
    if out.is_dir():
        raise OutputUnwritable(f"{out}: is a directory; give a {kind} file path")
    if out.exists() and not force and not owned(out):
        raise OutputExists(f"{out}: exists and was not written by qabridge; pass --force to overwrite")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise OutputUnwritable(f"{parent}: cannot create output directory (a file is in the way)")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputUnwritable(f"{parent}: cannot create output directory ({exc.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise OutputUnwritable(f"{parent}: output directory is not writable")
    return out


def write_gguf(
    out_path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    spec: EncoderSpec,
    span_weight: np.ndarray | None,
    span_bias: np.ndarray | None,
    meta: QAMeta,
    *,
    outtype: OutType = OutType.F16,
    pooling: str = "mean",
    name: str = "bert-qa",
    force: bool = False,
    lora_alpha: float | None = None,
    vocab: bool = True,
) -> dict:
    """Write the GGUF atomically; return path, size and sha256.

    ``tensors`` holds the encoder's HF-named weights (``embeddings.*``, ``encoder.layer.N.*``)
    as float32 numpy arrays. Refuses to overwrite a file qabridge did not write unless ``force``.

    With ``lora_alpha`` the file is a llama.cpp LoRA adapter instead: ``tensors`` holds
    ``<module>.weight.lora_a`` / ``.lora_b`` pairs (peft's A [r, in] and B [out, r]), kept in f32, and
    llama.cpp scales B @ A by ``lora_alpha / r``. Its qabridge keys (span head, window settings,
    vocabulary unless ``vocab`` is False) are those of the model it makes with its base.
    """
    import gguf

    out = prepare_output(out_path, force=force)
    outtype = OutType(outtype)

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, spec.num_layers)
    ftype = {
        OutType.F32: gguf.LlamaFileType.ALL_F32,
        OutType.F16: gguf.LlamaFileType.MOSTLY_F16,
        OutType.BF16: gguf.LlamaFileType.MOSTLY_BF16,
        OutType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]

    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
        w.add_name(name)
        if lora_alpha is not None:
            w.add_type(gguf.GGUFType.ADAPTER)
            w.add_string(gguf.Keys.Adapter.TYPE, "lora")
            w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lora_alpha))
        w.add_context_length(spec.max_position_embeddings)
        w.add_embedding_length(spec.hidden_size)
        w.add_feed_forward_length(spec.intermediate_size)
        w.add_block_count(spec.num_layers)
        w.add_head_count(spec.num_heads)
        w.add_layer_norm_eps(spec.layer_norm_eps)
        w.add_causal_attention(False)
        w.add_pooling_type({"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "none": gguf.PoolingType.NONE}[pooling])
        w.add_file_type(ftype)

        # A LoRA file can leave the vocabulary to its base: parsed, 30k tokens cost ~55 MB of Python objects.
        if vocab:
            tokens, types = phantom_vocab(spec.vocab)
            w.add_tokenizer_model("bert")
            w.add_tokenizer_pre("default")
            w.add_token_list(tokens)
            w.add_token_types(types)
            w.add_token_type_count(spec.type_vocab_size)
            index = {t: i for i, t in enumerate(spec.vocab)}
            # llama.cpp's BERT vocabulary keeps [CLS] as BOS and [SEP] as EOS/SEP.
            w.add_bos_token_id(index["[CLS]"])
            w.add_eos_token_id(index["[SEP]"])
            w.add_sep_token_id(index["[SEP]"])
            w.add_unk_token_id(index["[UNK]"])
            if "[PAD]" in index:
                w.add_pad_token_id(index["[PAD]"])
            if "[MASK]" in index:
                w.add_mask_token_id(index["[MASK]"])
            w.add_add_bos_token(True)
            w.add_add_sep_token(True)

        w.add_string(Key.VERSION, __version__)
        w.add_string(Key.TASK, meta.task)
        w.add_uint32(Key.MAX_SEQ_LEN, meta.settings.max_seq_len)
        w.add_uint32(Key.DOC_STRIDE, meta.settings.doc_stride)
        w.add_uint32(Key.MAX_QUESTION_TOKENS, meta.settings.max_question_tokens)
        w.add_uint32(Key.MAX_ANSWER_LEN, meta.settings.max_answer_len)
        w.add_bool(Key.LOWERCASE, spec.lowercase)
        w.add_string(Key.SEGMENT_IDS, SegmentIds.ZEROS.value)
        w.add_string(Key.BASE_MODEL, meta.base_model)
        w.add_string(Key.ADAPTER_SHA256, meta.adapter_sha256)
        w.add_string(Key.OUTTYPE, outtype.value)
        if span_weight is not None:
            sw = np.asarray(span_weight, dtype=np.float32)
            if sw.shape != (2, spec.hidden_size):
                raise ModelError(f"span head weight has shape {sw.shape}, expected (2, {spec.hidden_size})")
            w.add_array(Key.SPAN_HEAD_WEIGHT, [float(x) for x in sw.ravel()])
            w.add_array(Key.SPAN_HEAD_BIAS, [float(x) for x in np.asarray(span_bias, dtype=np.float32).ravel()])
        if meta.negatives:
            w.add_string(Key.NEGATIVES, meta.negatives)
        if meta.null_threshold is not None:
            w.add_float32(Key.NULL_THRESHOLD, float(meta.null_threshold))
            w.add_string(Key.NULL_THRESHOLD_TUNING, meta.null_threshold_tuning)
        if meta.documents_null_threshold is not None:
            w.add_float32(Key.DOCUMENTS_NULL_THRESHOLD, float(meta.documents_null_threshold))
            w.add_string(Key.DOCUMENTS_NULL_THRESHOLD_TUNING, meta.documents_null_threshold_tuning)
            w.add_float32(Key.DOCUMENTS_PASSAGE_WEIGHT, float(meta.documents_passage_weight))
        for k, v in meta.extra.items():
            w.add_string(k, str(v))

        for hf_name, arr in tensors.items():
            lora_part = ""
            if lora_alpha is not None:
                hf_name, _, lora_part = hf_name.rpartition(".")
                if lora_part not in ("lora_a", "lora_b"):
                    raise ModelError(f"LoRA tensor {hf_name!r} is neither lora_a nor lora_b")
            gname = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gname is None:
                raise ModelError(f"tensor {hf_name!r} has no name in llama.cpp's bert layout")
            data = np.ascontiguousarray(arr, dtype=np.float32)
            if lora_part:
                w.add_tensor(f"{gname}.{lora_part}", data)
            elif outtype == OutType.F32 or _keep_f32(gname, data):
                w.add_tensor(gname, data)
            elif outtype == OutType.F16:
                w.add_tensor(gname, data.astype(np.float16))
            elif outtype == OutType.BF16:
                b = gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16)
                w.add_tensor(gname, b, raw_shape=b.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
            else:
                if data.shape[-1] % 32 != 0:
                    w.add_tensor(gname, data.astype(np.float16))
                else:
                    q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
                    w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return {"path": str(out), "size": out.stat().st_size, "sha256": sha256_file(out), "outtype": outtype.value}
