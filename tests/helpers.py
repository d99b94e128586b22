"""Test helpers (not fixtures): paths, free ports, a real `qabridge serve` subprocess, the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DEV_SAMPLE = FIXTURES / "squad_dev_sample.json"
TRAIN_SAMPLE = FIXTURES / "squad_train_sample.json"
COMMITTED_ADAPTER = ROOT / "models" / "lora"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(model: Path | None, tmp: Path, *extra: str, env: dict | None = None, wait_ready: bool = True,
                 argv: list[str] | None = None) -> Server:
    import httpx

    port = free_port()
    log = tmp / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "qabridge.cli", "serve", "--port", str(port), *extra]
    if argv is not None:
        cmd += argv
    else:
        cmd += ["--model", str(model)]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            r = httpx.get(url + "/api/health", timeout=2)
            if not wait_ready or r.json().get("ready"):
                return Server(proc, url, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become ready: {log.read_text()[-2000:]}")


def run_cli(*args: str, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qabridge.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


#: Where the scripts are: what users and CI run, the built-in models' recipes, the research probes.
SCRIPT_DIRS = ("scripts", "scripts/recipes", "benchmarks/experiments")


def load_script(name: str):
    """``name``.py as a module, from scripts/, scripts/recipes/ or benchmarks/experiments/. The scripts put the checkout (or scripts/) first on sys.path;
    that is undone here, so the installed package stays the one the tests import."""
    import importlib.util

    path = sys.path[:]
    try:
        where = next(d for d in SCRIPT_DIRS if (ROOT / d / f"{name}.py").exists())
        spec = importlib.util.spec_from_file_location(name, ROOT / where / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path[:] = path
    return mod


# -- torch <-> llama.cpp parity (tests/test_export.py, tests/test_bases.py) ----------------------
def torch_and_gguf_logits(torch_model, gguf_path, windows):
    """(start, end) logits per window from the merged torch model and from the GGUF in llama.cpp."""
    from qabridge.bridge.llama_engine import LlamaCppEngine
    from qabridge.core.model_file import ModelFile
    from qabridge.train.evaluate import TorchEncoder

    t = TorchEncoder(torch_model).logits(windows)
    eng = LlamaCppEngine(ModelFile(gguf_path))
    try:
        g = eng.logits(windows)
    finally:
        eng.close()
    return t, g


def qa_windows(tok, examples, spec, n):
    """The windows the bridge would encode for the first ``n`` examples."""
    from qabridge.core.pipeline import QAPipeline

    out = []
    for e in examples[:n]:
        pipe = QAPipeline(tok, None, spec)
        out.extend(pipe.prepare(e.question, e.context)[1])
    return out


def max_logit_delta(a, b) -> float:
    import numpy as np

    return max(max(np.abs(x[0] - y[0]).max(), np.abs(x[1] - y[1]).max()) for x, y in zip(a, b))


def lazy_exports(adapter: Path, out_dir: Path, name: str, *, modelfile: bool = False):
    """``get(outtype) -> GGUF path``: the adapter exported once per outtype, on first use."""
    from qabridge.export.run import export

    cache: dict[str, Path] = {}

    def get(outtype: str) -> Path:
        if outtype not in cache:
            p = out_dir / f"{name}.{outtype}.gguf"
            export(adapter, output=p, outtype=outtype, name=name,
                   modelfile=out_dir / f"Modelfile.{outtype}" if modelfile else None)
            cache[outtype] = p
        return cache[outtype]

    return get


def embedded_top_spans(gguf_path: Path, pairs) -> list:
    """The embedded engine's best span for each (question, context) on a GGUF file: the reference an
    answer served another way (Ollama's blob, a built-in model's cached file) must equal."""
    from qabridge.bridge.llama_engine import gguf_pipeline

    pipe = gguf_pipeline(gguf_path)
    try:
        return [pipe.predict(q, c).spans[0] for q, c in pairs]
    finally:
        pipe.encoder.close()


#: torch's best span and top-two margin per torch pipeline and question: the same session-wide
#: torch model is the yardstick of every engine's check, so each question is run through it once.
_TORCH_TOP2: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def span_flips(pipe, torch_pipe, examples) -> list[float]:
    """Run ``pipe`` (closing its encoder) and compare its best span with the torch model's on each example:
    for every question where they differ, torch's margin between its top two spans (a near-tie is small)."""
    from qabridge.train.evaluate import predict_examples

    try:
        got = predict_examples(pipe, examples)
    finally:
        pipe.encoder.close()
    flips = []
    memo = _TORCH_TOP2.setdefault(torch_pipe, {})
    for e in examples:
        key = (e.id, e.question, e.context)
        if key not in memo:
            top = torch_pipe.predict(e.question, e.context, top_k=2).spans
            memo[key] = (top[0].start, top[0].end, top[0].score - (top[1].score if len(top) > 1 else 0.0))
        start, end, margin = memo[key]
        if (got[e.id]["start"], got[e.id]["end"]) != (start, end):
            flips.append(margin)
    return flips


# -- documents (issue 13's report set) ----------------------------------------------------------
def first_paragraphs(examples, n_paragraphs: int = 30, n_questions: int = 20):
    """The first ``n_paragraphs`` distinct paragraphs of SQuAD dev (all of the first article: near
    duplicates in topic) and the first ``n_questions`` questions asked about them."""
    paras: list[str] = []
    for e in examples:
        if e.context not in paras:
            paras.append(e.context)
        if len(paras) == n_paragraphs:
            break
    return paras, [e for e in examples if e.context in paras][:n_questions]


def documents_answered(url: str, paras: list[str], questions, **extra) -> tuple[int, list[dict]]:
    """How many ``questions`` a ``documents`` request over ``paras`` answers (F1 > 0.5), and the bodies."""
    import httpx

    from qabridge.train import metrics

    bodies = []
    for e in questions:
        r = httpx.post(url + "/api/qa", json={"question": e.question, "documents": paras, **extra}, timeout=600)
        assert r.status_code == 200, r.text
        bodies.append(r.json())
    answered = sum(metrics.score(b["answer"] or "", [a.text for a in e.answers])[1] > 0.5 for b, e in zip(bodies, questions))
    return answered, bodies


def exports_once(folder: Path, adapter: Path, suffix: str, export):
    """``get(kind)``: the adapter exported once per kind as ``folder/bert-qa.{kind}{suffix}`` by
    ``export(adapter, path, kind, merged)``, one merge shared by every kind; ``get.info(kind)``
    is what the export returned."""
    from qabridge.export.merge import merge_adapter

    cache: dict = {}

    def get(kind: str):
        path = folder / f"bert-qa.{kind}{suffix}"
        if kind not in cache:
            cache.setdefault("merged", merge_adapter(adapter))
            cache[kind] = export(adapter, path, kind, cache["merged"])
        return path

    get.info = lambda kind: cache[kind]
    return get
