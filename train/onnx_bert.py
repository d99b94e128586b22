"""A BERT encoder exported to ONNX by torch -> a HF ``BertModel`` (config + float32 tensors).

torch's exporter keeps the names of embeddings, LayerNorms and biases but gives every Linear weight
an anonymous name (``onnx::MatMul_1525``) and stores it transposed, as the ``MatMul`` operand. The
graph still says which is which: each such ``MatMul`` feeds an ``Add`` with the Linear's named bias,
so the weight takes the bias's name (``...query.bias`` -> ``...query.weight``) and is transposed
back to torch's (out, in). Hyper-parameters that shapes do not give (heads, LayerNorm epsilon,
activation) are read from the graph's constants. Needs numpy and onnx only, no torch.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

import numpy as np

from qabridge.errors import ModelError

_EMBEDDINGS = (
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
)
_PER_LAYER = tuple(
    f"{m}.{p}"
    for m in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    )
    for p in ("weight", "bias")
)
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")


def expected_names(num_layers: int) -> set[str]:
    """Every parameter of a BertModel without pooler, in HF names."""
    return set(_EMBEDDINGS) | {f"encoder.layer.{i}.{p}" for i in range(num_layers) for p in _PER_LAYER}


def tensor_digest(tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes in name order: what a conversion produced,
    independent of how safetensors lays the file out (its header format may change)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _scalar(const_values: dict[str, np.ndarray], name: str) -> float | None:
    v = const_values.get(name)
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def convert(model) -> tuple[dict, dict[str, np.ndarray]]:
    """``(config.json dict, {HF name: float32 array})`` of a torch-exported BERT ``onnx.ModelProto``."""
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consts: dict[str, np.ndarray] = {}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def arr(name: str) -> np.ndarray:
        a = numpy_helper.to_array(inits[name])
        if a.dtype != np.float32:
            raise ModelError(f"ONNX initialiser {name} is {a.dtype}, expected float32 (an fp32 export)")
        return a

    tensors: dict[str, np.ndarray] = {}
    for name in inits:
        if name.startswith(("embeddings.", "encoder.layer.")):
            tensors[name] = arr(name)

    # Anonymous Linear weights: MatMul(x, W) -> Add(named bias, .) names W.
    for n in g.node:
        if n.op_type != "MatMul" or len(n.input) != 2 or n.input[1] not in inits:
            continue
        w = n.input[1]
        bias = [i for c in consumers.get(n.output[0], []) if c.op_type == "Add" for i in c.input
                if i in inits and i.endswith(".bias")]
        if len(bias) != 1:
            raise ModelError(f"ONNX MatMul on {w} has no single named bias to take its name from")
        hf = bias[0].removesuffix(".bias") + ".weight"
        if hf in tensors:
            raise ModelError(f"ONNX graph: two MatMul weights map to {hf}")
        tensors[hf] = np.ascontiguousarray(arr(w).T)  # MatMul operand is (in, out); torch Linear is (out, in)

    layers = sorted({int(m.group(1)) for k in tensors if (m := _LAYER.match(k))})
    if not layers or layers != list(range(len(layers))):
        raise ModelError(f"ONNX graph: encoder layers {layers} are not 0..N-1 (not a BERT encoder export)")
    num_layers = len(layers)
    want = expected_names(num_layers)
    missing, extra = sorted(want - tensors.keys()), sorted(tensors.keys() - want)
    if missing or extra:
        raise ModelError(f"ONNX graph is not a plain BERT encoder: missing {missing[:4]}, unexpected {extra[:4]}")

    vocab, hidden = tensors["embeddings.word_embeddings.weight"].shape
    intermediate = tensors["encoder.layer.0.intermediate.dense.weight"].shape[0]

    # Heads: attention scores QK^T (a MatMul of two activations) are divided by sqrt(head_dim).
    head_dims = set()
    for n in g.node:
        if n.op_type == "MatMul" and not any(i in inits for i in n.input):
            for c in consumers.get(n.output[0], []):
                if c.op_type == "Div" and (s := _scalar(consts, c.input[1])) is not None:
                    head_dims.add(round(s * s))
    if len(head_dims) != 1 or hidden % next(iter(head_dims)):
        raise ModelError(f"ONNX graph: cannot read the attention head size (found {sorted(head_dims)})")
    heads = hidden // head_dims.pop()

    # LayerNorm epsilon: Add(ReduceMean(Pow(x - mean, 2)), eps).
    eps = set()
    for n in g.node:
        if n.op_type == "Add" and (p := producer.get(n.input[0])) is not None and p.op_type == "ReduceMean":
            q = producer.get(p.input[0])
            if q is not None and q.op_type == "Pow" and (e := _scalar(consts, n.input[1])) is not None:
                eps.add(float(f"{e:.6g}"))  # float32 1e-12 reads back as 9.99999996e-13
    if len(eps) != 1:
        raise ModelError(f"ONNX graph: cannot read the LayerNorm epsilon (found {sorted(eps)})")

    # Exact (erf) GELU, once per layer: llama.cpp's bert graph and HF's "gelu" compute this one.
    erfs = sum(n.op_type == "Erf" for n in g.node)
    if erfs != num_layers:
        raise ModelError(f"ONNX graph: {erfs} Erf nodes for {num_layers} layers; only exact-GELU BERT is supported")

    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "attention_probs_dropout_prob": 0.1,
        "hidden_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_size": int(hidden),
        "initializer_range": 0.02,
        "intermediate_size": int(intermediate),
        "layer_norm_eps": eps.pop(),
        "max_position_embeddings": int(tensors["embeddings.position_embeddings.weight"].shape[0]),
        "num_attention_heads": int(heads),
        "num_hidden_layers": num_layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": int(tensors["embeddings.token_type_embeddings.weight"].shape[0]),
        "vocab_size": int(vocab),
        "use_cache": True,
    }
    return config, tensors
