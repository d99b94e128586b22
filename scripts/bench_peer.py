"""The peers: transformers 4.57.6 `pipeline("question-answering")`, in-process (runs in .venv-peer).

Reads a JSON job on stdin and answers it (see below). Launched by scripts/bench.py.

- ``{"prepare": "ort", "model_dir": ..., "out_dir": ...}``: export the merged model with optimum
  (ORT fp32), fuse it with optimum's O2 (ORTOptimizer) and quantise the fused graph with
  ``onnxruntime.quantization.quantize_dynamic`` (int8, per-channel): the configuration a
  performance-minded user picks (issue 12). Writes ``out_dir/{fp32,o2-int8}``.
- ``{"backend": "torch"|"ort", "model_dir": ..., "clients": N, "threads": T, "warmup": [...]}``
  (the first line of stdin): load, warm up, then answer the bursts of questions that follow, one
  JSON line each (bench_child.serve_turns). ORT: with several clients each thread gets its own pipeline over one session
  (which beat one pipeline with ``batch_size=8``). torch: one pipeline behind a lock, as in the
  earlier runs (torch's one intra-op pool oversubscribes 2 cores when 8 forwards share it).
"""

import json
import shutil
import sys
import threading
from contextlib import nullcontext
from pathlib import Path

from bench_child import serve_turns  # beside this file

ARGS = {"max_seq_len": 384, "doc_stride": 128, "max_answer_len": 30}
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")


def prepare_ort(model_dir: str, out_dir: str) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.onnxruntime import (
        AutoOptimizationConfig,
        ORTModelForQuestionAnswering,
        ORTOptimizer,
    )

    out = Path(out_dir)
    fp32, o2, o2q = out / "fp32", out / "o2", out / "o2-int8"
    model = ORTModelForQuestionAnswering.from_pretrained(model_dir, export=True)
    model.save_pretrained(fp32)
    ORTOptimizer.from_pretrained(model).optimize(save_dir=o2, optimization_config=AutoOptimizationConfig.O2())
    o2q.mkdir(parents=True, exist_ok=True)
    src = next(o2.glob("*.onnx"))
    # DefaultTensorType: ONNX shape inference cannot type the outputs of ORT's fused ops.
    quantize_dynamic(str(src), str(o2q / "model.onnx"), per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    for f in TOKENIZER_FILES:
        for d in (fp32, o2q):
            if (Path(model_dir) / f).exists() and not (d / f).exists():
                shutil.copy2(Path(model_dir) / f, d / f)
    return {"fp32": str(fp32), "o2-int8": str(o2q)}


def load(job):
    """(model, tokenizer, versions) for the job's backend, threads set."""
    import transformers
    from transformers import AutoTokenizer

    threads = job.get("threads", 2)
    tok = AutoTokenizer.from_pretrained(job["model_dir"])
    versions = {"transformers": transformers.__version__}
    if job.get("backend", "torch") == "ort":
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForQuestionAnswering

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        model = ORTModelForQuestionAnswering.from_pretrained(job["model_dir"], session_options=so,
                                                             provider="CPUExecutionProvider")
        versions["onnxruntime"] = ort.__version__
    else:
        import torch
        from transformers import AutoModelForQuestionAnswering

        torch.set_num_threads(threads)
        model = AutoModelForQuestionAnswering.from_pretrained(job["model_dir"]).eval()
        versions["torch"] = torch.__version__
    return model, tok, versions


def main() -> None:
    job = json.loads(sys.stdin.readline())
    if job.get("prepare") == "ort":
        print(json.dumps(prepare_ort(job["model_dir"], job["out_dir"])))
        return
    from transformers import pipeline

    model, tok, versions = load(job)
    local = threading.local()
    shared = pipeline("question-answering", model=model, tokenizer=tok, device=-1)
    lock = threading.Lock() if job.get("backend", "torch") == "torch" else None

    def qa():
        if lock is not None:
            return shared
        # One pipeline per thread over the shared session: pipelines keep per-call state.
        if not hasattr(local, "qa"):
            local.qa = pipeline("question-answering", model=model, tokenizer=tok, device=-1)
        return local.qa

    # Whole articles: a question's ~30 windows go through the model in batches (the pipeline's own knob).
    kw = {**ARGS, **({"batch_size": job["batch_size"]} if job.get("batch_size") else {})}

    def ask(it):
        with lock or nullcontext():
            return qa()(question=it["question"], context=it["context"], **kw)["answer"]

    serve_turns(job, ask, versions)


if __name__ == "__main__":
    main()
