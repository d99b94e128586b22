"""Write a merged BERT encoder as an OpenVINO IR (``.xml`` + ``.bin``) for the OpenVINO engine.

The graph is the plain (unfused, fp32) ONNX export of :mod:`qabridge.export.onnx_export`,
converted by OpenVINO's own frontend: ORT's fused contrib ops and its int8 graphs are not
convertible (OpenVINO 2026.4 refuses them), and OpenVINO fuses the plain graph itself. The
``qabridge.*`` metadata (span head, window settings, vocabulary) rides in the IR's ``rt_info`` as
one JSON string, so the ``.xml``/``.bin`` pair alone serves (bridge/openvino_engine.py).

``precision`` is recorded in the file (``qabridge.outtype``): ``bf16`` (the CPU plugin is asked for
AMX or AVX512-BF16 kernels; weights stored as fp16, half the file), ``f32`` (weights stored fp32) or
``int8``: NNCF's post-training static quantisation (int8 weights and activations through VNNI/AMX
kernels) calibrated on :data:`CALIBRATION` (SQuAD v1.1 train questions shipped with the package, so
it works offline and never sees the dev set the parity checks use), with the FFN down-projections
of the first :data:`INT8_KEEP_LAYERS` layers left in floating point: on every 5th SQuAD dev question
(2,114) the plain recipe agreed with OpenVINO f32 on 95.51% of spans, this one on 97.87% (F1 85.50
vs 85.58) at ~0.92x bf16's time per window (2-core Intel Xeon with AMX; docs/performance.md).
The rest of an int8 graph runs at bf16 where the CPU has bf16 kernels, else f32. The word
embedding table is stored as fp16, not int8: OpenVINO 2026.4's CPU plugin expands NNCF's int8 table
to f32 in every compilation (47 MB each), and a lookup gains nothing from int8 (a compiled int8
model plus the engine's multi-stream one and 10 requests: 285 against 351 MB RSS, 2-core Intel Xeon).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from pathlib import Path

from qabridge.core.gguf_keys import Key
from qabridge.errors import ModelError, UsageError

from .gguf_writer import prepare_output

PRECISIONS = ("bf16", "f32", "int8")
#: Calibration questions for int8: every 271st question of SQuAD v1.1 train, the first 300
#: (export/data/README.md), one window each.
CALIBRATION = Path(__file__).resolve().parent / "data" / "calibration_squad_train.json.gz"
#: Layers whose FFN down-projection (``layer.N/output/dense``) stays in floating point under int8:
#: the early layers' GELU outputs have the widest ranges, and their int8 error moved most spans.
INT8_KEEP_LAYERS = 3
#: What a built-in int8 model's cached file name carries (a changed recipe rebuilds): the layers kept
#: in floating point and the fp16 embedding table.
INT8_RECIPE = f"k{INT8_KEEP_LAYERS}.e16"
#: The rt_info entry that holds the qabridge metadata (a JSON object of ``qabridge.*`` keys).
RT_INFO_KEY = "qabridge_metadata"


def owned_by_qabridge(path: Path) -> bool:
    """True if ``path`` is an IR qabridge wrote (its rt_info has :data:`RT_INFO_KEY`)."""
    try:
        return RT_INFO_KEY in Path(path).read_text(encoding="utf-8", errors="replace")[-2_000_000:]
    except OSError:
        return False


def export_openvino(adapter: str | os.PathLike, output: str | os.PathLike, *, precision: str = "bf16",
                    base: str | None = None, force: bool = False, merged=None,
                    extra_meta: dict[str, str] | None = None) -> dict:
    """Adapter (or full fine-tuned directory) -> ``output`` (``.xml``, its ``.bin`` beside it);
    ``extra_meta`` joins the ``qabridge.*`` metadata."""
    if precision not in PRECISIONS:
        raise UsageError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    out = Path(output)
    if out.suffix != ".xml":
        raise UsageError(f"{out}: an OpenVINO model is written as a .xml file (its weights go to a .bin beside it)")
    out = prepare_output(out, force=force, owned=owned_by_qabridge, kind=".xml")
    try:
        import onnx
        import openvino as ov
    except ImportError as exc:
        raise UsageError(f"--format openvino needs the openvino package (pip install 'qabridge[openvino]'): {exc}") from None
    if precision == "int8" and importlib.util.find_spec("nncf") is None:
        raise UsageError("--format openvino --outtype int8 needs the nncf package (pip install 'qabridge[openvino]')")
    from qabridge.core.hashing import sha256_file

    from .onnx_export import OnnxMetadata, export_onnx

    with tempfile.TemporaryDirectory(prefix="qabridge-ov-", dir=out.parent) as td:
        plain = Path(td) / "fp32.onnx"
        export_onnx(adapter, plain, quantize="none", optimize=False, base=base, force=True, merged=merged)
        meta = {p.key: p.value for p in onnx.load(str(plain), load_external_data=False).metadata_props}
        try:
            model = ov.convert_model(str(plain))
        except Exception as exc:  # OpConversionFailure and kin: say which file and why, briefly
            raise ModelError(f"OpenVINO could not convert the encoder: {str(exc).strip()[:300]}") from None
        if precision == "int8":
            model = _embeddings_as_f16(_quantize_int8(model, calibration_windows(OnnxMetadata(plain, meta))))
    meta[Key.OUTTYPE] = precision
    meta.update(extra_meta or {})
    model.set_rt_info(json.dumps(meta), RT_INFO_KEY)
    tmp = out.with_name(out.stem + f".{os.getpid()}.tmp.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=precision != "f32")
    os.replace(tmp.with_suffix(".bin"), out.with_suffix(".bin"))
    os.replace(tmp, out)
    return {"path": str(out), "size": out.stat().st_size + out.with_suffix(".bin").stat().st_size,
            "sha256": sha256_file(out.with_suffix(".bin")), "outtype": precision}


def calibration_windows(model, questions: list[dict] | None = None) -> list[dict]:
    """The first window of each calibration question (``{"question", "context"}``; default
    :data:`CALIBRATION`) as the engine feeds it (``input_ids``, ``attention_mask``), cut by
    ``model``'s ``tokenizer`` and ``window_spec`` (a qabridge model file's metadata)."""
    from qabridge.core.pipeline import QAPipeline
    from qabridge.core.windows import padded_batch

    if questions is None:
        questions = json.loads(gzip.decompress(CALIBRATION.read_bytes()).decode("utf-8"))
    cut = QAPipeline(model.tokenizer, None, model.window_spec)
    out = []
    for q in questions:
        for w in cut.prepare(q["question"], q["context"])[1][:1]:
            ids, mask = padded_batch([w.input_ids], model.tokenizer.pad_id)
            out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _quantize_int8(model, calib: list[dict]):
    import logging

    import nncf

    # NNCF logs every step at INFO; its progress bars stay (a minute's work).
    logging.getLogger("nncf").setLevel(logging.WARNING)
    keep = nncf.IgnoredScope(patterns=[rf".*layer\.{i}/output/dense/MatMul" for i in range(INT8_KEEP_LAYERS)],
                             validate=False)
    try:
        return nncf.quantize(model, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(calib), ignored_scope=keep)
    except Exception as exc:
        raise ModelError(f"NNCF could not quantise the encoder: {str(exc).strip()[:300]}") from None


def _embeddings_as_f16(model):
    """Each Gather whose table NNCF stored as int8 (Constant -> Convert -> Multiply by its scale)
    reads an fp16 copy of the dequantised table instead (see the module doc)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    for gather in [op for op in model.get_ops() if op.get_type_name() == "Gather"]:
        mul = gather.input_value(0).get_node()
        if mul.get_type_name() != "Multiply":
            continue
        convert, scale = (mul.input_value(i).get_node() for i in (0, 1))
        if convert.get_type_name() != "Convert" or scale.get_type_name() != "Constant":
            continue
        table = convert.input_value(0).get_node()
        if table.get_type_name() != "Constant":
            continue
        f32 = table.get_data().astype(np.float32) * scale.get_data().astype(np.float32)
        gather.input(0).replace_source_output(ops.convert(ops.constant(f32.astype(np.float16)), ov.Type.f32).output(0))
    return model
