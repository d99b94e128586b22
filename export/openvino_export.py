"""Write a merged BERT encoder as an OpenVINO IR (``.xml`` + ``.bin``) for the OpenVINO engine.

The graph is the plain (unfused, fp32) ONNX export of :mod:`qabridge.export.onnx_export`,
converted by OpenVINO's own frontend: ORT's fused contrib ops and its int8 graphs are not
convertible (OpenVINO 2026.4 refuses them), and OpenVINO fuses the plain graph itself. The
``qabridge.*`` metadata (span head, window settings, vocabulary) rides in the IR's ``rt_info`` as
one JSON string, so the ``.xml``/``.bin`` pair alone serves (bridge/openvino_engine.py).

``precision`` is the inference precision the engine asks OpenVINO's CPU plugin for, recorded in the
file (``qabridge.outtype``): ``bf16`` (AMX or AVX512-BF16 kernels; weights stored as fp16, half the
file) or ``f32`` (weights stored fp32).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from qabridge.core.gguf_keys import Key
from qabridge.errors import ModelError, UsageError

from .gguf_writer import prepare_output

PRECISIONS = ("bf16", "f32")
#: The rt_info entry that holds the qabridge metadata (a JSON object of ``qabridge.*`` keys).
RT_INFO_KEY = "qabridge_metadata"


def owned_by_qabridge(path: Path) -> bool:
    """True if ``path`` is an IR qabridge wrote (its rt_info has :data:`RT_INFO_KEY`)."""
    try:
        return RT_INFO_KEY in Path(path).read_text(encoding="utf-8", errors="replace")[-2_000_000:]
    except OSError:
        return False


def export_openvino(adapter: str | os.PathLike, output: str | os.PathLike, *, precision: str = "bf16",
                    base: str | None = None, force: bool = False, merged=None) -> dict:
    """Adapter (or full fine-tuned directory) -> ``output`` (``.xml``, its ``.bin`` beside it)."""
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
    from qabridge.core.hashing import sha256_file

    from .onnx_export import export_onnx

    with tempfile.TemporaryDirectory(prefix="qabridge-ov-", dir=out.parent) as td:
        plain = Path(td) / "fp32.onnx"
        export_onnx(adapter, plain, quantize="none", optimize=False, base=base, force=True, merged=merged)
        meta = {p.key: p.value for p in onnx.load(str(plain), load_external_data=False).metadata_props}
        try:
            model = ov.convert_model(str(plain))
        except Exception as exc:  # OpConversionFailure and kin: say which file and why, briefly
            raise ModelError(f"OpenVINO could not convert the encoder: {str(exc).strip()[:300]}") from None
    meta[Key.OUTTYPE] = precision
    model.set_rt_info(json.dumps(meta), RT_INFO_KEY)
    tmp = out.with_name(out.stem + f".{os.getpid()}.tmp.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=precision != "f32")
    os.replace(tmp.with_suffix(".bin"), out.with_suffix(".bin"))
    os.replace(tmp, out)
    return {"path": str(out), "size": out.stat().st_size + out.with_suffix(".bin").stat().st_size,
            "sha256": sha256_file(out.with_suffix(".bin")), "outtype": precision}
