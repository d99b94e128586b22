"""The native peers: OpenVINO and CTranslate2 encoders behind qabridge's tokenizer, windows and numpy
span head (runs in .venv with the ``bench`` extra). Launched by scripts/bench.py, one per system.

Neither engine has a QA pipeline of its own for BERT, so a user of either writes this glue; the
encoder is theirs, everything around it is the same code the bridge runs, so a row measures the
engine. Reads a JSON job line on stdin, then answers bursts (bench_child.serve_turns):

- ``{"prepare": true, "out_dir": ..., "merged_dir": ..., "adapter": ..., "calibration": [{question, context}, ...]}``:
  build the files once: the merged model as an OpenVINO IR (f32), the same quantised by NNCF
  (post-training static int8, ``ModelType.TRANSFORMER``, calibrated on the given windows: SQuAD
  *train* questions, never dev), and CTranslate2's int8 conversion of the merged BertModel.
- ``{"backend": "openvino-fp32" | "openvino-int8" | "ct2-int8", "out_dir": ..., "clients": N, "threads": T}``.

OpenVINO: one compiled model, LATENCY hint for one client, THROUGHPUT (its own streams) for
several, an infer request per client thread; its default inference precision (bf16 on CPUs with
AMX, f32 elsewhere) for "fp32". CTranslate2: ``Encoder(compute_type="int8")``, all threads in one
replica for one client, one thread per replica (``inter_threads`` = threads) for several.
"""

import json
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from bench_child import serve_turns  # beside this file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare(job: dict) -> dict:
    import nncf
    import openvino as ov

    from qabridge.export.openvino_export import calibration_windows, export_openvino

    out = Path(job["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    f32 = out / "ov-f32.xml"
    if not f32.exists():
        export_openvino(job["adapter"], f32, precision="f32", force=True)
    q = out / "ov-nncf-int8.xml"
    if not q.exists():
        calib = calibration_windows(_ir_metadata(f32), job["calibration"])
        model = ov.Core().read_model(str(f32))
        qm = nncf.quantize(model, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))
        meta = model.get_rt_info("qabridge_metadata").astype(str)
        qm.set_rt_info(meta, "qabridge_metadata")
        ov.save_model(qm, str(q))
    ct2 = out / "ct2-int8"
    if not (ct2 / "model.bin").exists():
        from ctranslate2.converters import TransformersConverter

        TransformersConverter(job["merged_dir"]).convert(str(ct2), quantization="int8", force=True)
    return {"ov-f32": str(f32), "ov-int8": str(q), "ct2-int8": str(ct2)}


def _ir_metadata(xml: Path):
    """The qabridge metadata of an IR (tokenizer, windows, span head) read from its .xml alone."""
    from qabridge.export.onnx_export import OnnxMetadata

    node = next(e for e in ET.parse(xml).getroot().iter("qabridge_metadata"))
    return OnnxMetadata(xml, json.loads(node.get("value")))


class OpenVinoEncoder:
    def __init__(self, xml: Path, threads: int, clients: int):
        import openvino as ov

        hint = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1} if clients == 1 else {"PERFORMANCE_HINT": "THROUGHPUT"}
        self.compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": threads, **hint})
        self.local = threading.local()
        # One call from this thread first: OpenVINO 2026.4's binding deadlocks when several threads
        # make their first call at once (bridge/openvino_engine.py).
        self.hidden(np.array([[101, 102]]), np.ones((1, 2), dtype=np.int64))

    def hidden(self, ids, mask):
        req = getattr(self.local, "req", None)
        if req is None:  # one infer request per client thread
            req = self.local.req = self.compiled.create_infer_request()
        req.infer({"input_ids": ids, "attention_mask": mask})
        return np.array(req.get_output_tensor(0).data)


class CT2Encoder:
    def __init__(self, model_dir: Path, threads: int, clients: int):
        import ctranslate2

        inter = 1 if clients == 1 else threads
        self.enc = ctranslate2.Encoder(str(model_dir), device="cpu", compute_type="int8",
                                       intra_threads=threads // inter, inter_threads=inter)

    def hidden(self, ids, mask):
        lens = mask.sum(1)
        toks = [r[:n].tolist() for r, n in zip(ids, lens)]
        out = self.enc.forward_batch(toks, token_type_ids=[[0] * len(t) for t in toks])
        return np.asarray(out.last_hidden_state)


class Encoder:
    """``logits(windows)`` over a native encoder: the bridge's batching rule and span head."""

    def __init__(self, native, head):
        self.native, self.head = native, head

    def logits(self, windows, deadline=None):
        from qabridge.bridge.onnx_engine import BATCH_TOKENS, token_batches
        from qabridge.core.windows import padded_batch

        out = [None] * len(windows)
        for chunk in token_batches([len(w.input_ids) for w in windows], BATCH_TOKENS):
            ids, mask = padded_batch([windows[i].input_ids for i in chunk])
            h = self.native.hidden(ids, mask)
            for j, i in enumerate(chunk):
                out[i] = self.head.logits(h[j, : len(windows[i].input_ids)])
        return out


def main() -> None:
    job = json.loads(sys.stdin.readline())
    if job.get("prepare"):
        print(json.dumps(prepare(job)))
        return
    from qabridge.core.pipeline import QAPipeline

    out = Path(job["out_dir"])
    meta = _ir_metadata(out / "ov-f32.xml")
    b, threads, clients = job["backend"], job.get("threads", 2), job["clients"]
    if b.startswith("openvino"):
        native = OpenVinoEncoder(out / ("ov-f32.xml" if b == "openvino-fp32" else "ov-nncf-int8.xml"), threads, clients)
    else:
        native = CT2Encoder(out / "ct2-int8", threads, clients)
    qa = QAPipeline(meta.tokenizer, Encoder(native, meta.span_head), meta.window_spec, max_answer_len=meta.max_answer_len)

    def ask(it):
        sp = qa.predict(it["question"], it["context"]).spans
        return it["context"][sp[0].start : sp[0].end] if sp else ""

    import openvino

    versions = {"openvino": openvino.__version__}
    try:
        import ctranslate2

        versions["ctranslate2"] = ctranslate2.__version__
    except ImportError:
        pass
    serve_turns(job, ask, versions)


if __name__ == "__main__":
    main()
