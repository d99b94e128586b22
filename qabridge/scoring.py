"""What scores an adapter in ``qabridge adapt`` and its benchmark: the engine ``serve`` would run.

Lives above the stages because it joins three of them: the adapter (train) is exported to ONNX
int8 (export) and loaded as the bridge loads a model file (bridge).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qabridge.core.pipeline import QAPipeline


def scoring_pipeline(adapter: Path, engine: str, work: Path, device: str = "cpu") -> QAPipeline:
    """The pipeline that scores ``adapter``: its ONNX int8 export (made once in ``work``; ~3x faster
    than torch on a long document's windows, within 0.1 F1 of it on SQuAD) or torch fp32."""
    if engine == "torch":
        from qabridge.train.evaluate import torch_pipeline

        return torch_pipeline(adapter, device=device)
    from qabridge.bridge.engine_select import file_pipeline
    from qabridge.export.onnx_export import export_onnx

    f = work / "model.int8.onnx"
    if not f.exists():
        work.mkdir(parents=True, exist_ok=True)
        export_onnx(adapter, f, quantize="int8", force=True)
    return file_pipeline(f, "onnx")


def scorer(engine: str, device: str = "cpu") -> Callable[[Path, Path], QAPipeline]:
    """``scorer(adapter_dir, work_dir)`` as ``qabridge.train.adapt.adapt`` takes it."""
    return lambda adapter, work: scoring_pipeline(adapter, engine, work, device)
