"""LoRA adapters applied at run time over one OpenVINO base (``serve --adapter ... --engine openvino``).

The base encoder's IR is compiled once with a low-rank branch beside every Linear an adapter
targets: ``y = x W + (x A^T)(s B)^T``, where ``A`` and ``s B`` (peft's scale folded in) are inputs
of the graph, zero-padded to the largest rank served, so an adapter is a set of input tensors (its
LoRA GGUF's pairs, a few MB) and one compiled base serves them all. Each infer request keeps the
adapter it ran last and changes its LoRA inputs (shared with numpy, not copied) only when the next
window is another adapter's. The span head stays per adapter, in numpy, as in every engine.
Bases are f32 or bf16, never int8 (``bridge.adapters.openvino_precision`` says why).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from qabridge.errors import ModelError

from .openvino_engine import OpenVinoEngine, OpenVinoModel

#: The Linear layers of a BERT encoder layer, as a converted graph names their MatMul
#: (``.../layer.3/attention/self/query/MatMul``), and as HF names the module.
LINEARS = ("attention/self/query", "attention/self/key", "attention/self/value", "attention/output/dense",
           "intermediate/dense", "output/dense")
_MATMUL = re.compile(r"layer\.(\d+)/(" + "|".join(LINEARS) + r")/MatMul$")
LORA_A, LORA_B = "lora_a:", "lora_b:"


def hf_module(layer: int, linear: str) -> str:
    return f"encoder.layer.{layer}." + linear.replace("/", ".")


def gguf_names(num_layers: int) -> dict[str, str]:
    """{GGUF tensor name (``blk.0.attn_q.weight``): HF module (``encoder.layer.0.attention.self.query``)}."""
    import gguf

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, num_layers)
    out = {}
    for i in range(num_layers):
        for lin in LINEARS:
            hf = hf_module(i, lin)
            g = name_map.get_name(hf + ".weight", try_suffixes=(".weight",))
            if g is None:
                raise ModelError(f"gguf has no BERT tensor name for {hf}")
            out[g] = hf
    return out


class LoraWeights:
    """One LoRA GGUF's pairs by HF module, ``(A [r, in], B [out, r])``, as views of the mapped file
    (read when copied into the engine's inputs, not before), and the file's LoRA alpha."""

    def __init__(self, path: Path):
        from gguf import GGUFReader

        self.path = Path(path)
        r = GGUFReader(str(self.path))

        def scalar(key: str) -> float:
            field = r.fields.get(key)
            if field is None:
                raise ModelError(f"{self.path}: not a LoRA GGUF of a BERT encoder (no {key})")
            return float(field.parts[field.data[0]][0])

        alpha = scalar("adapter.lora.alpha")
        names = gguf_names(int(scalar("bert.block_count")))
        halves: dict[str, dict[str, np.ndarray]] = {}
        for t in r.tensors:
            base, _, part = t.name.rpartition(".")
            if part not in ("lora_a", "lora_b"):
                continue
            if base not in names:
                raise ModelError(f"{self.path}: LoRA tensor {t.name} is not on a Linear the OpenVINO engine adapts")
            if t.data.dtype != np.float32 or t.data.ndim != 2:
                raise ModelError(f"{self.path}: LoRA tensor {t.name} is not a float32 matrix")
            halves.setdefault(names[base], {})[part] = t.data
        self.pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for module, h in halves.items():
            a, b = h.get("lora_a"), h.get("lora_b")
            if a is None or b is None or a.shape[0] != b.shape[1]:
                raise ModelError(f"{self.path}: LoRA pair of {module} is incomplete or mis-shaped")
            self.pairs[module] = (a, b)
        if not self.pairs:
            raise ModelError(f"{self.path}: no LoRA pairs")
        self.rank = max(a.shape[0] for a, _ in self.pairs.values())
        self.alpha = alpha  # llama.cpp scales each pair by alpha over the rank it reads from B


def add_lora_inputs(model, shapes: dict[str, tuple[int, int]], rank: int) -> list[list[str]]:
    """Add a LoRA branch to ``model`` (an ``openvino.Model``, changed in place) beside each Linear in
    ``shapes`` ({HF module: (in, out)}). Linears that read one input (a layer's query, key and value)
    share one A input, their A's stacked (``[k * rank, in]``): one matmul, split, instead of k (no
    faster, measured; fewer inputs to feed). Returns the groups of modules, one per A input (``LORA_A`` + the first's name);
    each module has its own B input (``LORA_B`` + its name)."""
    import openvino as ov
    from openvino import opset13 as ops

    found = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "MatMul" and (m := _MATMUL.search(op.get_friendly_name())):
            module = hf_module(int(m.group(1)), m.group(2))
            if module in found:
                raise ModelError(f"two MatMuls of {module} in the OpenVINO graph")
            found[module] = op
    missing = sorted(set(shapes) - found.keys())
    if missing:
        raise ModelError(f"the OpenVINO base has no Linear for {missing[:3]}")
    groups: dict[str, list[str]] = {}
    for module in shapes:
        x = found[module].input_value(0)
        groups.setdefault(f"{x.get_node().get_friendly_name()}:{x.get_index()}", []).append(module)

    def param(shape, name):
        p = ops.parameter(shape, ov.Type.f32, name=name)
        p.output(0).set_names({name})
        return p

    params = []
    for mods in groups.values():
        x = found[mods[0]].input_value(0)
        a = param([rank * len(mods), shapes[mods[0]][0]], LORA_A + mods[0])
        low = ops.matmul(x, a, False, True)
        parts = ops.split(low, -1, len(mods)).outputs() if len(mods) > 1 else [low.output(0)]
        params.append(a)
        for module, part in zip(mods, parts):
            mm = found[module]
            b = param([shapes[module][1], rank], LORA_B + module)
            targets = list(mm.output(0).get_target_inputs())
            out = ops.add(mm.output(0), ops.matmul(part, b, False, True))
            for t in targets:
                t.replace_source_output(out.output(0))
            params.append(b)
    model.add_parameters(params)
    model.validate_nodes_and_infer_types()
    return list(groups.values())


class OpenVinoLoraEngine(OpenVinoEngine):
    """An OpenVINO base with LoRA inputs; ``logits(..., adapter=handle, head=head)`` encodes with
    one adapter (a :meth:`load_adapter` handle) and that adapter's span head."""

    name = "openvino+lora"

    def __init__(self, base_ir: str | Path, lora_files: list[Path], *, n_threads: int | None = None, **kw):
        weights = [LoraWeights(Path(f)) for f in lora_files]
        self.rank = max(w.rank for w in weights)
        self._shapes: dict[str, tuple[int, int]] = {}
        for w in weights:
            for module, (a, b) in w.pairs.items():
                if self._shapes.setdefault(module, (a.shape[1], b.shape[0])) != (a.shape[1], b.shape[0]):
                    raise ModelError(f"{w.path}: LoRA of {module} is shaped {(a.shape[1], b.shape[0])}, "
                                     f"another adapter's {self._shapes[module]}")
        self._weights = weights  # until the graph's input groups are known (then each adapter's inputs)
        self._handles: dict[Path, dict[str, np.ndarray]] = {}
        self._current: dict[int, int] = {}  # id(infer request) -> id(the tensors it holds)
        super().__init__(OpenVinoModel(base_ir, n_threads=n_threads, transform=self._with_lora_inputs),
                         n_threads=n_threads, **kw)

    def _with_lora_inputs(self, model):
        self._groups = add_lora_inputs(model, self._shapes, self.rank)
        self._none = self._tensors(None)  # the base alone (the probe at start)
        while self._weights:  # each file's pages read (and released) one file at a time (peak RSS)
            w = self._weights.pop(0)
            self._handles[w.path.resolve()] = self._tensors(w)
            del w
        return model

    def _tensors(self, w: LoraWeights | None) -> dict[str, np.ndarray]:
        """The LoRA inputs of one adapter (``None``: none), zero-padded to the served rank (zero
        where it has no pair), its scale folded into B."""
        out = {}
        pairs = w.pairs if w is not None else {}
        for mods in self._groups:
            a = np.zeros((self.rank * len(mods), self._shapes[mods[0]][0]), np.float32)
            for i, module in enumerate(mods):
                b = np.zeros((self._shapes[module][1], self.rank), np.float32)
                if module in pairs:
                    pa, pb = pairs[module]
                    a[i * self.rank: i * self.rank + pa.shape[0]] = pa
                    np.multiply(pb, np.float32(w.alpha / pb.shape[1]), out=b[:, : pb.shape[1]])
                out[LORA_B + module] = b
            out[LORA_A + mods[0]] = a
        return out

    def load_adapter(self, path) -> dict[str, np.ndarray]:
        """The handle of a LoRA GGUF given at construction (its LoRA inputs)."""
        handle = self._handles.get(Path(path).resolve())
        if handle is None:
            raise ModelError(f"{path}: not one of the adapters this OpenVINO base was compiled for")
        return handle

    def _use(self, req, adapter) -> None:
        import openvino as ov

        tensors = self._none if adapter is None else adapter
        if self._current.get(id(req)) == id(tensors):
            return
        for name, arr in tensors.items():
            req.set_tensor(name, ov.Tensor(arr, shared_memory=True))
        self._current[id(req)] = id(tensors)
