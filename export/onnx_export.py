"""Write a merged BERT encoder as ONNX for ONNX Runtime: graph-fused (O2) and optionally int8.

The weights are the ones the GGUF export writes (:func:`qabridge.export.merge.merge_adapter`);
the graph maps ``input_ids``/``attention_mask`` [batch, seq] to ``last_hidden_state``
[batch, seq, hidden]. Segment ids are not an input: the product trains and serves with token
type 0 everywhere, so token-type row 0 is added to the position table and the graph never
reads the type table. The span head, the window settings and the WordPiece vocabulary ride in
the model's ``metadata_props`` under the GGUF's ``qabridge.*`` keys, so the ``.onnx`` file alone
serves (bridge/onnx_engine.py). The GGUF stays the Ollama artifact.

Quantisation (``quantize``), after the transformer fusions, weights int8 per output channel:
- ``"int8"``: activations quantised per token (one scale per row, computed at run time), Q/K/V
  projections included (attention is fused as MultiHeadAttention so they stay plain MatMuls).
  ONNX Runtime's dynamic recipe uses one scale per tensor, and in this model the [CLS] row's
  activations run 5-7x larger than the other tokens' (28 vs 4 before the FFN), so one scale leaves
  the other tokens a few int8 steps: 95.7% argmax span agreement with torch on 300 dev questions,
  flips with margins up to 0.13. Per token: 98.7%, every flip a near-tie (margin <= 0.03), at
  ~1.2x the per-tensor time (docs/performance.md).
- ``"int8-tensor"``: ``onnxruntime.quantization.quantize_dynamic`` (per-tensor activations) on
  MatMul and the fused Attention, the recipe the issue measured at -0.3 F1.
- ``"none"``: fp32.

Every fused graph then has its ``SkipLayerNormalization`` nodes split back into ``Add`` (residual,
bias) + ``LayerNormalization``: on the CPUs measured here ORT's SkipLayerNormalization kernel took
~120 us for a [150, 384] input on 2 threads where Add + Add + LayerNormalization took ~30, 1.25 of
7.4 ms per question in the int8 graph (docs/performance.md, step 7).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Container
from functools import cached_property
from pathlib import Path

import numpy as np

from qabridge._version import __version__
from qabridge.core.gguf_keys import TASK_QA, Key, SegmentIds
from qabridge.core.hashing import sha256_file
from qabridge.core.model_file import QAModelMeta, SpanHead
from qabridge.core.settings import QASettings
from qabridge.core.tokenizer import WordPieceTokenizer
from qabridge.errors import ModelError, UsageError

from .gguf_writer import QAMeta, abstention_fields, prepare_output

ONNX_OPSET = 17
#: The graph recipe: part of cached file names, so a new recipe is exported again rather than read
#: from a cache. 1: per-token int8 as Div/Round/Cast chains; 2: QuantizeLinear + MatMulIntegerToFloat;
#: 3: recipe 2 with SkipLayerNormalization split back into Add + LayerNormalization (every O2 graph).
ONNX_RECIPE = 3
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "last_hidden_state"


class OnnxKey:
    """``metadata_props`` an ONNX export carries beyond the GGUF's :class:`Key` set."""

    VOCAB = "qabridge.vocab"  # WordPiece tokens joined by "\n", id order
    STRIP_ACCENTS = "qabridge.strip_accents"  # "true" | "false" | "" (BERT default: follow lowercase)
    CONTEXT_LENGTH = "qabridge.context_length"  # position table size: the longest sequence
    HIDDEN_SIZE = "qabridge.hidden_size"
    NUM_HEADS = "qabridge.num_heads"
    NUM_LAYERS = "qabridge.num_layers"
    OPTIMIZATION = "qabridge.onnx.optimization"  # "O2" | "none"
    QUANTIZATION = "qabridge.onnx.quantization"  # one of QUANTIZE_CHOICES
    RECIPE = "qabridge.onnx.recipe"  # ONNX_RECIPE of the export that wrote the file


#: Keys an ONNX model needs for the bridge to serve it.
REQUIRED = (Key.VERSION, Key.TASK, Key.SPAN_HEAD_WEIGHT, Key.SPAN_HEAD_BIAS, Key.MAX_SEQ_LEN, Key.DOC_STRIDE,
            Key.LOWERCASE, Key.SEGMENT_IDS, OnnxKey.VOCAB, OnnxKey.CONTEXT_LENGTH, OnnxKey.HIDDEN_SIZE)

QUANTIZE_CHOICES = ("int8", "int8-tensor", "none")


class OnnxMetadata(QAModelMeta):
    """What a qabridge ONNX (or OpenVINO IR) export says about itself, read from its metadata
    alone: tokenizer, window settings, span head. The bridge's ``OnnxModel`` adds the session;
    the int8 calibration cuts windows for a graph no session has loaded with this."""

    def __init__(self, path: str | os.PathLike, meta: dict[str, str]):
        self.path = Path(path)
        self.meta: dict[str, str] = dict(meta)

    def get(self, key: str, default=None):
        return self.meta.get(key, default)

    def _int(self, key: str) -> int:
        try:
            return int(self.meta[key])
        except (KeyError, ValueError):
            raise ModelError(f"{self.path}: metadata {key} is missing or not an integer") from None

    def qabridge_metadata(self) -> dict:
        skip = (Key.SPAN_HEAD_WEIGHT, Key.SPAN_HEAD_BIAS, OnnxKey.VOCAB)
        return {k: v for k, v in self.meta.items() if k.startswith("qabridge.") and k not in skip}

    @property
    def hidden_size(self) -> int:
        return self._int(OnnxKey.HIDDEN_SIZE)

    @property
    def context_length(self) -> int:
        return self._int(OnnxKey.CONTEXT_LENGTH)

    @property
    def num_layers(self) -> int:
        return self._int(OnnxKey.NUM_LAYERS)

    @property
    def outtype(self) -> str:
        return str(self.meta.get(Key.OUTTYPE, "unknown"))

    @cached_property
    def span_head(self) -> SpanHead:
        h = self.hidden_size
        try:
            w = np.asarray(json.loads(self.meta[Key.SPAN_HEAD_WEIGHT]), dtype=np.float32)
            b = np.asarray(json.loads(self.meta[Key.SPAN_HEAD_BIAS]), dtype=np.float32)
        except (ValueError, TypeError):
            raise ModelError(f"{self.path}: span head metadata is not a list of numbers") from None
        if w.size != 2 * h or b.size != 2:
            raise ModelError(f"{self.path}: span head has {w.size}+{b.size} values, expected {2 * h}+2")
        return SpanHead(w.reshape(2, h), b.reshape(2))

    @cached_property
    def tokenizer(self) -> WordPieceTokenizer:
        vocab = self.meta[OnnxKey.VOCAB].split("\n")
        strip = {"true": True, "false": False}.get(self.meta.get(OnnxKey.STRIP_ACCENTS, ""))
        return WordPieceTokenizer(vocab, lowercase=self.meta[Key.LOWERCASE] == "true", strip_accents=strip)


#: Op types ``quantize="int8-tensor"`` hands quantize_dynamic: after fusion the Q/K/V projections
#: sit inside the Attention op, "MatMul" covers the attention output and the two FFN projections.
TENSOR_INT8_OPS = ("MatMul", "Attention")


def owned_by_qabridge(path: Path) -> bool:
    """True if ``path`` is an ONNX model qabridge wrote (its metadata has ``qabridge.version``)."""
    try:
        import onnx

        m = onnx.load(str(path), load_external_data=False)
        return any(p.key == Key.VERSION for p in m.metadata_props)
    except Exception:
        return False


def prepare_onnx_output(out_path: str | os.PathLike, *, force: bool = False) -> Path:
    """Check before the slow work that ``out_path`` can be written and may be replaced."""
    return prepare_output(out_path, force=force, owned=owned_by_qabridge, kind=".onnx")


def _torch_encoder(merged):
    """A transformers BertModel holding the merged tensors, token-type row 0 folded into positions."""
    import torch
    from transformers import BertConfig, BertModel

    spec = merged.spec
    cfg = BertConfig(
        vocab_size=len(spec.vocab), hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings, type_vocab_size=spec.type_vocab_size,
        layer_norm_eps=spec.layer_norm_eps, hidden_act=spec.hidden_act,
    )
    # Eager attention exports as MatMul/Softmax, the pattern ORT's BERT optimizer fuses into
    # one Attention op (the SDPA path exports differently and is left unfused).
    cfg._attn_implementation = "eager"
    model = BertModel(cfg, add_pooling_layer=False)
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in merged.tensors.items()}
    tt = state["embeddings.token_type_embeddings.weight"]
    state["embeddings.position_embeddings.weight"] = state["embeddings.position_embeddings.weight"] + tt[0]
    state["embeddings.token_type_embeddings.weight"] = torch.zeros_like(tt)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise ModelError(f"merged tensors do not fit a BERT encoder (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


class _Encoder:  # a torch.nn.Module built lazily (torch is not a base dependency)
    @staticmethod
    def wrap(model):
        import torch

        class Encoder(torch.nn.Module):
            def __init__(self, bert):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask):
                # token_type_ids left out: the embedding layer reads its all-zero buffer, and
                # the zeroed type table contributes nothing (row 0 lives in the position table).
                return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        return Encoder(model).eval()


def _export_fp32(merged, path: Path) -> None:
    import torch

    enc = _Encoder.wrap(_torch_encoder(merged))
    ids = torch.ones(2, 16, dtype=torch.int64)
    mask = torch.ones(2, 16, dtype=torch.int64)
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, OUTPUT: {0: "batch", 1: "seq"}}
    with torch.no_grad():
        # The TorchScript exporter: ORT's BERT fusions are written against its graphs, and it
        # needs no onnxscript (the dynamo exporter does).
        torch.onnx.export(enc, (ids, mask), str(path), input_names=list(INPUTS), output_names=[OUTPUT],
                          dynamic_axes=dyn, opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False)


def _optimize(src: Path, dst: Path, spec, *, mha: bool = False) -> dict:
    """ORT's transformer optimizer, model_type bert: Attention, SkipLayerNorm, BiasGelu fusions.

    ``mha``: fuse attention as MultiHeadAttention, leaving Q/K/V as MatMuls a quantiser can reach.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions("bert")
    opts.enable_gelu_approximation = False  # exact erf GELU, as trained
    opts.use_multi_head_attention = mha
    opt = optimize_model(str(src), model_type="bert", num_heads=spec.num_heads, hidden_size=spec.hidden_size,
                         optimization_options=opts, opt_level=0, use_gpu=False)
    opt.save_model_to_file(str(dst))
    return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


def _quantize(src: Path, dst: Path, op_types: tuple[str, ...]) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types),
        # MatMulConstBOnly: a MatMul of two activations (attention scores, when unfused) stays fp32.
        # DefaultTensorType: ONNX shape inference cannot type the outputs of ORT's fused ops.
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _quantize_per_token(src: Path, dst: Path, *, per_tensor: Container[int] = ()) -> int:
    """Every MatMul with a constant weight -> int8 with per-token activation scales; returns the count.

    For an input X [.., K]: s = max|X| over K / 127 per row, Xq = QuantizeLinear(X; s, 128) blocked
    with one block per row (opset 21) as uint8 (symmetric: zero point 128), Y =
    MatMulIntegerToFloat(Xq, Wq; 128, w_scale) * s, with Wq int8 symmetric per output column.
    MatMuls sharing an input (Q, K, V) share its quantisation. This replaces recipe 1's
    Abs/Div/Round/Add/Cast and Cast/Mul chains (same arithmetic: both round half to even and
    saturate to uint8), which took ~38% of the kernel time in ORT's profile.

    ``per_tensor``: indices of quantised inputs, in graph order (per layer: Q/K/V input, attention
    output, FFN input, FFN output), quantised per tensor instead (DynamicQuantizeLinear, which ORT
    fuses with the MatMul): the per-input experiments of docs/performance.md (step 7).
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    init = {i.name: i for i in m.graph.initializer}

    def const(name: str, arr: np.ndarray) -> str:
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    zp = const("qb_pt_zero_point", np.array(128, dtype=np.uint8))
    one = const("qb_pt_one", np.array(1.0, dtype=np.float32))
    inv = const("qb_pt_inv127", np.array(1.0 / 127.0, dtype=np.float32))
    # max|x| floored at 127e-8 (s >= 1e-8): an all-zero row (padding) keeps s > 0; far below any
    # real activation scale.
    eps = const("qb_pt_eps127", np.array(127e-8, dtype=np.float32))
    axes = const("qb_pt_axes", np.array([-1], dtype=np.int64))
    nodes, quantized, replaced = [], {}, set()
    for n in m.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in init:
            nodes.append(n)
            continue
        w = numpy_helper.to_array(init[n.input[1]]).astype(np.float32)
        if w.ndim != 2:
            nodes.append(n)
            continue
        x = n.input[0]
        if x not in quantized and len(quantized) in per_tensor:
            q = f"{x}_qb_pt"
            nodes.append(helper.make_node("DynamicQuantizeLinear", [x], [q + "_xq", q + "_s", q + "_zp"]))
            quantized[x] = (q + "_xq", q + "_s", q + "_zp")
        elif x not in quantized:
            q = f"{x}_qb_pt"
            nodes += [
                # max|x| per row as max(max x, -min x): two reads, no |x| tensor written.
                helper.make_node("ReduceMax", [x, axes], [q + "_hi"], keepdims=1),
                helper.make_node("ReduceMin", [x, axes], [q + "_lo"], keepdims=1),
                helper.make_node("Neg", [q + "_lo"], [q + "_nlo"]),
                helper.make_node("Max", [q + "_hi", q + "_nlo", eps], [q + "_max"]),
                helper.make_node("Mul", [q + "_max", inv], [q + "_s"]),  # [.., 1]: one scale per row
                helper.make_node("Shape", [q + "_s"], [q + "_sshape"]),
                helper.make_node("Expand", [zp, q + "_sshape"], [q + "_zp"]),
                # Blocked quantisation (opset 21), one block per row: one pass that divides, rounds
                # half to even and saturates.
                helper.make_node("QuantizeLinear", [x, q + "_s", q + "_zp"], [q + "_xq"], axis=-1, block_size=w.shape[0]),
            ]
            quantized[x] = (q + "_xq", q + "_s", None)
        xq, xs, xzp = quantized[x]
        ws = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
        wq = np.clip(np.round(w / ws), -127, 127).astype(np.int8)
        p = n.name or n.output[0]
        replaced.add(n.input[1])
        if xzp is not None:  # per tensor: the scale is a scalar, MatMulIntegerToFloat applies it
            nodes.append(helper.make_node("MatMulIntegerToFloat", [xq, const(p + "_qb_wq", wq), xs,
                                                                   const(p + "_qb_ws", ws.astype(np.float32)), xzp],
                                          [n.output[0]], domain="com.microsoft"))
            continue
        nodes += [
            helper.make_node("MatMulIntegerToFloat", [xq, const(p + "_qb_wq", wq), one, const(p + "_qb_ws", ws.astype(np.float32)), zp],
                             [p + "_qb_f"], domain="com.microsoft"),
            helper.make_node("Mul", [p + "_qb_f", xs], [n.output[0]]),
        ]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    keep = [i for i in m.graph.initializer if i.name not in replaced]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    for o in m.opset_import:  # blocked QuantizeLinear; the exporter's other ops read the same in 21
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, 21)
    m.ir_version = max(m.ir_version, 10)
    onnx.save(m, str(dst))
    return len(replaced)


def _split_skip_layernorm(src: Path, dst: Path) -> int:
    """Every ``SkipLayerNormalization`` (com.microsoft) -> ``Add`` (input + skip), ``Add`` (+ bias,
    when it has one), ``LayerNormalization`` (opset 17); returns the count. Same arithmetic in
    float32; the fused kernel is the slower one on CPU (module docstring). Its optional mean and
    inverse-std outputs are never read in these graphs (refused if they were); the sum output, which
    the optimizer may hand to the next layer, is the second Add's (or the first's) output."""
    import onnx
    from onnx import helper

    m = onnx.load(str(src))
    read = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
    nodes, count = [], 0
    for n in m.graph.node:
        if n.op_type != "SkipLayerNormalization":
            nodes.append(n)
            continue
        outs = list(n.output) + [""] * (4 - len(n.output))
        if any(o and o in read for o in outs[1:3]):
            raise ModelError(f"{n.name}: SkipLayerNormalization's mean/inv_std outputs are read; cannot split it")
        ins = list(n.input) + [""] * (5 - len(n.input))
        x, skip, gamma, beta, bias = ins[:5]
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)
        p = n.name or n.output[0]
        total = outs[3] if outs[3] and outs[3] in read else p + "_sum"
        if bias:
            nodes += [helper.make_node("Add", [x, skip], [p + "_xs"]), helper.make_node("Add", [p + "_xs", bias], [total])]
        else:
            nodes.append(helper.make_node("Add", [x, skip], [total]))
        nodes.append(helper.make_node("LayerNormalization", [total, gamma] + ([beta] if beta else []), [outs[0]],
                                      axis=-1, epsilon=eps))
        count += 1
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, 17)
    onnx.save(m, str(dst))
    return count


def _metadata(merged, settings: QASettings, *, adapter_sha256: str, optimization: str, quantize: str) -> dict[str, str]:
    spec = merged.spec
    sw = np.asarray(merged.span_weight, dtype=np.float32)
    sb = np.asarray(merged.span_bias, dtype=np.float32)
    if sw.shape != (2, spec.hidden_size) or sb.shape != (2,):
        raise ModelError(f"span head has shape {sw.shape}+{sb.shape}, expected (2, {spec.hidden_size})+(2,)")
    if settings.max_seq_len > spec.max_position_embeddings:
        raise ModelError(f"max_seq_len {settings.max_seq_len} exceeds the position table ({spec.max_position_embeddings})")
    strip = _strip_accents(merged)
    ab = QAMeta(**abstention_fields(merged.qa_config))  # validated as the GGUF's are
    meta = {
        Key.VERSION: __version__,
        Key.TASK: TASK_QA,
        # float(np.float32) prints the shortest decimal that reads back as the same float32.
        Key.SPAN_HEAD_WEIGHT: json.dumps([float(x) for x in sw.ravel()]),
        Key.SPAN_HEAD_BIAS: json.dumps([float(x) for x in sb.ravel()]),
        Key.MAX_SEQ_LEN: str(settings.max_seq_len),
        Key.DOC_STRIDE: str(settings.doc_stride),
        Key.MAX_QUESTION_TOKENS: str(settings.max_question_tokens),
        Key.MAX_ANSWER_LEN: str(settings.max_answer_len),
        Key.LOWERCASE: "true" if spec.lowercase else "false",
        Key.SEGMENT_IDS: SegmentIds.ZEROS.value,
        Key.BASE_MODEL: merged.base_name or "",
        Key.ADAPTER_SHA256: adapter_sha256,
        Key.OUTTYPE: "f32" if quantize == "none" else quantize,
        OnnxKey.VOCAB: "\n".join(spec.vocab),
        OnnxKey.STRIP_ACCENTS: "" if strip is None else str(bool(strip)).lower(),
        OnnxKey.CONTEXT_LENGTH: str(spec.max_position_embeddings),
        OnnxKey.HIDDEN_SIZE: str(spec.hidden_size),
        OnnxKey.NUM_HEADS: str(spec.num_heads),
        OnnxKey.NUM_LAYERS: str(spec.num_layers),
        OnnxKey.OPTIMIZATION: optimization,
        OnnxKey.QUANTIZATION: quantize,
        OnnxKey.RECIPE: str(ONNX_RECIPE),
        # Abstention: the same fields export/run.py writes into the GGUF.
        Key.NEGATIVES: ab.negatives,
    }
    if ab.null_threshold is not None:
        meta[Key.NULL_THRESHOLD] = repr(float(ab.null_threshold))
        meta[Key.NULL_THRESHOLD_TUNING] = ab.null_threshold_tuning
    if ab.documents_null_threshold is not None:
        meta[Key.DOCUMENTS_NULL_THRESHOLD] = repr(float(ab.documents_null_threshold))
        meta[Key.DOCUMENTS_NULL_THRESHOLD_TUNING] = ab.documents_null_threshold_tuning
        meta[Key.DOCUMENTS_PASSAGE_WEIGHT] = repr(float(ab.documents_passage_weight))
    return meta


def _strip_accents(merged) -> bool | None:
    """The HF tokenizer's ``strip_accents`` (None: BERT's default, strip when lowercasing)."""
    try:
        from qabridge.train.model import resolve_base, tokenizer_dir

        cfg = Path(tokenizer_dir(resolve_base(merged.base_name))) / "tokenizer_config.json"
        return json.loads(cfg.read_text()).get("strip_accents") if cfg.exists() else None
    except Exception:  # a base we cannot resolve keeps the default, as the GGUF does
        return None


def _write_with_metadata(src: Path, out: Path, meta: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(src))
    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_onnx(
    adapter: str | os.PathLike,
    output: str | os.PathLike,
    *,
    quantize: str = "int8",
    base: str | None = None,
    optimize: bool = True,
    force: bool = False,
    merged=None,
) -> dict:
    """Adapter (or full fine-tuned directory) -> one self-contained ``.onnx`` file.

    ``quantize``: "int8" (per-token activations, per-channel weights), "int8-tensor" (ORT's
    dynamic recipe) or "none" (fp32); see the module docstring. ``optimize`` runs ORT's BERT
    fusions (what the issue calls O2); off, the plain TorchScript export is kept (fp32 only).
    ``merged`` reuses a :class:`~qabridge.export.merge.MergedModel` (one merge for several files).
    Returns path, size, sha256, outtype and the fusion counts.
    """
    if quantize not in QUANTIZE_CHOICES:
        raise UsageError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}, not {quantize!r}")
    if quantize != "none" and not optimize:
        raise UsageError("int8 quantisation applies to the fused graph; drop --no-optimize")
    out = prepare_onnx_output(output, force=force)
    adapter = Path(adapter)
    if merged is None:
        if not adapter.is_dir():
            raise ModelError(f"{adapter}: no such adapter directory")
        from .merge import merge_adapter

        merged = merge_adapter(adapter, base=base)
    if merged.span_weight is None:
        raise ModelError(f"{adapter}: no span head; the ONNX export is for QA models")
    from qabridge.core.hashing import adapter_hash

    settings = QASettings.from_mapping(merged.qa_config)
    meta = _metadata(merged, settings, adapter_sha256=adapter_hash(adapter) if adapter.is_dir() else "",
                     optimization="O2" if optimize else "none", quantize=quantize)
    info: dict = {}
    with tempfile.TemporaryDirectory(prefix="qabridge-onnx-", dir=out.parent) as td:
        td = Path(td)
        cur = td / "fp32.onnx"
        _export_fp32(merged, cur)
        if optimize:
            info["fused"] = _optimize(cur, td / "o2.onnx", merged.spec, mha=quantize == "int8")
            cur = td / "o2.onnx"
        if quantize == "int8":
            info["quantized_matmuls"] = _quantize_per_token(cur, td / "int8.onnx")
            cur = td / "int8.onnx"
        elif quantize == "int8-tensor":
            _quantize(cur, td / "int8.onnx", TENSOR_INT8_OPS)
            cur = td / "int8.onnx"
        if optimize:
            info["split_skip_layernorm"] = _split_skip_layernorm(cur, td / "split.onnx")
            cur = td / "split.onnx"
        _write_with_metadata(cur, out, meta)
    return {"path": str(out), "size": out.stat().st_size, "sha256": sha256_file(out),
            "outtype": meta[Key.OUTTYPE], "optimization": meta[OnnxKey.OPTIMIZATION], **info}
