"""Bridge vs the transformers 4.57.6 QA pipeline (torch and ONNX Runtime), same questions, one run.

    .venv/bin/python scripts/bench.py [--n 2000] [--rounds 3] [--outtypes q8_0,bf16] [--onnx int8] [--variant '--contexts 1']
        [--serve 'LABEL=serve argv']
    .venv/bin/python scripts/bench.py --engines-alone --n 300 [--rounds 3]   # encoders only, taking turns, no HTTP

Sets up .venv-peer (transformers 4.57.6, the last release with the QA pipeline, with optimum 2.1.0,
optimum-onnx 0.1.0 and onnxruntime 1.32.0) on first use, merges the committed adapter into fp32
weights for the peers (token-type row 1 set equal to row 0, so their 0/1 segments compute what the
bridge's all-zero segments compute), exports them with optimum (ORT fp32; O2-fused then int8
dynamic per-channel), then for each mode (1 client, 8 concurrent clients) loads every system at once
(each peer in-process in its own child, the bridge over HTTP: llama.cpp per outtype, ONNX Runtime,
the default settings; qabridge's Python API in its own child) and lets them take turns every
``--burst`` questions (25 for one client, 200 for eight), the order rotated with every burst, for
``--rounds`` rounds of the whole question set; a row is the system's median round. (Before
2026-11-27 each system answered all the questions in one go per round, in a fresh process, and the
machine's drift between those minute-long runs moved the one-client ratio from 0.76x to 1.27x.)
Writes benchmarks/results.json (this run), appends it to benchmarks/runs.json (every
run, with the CPU model and flags), and rewrites benchmarks/performance.md and performance.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_child import answer_items, peak_rss_mb  # beside this file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PEER = ROOT / ".venv-peer"
OUT = ROOT / "benchmarks"
CACHE = ROOT / ".cache" / "bench"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def setup_peer() -> Path:
    py = PEER / "bin" / "python"
    check = ("import transformers, torch, optimum.onnxruntime, onnxruntime; "
             "assert transformers.__version__ == '4.57.6' and onnxruntime.__version__ == '1.32.0'")
    if py.exists() and subprocess.run([str(py), "-c", check], capture_output=True).returncode == 0:
        return py
    if not py.exists():
        sh([sys.executable, "-m", "venv", str(PEER)])
    # torch comes from the project's .venv (same wheel, no second 2.5 GB download); the peer's own
    # site-packages come first, so its transformers 4.57.6 and tokenizers win.
    site = next((PEER / "lib").glob("python3*/site-packages"))
    main_site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    (site / "zz_qabridge_torch.pth").write_text(str(main_site) + "\n")
    sh([str(py), "-m", "pip", "install", "-q", "transformers==4.57.6", "tokenizers>=0.22,<0.23", "huggingface-hub<1.0", "safetensors",
        "optimum==2.1.0", "optimum-onnx==0.1.0", "onnxruntime==1.32.0", "onnx"])
    return py


def ort_peer_dirs(py: Path, model_dir: Path) -> dict[str, Path]:
    """optimum's ORT exports of the merged model (fp32; O2 + int8 dynamic), made once in .venv-peer."""
    out = peer_ort_dir(model_dir)
    if not (out / "o2-int8" / "model.onnx").exists():
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["HF_HUB_OFFLINE"] = "1"
        r = subprocess.run([str(py), str(ROOT / "scripts" / "bench_peer.py")], capture_output=True, text=True, env=env,
                           input=json.dumps({"prepare": "ort", "model_dir": str(model_dir), "out_dir": str(out)}))
        if r.returncode != 0:
            raise SystemExit(f"ORT peer export failed: {r.stderr[-3000:]}")
    return {"fp32": out / "fp32", "o2-int8": out / "o2-int8"}


NATIVE_PINS = ("openvino==2026.4.1", "nncf==3.4.0", "ctranslate2==4.8.5")
NATIVE = CACHE / "native"


def native_peer_files(model_dir: Path, n_calibration: int = 300) -> dict:
    """The OpenVINO (f32, NNCF int8) and CTranslate2 (int8) files of the merged model, built once by
    scripts/bench_native.py in this venv (the pinned versions installed on first use)."""
    check = "import openvino, nncf, ctranslate2"
    if subprocess.run([sys.executable, "-c", check], capture_output=True).returncode != 0:
        sh([sys.executable, "-m", "pip", "install", "-q", *NATIVE_PINS])
    from qabridge.train.squad import load_squad, squad_file

    train = squad_file("train")
    if train is None:
        raise SystemExit("the native peers' int8 calibration reads SQuAD train (QABRIDGE_SQUAD_DIR or ../shared/data/squad)")
    calib = [{"question": e.question, "context": e.context} for e in load_squad(train)[::271][:n_calibration]]
    job = {"prepare": True, "out_dir": str(NATIVE), "merged_dir": str(model_dir), "adapter": str(ROOT / "models" / "lora"),
           "calibration": calib}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_native.py")], input=json.dumps(job),
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"native peer build failed: {r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def merged_path() -> Path:
    """Where the committed adapter's merged fp32 model for the peers lives (merged_model_dir)."""
    from qabridge.core.hashing import adapter_hash
    from qabridge.paths import DEFAULT_ADAPTER

    return CACHE / f"merged-{adapter_hash(DEFAULT_ADAPTER)[:12]}"


def peer_ort_dir(model_dir: Path) -> Path:
    """optimum's exports of a merged model, beside it (ort_peer_dirs)."""
    return model_dir.parent / (model_dir.name + "-ort")


def merged_model_dir() -> Path:
    import torch

    from qabridge.paths import DEFAULT_ADAPTER
    from qabridge.train.model import load_for_inference, tokenizer_dir

    d = merged_path()
    if (d / "config.json").exists():
        return d
    model, ref, _ = load_for_inference(DEFAULT_ADAPTER)
    with torch.no_grad():
        tt = model.bert.embeddings.token_type_embeddings.weight
        tt[1] = tt[0]
    model.save_pretrained(d)
    import shutil

    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = Path(tokenizer_dir(ref)) / f
        if src.exists():
            shutil.copy2(src, d / f)
    return d


def onnx_models(kinds=("fp32", "O2", "O2+int8", "O2+int8-tensor")) -> dict[str, Path]:
    """The committed adapter as ONNX for qabridge's own ORT engine (export/onnx_export.py), cached."""
    from qabridge.core.hashing import adapter_hash
    from qabridge.export.onnx_export import ONNX_RECIPE, export_onnx
    from qabridge.paths import DEFAULT_ADAPTER

    h = adapter_hash(DEFAULT_ADAPTER)[:12]
    out, merged = {}, None
    for k in kinds:
        p = CACHE / f"bert-qa-{h}.{k.replace('+', '-').lower()}.r{ONNX_RECIPE}.onnx"
        if not p.exists():
            from qabridge.export.merge import merge_adapter

            merged = merged or merge_adapter(DEFAULT_ADAPTER)
            export_onnx(DEFAULT_ADAPTER, p, quantize=k.split("+")[1] if "+" in k else "none", optimize=k != "fp32",
                        merged=merged, force=True)
        out[k] = p
    return out


class PeerGraph:
    """The peer's own ONNX file (optimum's QA export, its span head inside) behind the engine's
    ``logits(windows)``, so the engines-alone timing can put our graphs beside the peer's."""

    name = "peer graph"

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        from qabridge.bridge.onnx_engine import session_options

        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def logits(self, windows, deadline=None):
        import numpy as np

        from qabridge.core.windows import padded_batch

        ids, mask = padded_batch([w.input_ids for w in windows])
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(ids)  # its row 1 equals row 0 (merged_model_dir)
        start, end = self.session.run(None, feed)[:2]
        return [(start[i, : len(w.input_ids)], end[i, : len(w.input_ids)]) for i, w in enumerate(windows)]

    def close(self):
        self.session = None


def turns(names: list[str], n_chunks: int, rounds: int):
    """(round, chunk, name) in the order the systems take their turns: every system once per chunk,
    the order rotated with every chunk and round, so neither a drift in the machine's speed nor
    going first or last falls on one system more than another."""
    for r in range(rounds):
        for b in range(n_chunks):
            k = (b + r) % len(names)
            for name in names[k:] + names[:k]:
                yield r, b, name


def take_turns(systems: dict, windows: list, rounds: int, burst: int = 20, warmup: int = 5, on_logits=None) -> dict[str, list[float]]:
    """ms per question of each system's ``encoder.logits`` (a question's windows in one call), the
    systems taking turns every ``burst`` questions (:func:`turns`), ``rounds`` times over.
    ``on_logits(name, question_index, logits)`` sees the first round's."""
    for s in systems.values():
        for w in windows[:warmup]:
            s.encoder.logits(w)
    spent = [dict.fromkeys(systems, 0.0) for _ in range(rounds)]
    for r, b, name in turns(list(systems), -(-len(windows) // burst), rounds):
        t0 = time.perf_counter()
        logits = [systems[name].encoder.logits(w) for w in windows[b * burst : (b + 1) * burst]]
        spent[r][name] += time.perf_counter() - t0
        if r == 0 and on_logits is not None:
            for i, lg in enumerate(logits, start=b * burst):
                on_logits(name, i, lg)
    return {name: [1e3 * sp[name] / len(windows) for sp in spent] for name in systems}


def engines_alone(n: int, rounds: int, threads: int, outtypes: list[str], burst: int = 20) -> dict:
    """Encoder alone, no HTTP: ms per question (a question's windows in one call, as the bridge
    makes it), first ``n`` dev questions, every engine ``threads``. The engines take turns every
    ``burst`` questions, ``rounds`` times over, so a drift in the machine's speed (up to 2x over
    minutes on the shared 2-core machine) falls on all of them alike; each round's ms are kept."""
    from types import SimpleNamespace

    from qabridge.bridge.llama_engine import gguf_pipeline
    from qabridge.bridge.onnx_engine import onnx_pipeline
    from qabridge.core.decode import best_spans
    from qabridge.export.run import export
    from qabridge.train.squad import load_squad, squad_file

    examples = load_squad(squad_file("dev"))[:n]
    systems = {}
    for o in outtypes:
        p = CACHE / f"bert-qa.{o}.gguf"
        if not p.exists():
            export(ROOT / "models" / "lora", output=p, outtype=o, modelfile=None)
        systems[f"llama.cpp {o}"] = gguf_pipeline(p, n_threads=threads, n_contexts=1)
    for k, p in onnx_models().items():
        systems[f"onnxruntime {k}"] = onnx_pipeline(p, n_threads=threads)
    peer = peer_ort_dir(merged_path()) / "o2-int8" / "model.onnx"
    if peer.exists():  # built by a full run (ort_peer_dirs)
        systems["peer graph: optimum O2 + int8 dynamic"] = SimpleNamespace(encoder=PeerGraph(peer, threads), max_answer_len=30)
    first = next(s for s in systems.values() if hasattr(s, "prepare"))
    prepared = [first.prepare(e.question, e.context) for e in examples]
    n_windows = sum(len(w) for _, w in prepared)
    n_tokens = sum(len(x.input_ids) for _, w in prepared for x in w)
    answers: dict[str, dict] = {k: {} for k in systems}

    def keep_answer(name: str, i: int, logits) -> None:
        e, (ctx, w) = examples[i], prepared[i]
        sp = best_spans(logits, w, ctx, max_answer_len=systems[name].max_answer_len, top_k=1)
        answers[name][e.id] = e.context[sp[0].start : sp[0].end] if sp else ""

    times = take_turns(systems, [w for _, w in prepared], rounds, burst, on_logits=keep_answer)
    rows = []
    for name, pipe in systems.items():
        sc = score(answers[name], examples)
        rows.append({"system": name, "ms_per_question": [round(x, 2) for x in times[name]],
                     "median_ms": round(statistics.median(times[name]), 2), "best_ms": round(min(times[name]), 2),
                     "exact_match": round(sc["exact_match"], 2), "f1": round(sc["f1"], 2)})
        pipe.encoder.close()
    return {"machine": machine_info(), "n": n, "windows": n_windows, "tokens_per_window": round(n_tokens / n_windows, 1),
            "threads": threads, "rounds": rounds, "burst": burst, "rows": rows}


def count_windows(examples) -> int:
    """The windows the bridge's default settings cut these questions into (the int8 ONNX file's settings)."""
    from qabridge.bridge.onnx_engine import OnnxModel
    from qabridge.core.pipeline import QAPipeline

    m = OnnxModel(onnx_models(("O2+int8",))["O2+int8"], n_threads=1)
    pipe = QAPipeline(m.tokenizer, None, m.window_spec)
    n = sum(len(pipe.prepare(e.question, e.context)[1]) for e in examples)
    m.close()
    return n


def window_macs(seq: int = 384, layers: int = 6, hidden: int = 384, inner: int = 1536) -> int:
    """Multiply-accumulates of one window through the encoder: Q/K/V/O projections, the FFN, and
    attention's two [seq x seq] products (embeddings, norms, softmax and GELU are not MACs)."""
    return layers * (4 * seq * hidden * hidden + 2 * seq * hidden * inner + 2 * seq * seq * hidden)


def int8_peak(machine: dict) -> dict:
    """The CPU's int8 multiply-accumulate peak from its clock, cores and matrix/vector width.

    Per core per cycle: AMX (amx_int8) 1,024 (one 16x16x64 TDPBSSD per 16 cycles); AVX512-VNNI
    128 on Intel and AMD Zen 5 (two 512-bit VPDPBUSD a cycle, 64 MACs each), 64 on Zen 4 (its
    512-bit ops run on 256-bit pipes); AVX-VNNI alone 64. The clock is the one the CPU reports
    (its name's "@ x GHz", else /proc/cpuinfo's MHz): a VM's nominal clock, not its turbo."""
    import re

    from qabridge.core.machine import cpu_info

    cpu = cpu_info()
    flags = set(cpu.flags)
    m = re.search(r"@\s*([\d.]+)\s*GHz", cpu.name)
    ghz = float(m.group(1)) if m else None
    if ghz is None:
        try:
            mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("cpu MHz")]
            ghz = max(mhz) / 1000 if mhz else None
        except OSError:
            ghz = None
    cores = machine["cpus"]
    vnni = 64 if ("AMD" in cpu.name and cpu.family == "25") else 128 if "avx512_vnni" in flags else 64 if "avx_vnni" in flags else 0
    out = {"clock_ghz": ghz, "cores": cores, "window_macs_384": window_macs(),
           "vnni_macs_per_cycle_core": vnni, "amx_macs_per_cycle_core": 1024 if "amx_int8" in flags else 0}
    if ghz:
        out["vnni_peak_gmacs"] = round(ghz * cores * vnni, 1)
        if out["amx_macs_per_cycle_core"]:
            out["amx_peak_gmacs"] = round(ghz * cores * 1024, 1)
    return out


def engine_choice_summary() -> dict | None:
    """What `--engine auto` chose for the built-in model on this CPU, with every candidate's ms per
    window (the cached choice the default row's bridge made or read)."""
    try:
        from qabridge.bridge.engine_select import choose_default

        return choose_default("auto").summary()
    except Exception as exc:  # a report without this section beats no report
        return {"error": str(exc)[:300]}


def machine_info() -> dict:
    from qabridge.core.machine import cpu_info

    cpu = cpu_info()
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": cpu.name, "simd_flags": cpu.simd}


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def score(answers: dict, examples) -> dict:
    from qabridge.train import metrics

    return metrics.evaluate(answers, ((e.id, [a.text for a in e.answers]) for e in examples))


class ChildSystem:
    """A benchmark child (scripts/bench_peer.py or bench_inproc.py) kept running: it loads its model
    and warms up once, then answers bursts of questions sent one JSON line at a time."""

    def __init__(self, cmd: list[str], job: dict, examples, env: dict | None = None):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.proc.stdin.write(json.dumps({**job, "warmup": items_of(examples[:5])}) + "\n")
        self.proc.stdin.flush()
        self._line()  # ready: loaded and warmed up

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"benchmark child failed: {self.proc.stderr.read()[-3000:]}")
        return line

    def burst(self, examples) -> dict:
        self.proc.stdin.write(json.dumps({"items": items_of(examples)}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def stop(self) -> float:
        rss = peak_rss_mb(self.proc.pid)
        self.proc.stdin.close()
        self.proc.wait(60)
        return rss


class BridgeSystem:
    """``qabridge serve`` in a child process, asked over HTTP from this one: one keep-alive
    ``http.client`` connection per client thread, the same threads for every burst. The client
    shares the machine's cores with the bridge (its CPU counts against the bridge); httpx took
    ~0.85 ms of CPU per request here against http.client's ~0.3 (docs/performance.md),
    so the lighter client is the harness. ``model`` None: `qabridge serve` with no --model, the
    default model and settings a user gets."""

    def __init__(self, model: Path | None, clients: int, extra: list[str], examples):
        import threading

        from tests.helpers import start_server

        tmp = CACHE / "logs"
        tmp.mkdir(parents=True, exist_ok=True)
        self.server = start_server(model, tmp, *extra) if model is not None else start_server(None, tmp, argv=extra)
        self.host, port = self.server.url.removeprefix("http://").split(":")
        self.port = int(port)
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(clients) if clients > 1 else None
        self.burst(examples[:5])

    def _post(self, body: bytes) -> dict:
        import http.client

        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        try:
            conn.request("POST", "/api/qa", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # uvicorn closes a keep-alive connection idle for 5 s (while the other systems had their
            # turns); reconnect once, as urllib3 does with a stale pooled connection.
            conn.close()
            conn.request("POST", "/api/qa", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
        return json.loads(data)

    def burst(self, examples) -> dict:
        bodies = {e.id: json.dumps({"question": e.question, "context": e.context}).encode() for e in examples}
        return answer_items([{"id": e.id} for e in examples], lambda it: self._post(bodies[it["id"]])["answer"], self.pool)

    def stop(self) -> float:
        rss = peak_rss_mb(self.server.proc.pid)
        if self.pool is not None:
            self.pool.shutdown()
        self.server.stop()
        return rss


def items_of(examples) -> list[dict]:
    return [{"id": e.id, "question": e.question, "context": e.context} for e in examples]


def start_system(py: Path, kind: str, target, clients: int, extra: list[str], examples):
    """One system of the plan, loaded, warmed up and waiting for bursts."""
    if kind == "peer":
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
        env["HF_HUB_OFFLINE"] = "1"
        job = {**target, "clients": clients, "threads": os.cpu_count() or 2}
        if extra:  # whole articles: the pipeline batches a question's windows (batch_size)
            job["batch_size"] = int(extra[0])
        return ChildSystem([str(py), str(ROOT / "scripts" / "bench_peer.py")], job, examples, env)
    if kind == "native":
        job = {"backend": target, "out_dir": str(NATIVE), "clients": clients, "threads": os.cpu_count() or 2}
        return ChildSystem([sys.executable, str(ROOT / "scripts" / "bench_native.py")], job, examples)
    if kind == "inproc":
        # qabridge's Python API in its own process (scripts/bench_inproc.py), this venv's Python.
        return ChildSystem([sys.executable, str(ROOT / "scripts" / "bench_inproc.py")], {"clients": clients}, examples)
    return BridgeSystem(target, clients, extra, examples)


def run_turns(systems: dict, examples, rounds: int, burst: int) -> dict[str, list[dict]]:
    """Every system answers every question once per round, the systems taking turns every ``burst``
    questions (:func:`turns`): the machine's speed drifts by up to 2x over minutes, and a system that
    ran only while it was slow would carry that into its row. Returns each system's rounds (wall
    time, latencies and answers summed over its bursts)."""
    from tqdm import tqdm

    chunks = [examples[i : i + burst] for i in range(0, len(examples), burst)]
    out = {k: [{"wall_s": 0.0, "latencies": [], "answers": {}} for _ in range(rounds)] for k in systems}
    for r, b, name in tqdm(list(turns(list(systems), len(chunks), rounds)), desc="turns", unit="burst", leave=False):
        res = systems[name].burst(chunks[b])
        acc = out[name][r]
        acc["wall_s"] += res["wall_s"]
        acc["latencies"] += res["latencies"]
        acc["answers"].update(res["answers"])
    return out


def summarise(name: str, res: dict, examples, clients: int) -> dict:
    lat = res["latencies"]
    sc = score(res["answers"], examples)
    return {"system": name, "clients": clients, "questions": len(lat), "qps": len(lat) / res["wall_s"],
            "p50_ms": 1e3 * statistics.median(lat), "p95_ms": 1e3 * percentile(lat, 95),
            "exact_match": sc["exact_match"], "f1": sc["f1"], "peak_rss_mb": res["peak_rss_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--outtypes", default="q8_0,bf16")
    ap.add_argument("--variant", action="append", default=[], help="extra `qabridge serve` options to bench as well, e.g. '--contexts 1'")
    ap.add_argument("--serve", action="append", default=[], metavar="LABEL=ARGV",
                    help="a `qabridge serve` command line benched as its own row, e.g. "
                         "'openvino int8=--model ~/.cache/qabridge/models/x.int8.r3.k3.e16.xml'")
    ap.add_argument("--modes", default="1,8")
    ap.add_argument("--report-only", action="store_true", help="rewrite performance.md/.png from results.json without running")
    ap.add_argument("--engines-alone", action="store_true",
                    help="time the encoders alone (llama.cpp --outtypes, ONNX Runtime fp32/O2/O2+int8), no HTTP; "
                         "appends to benchmarks/results/performance/engines-alone.json")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds: every system answers every question once per round, taking turns every --burst; "
                         "a row is its median round (the machine's speed drifts by up to 2x over minutes)")
    ap.add_argument("--onnx", default="int8", help="ONNX quantisations to serve with `--engine onnx` (int8, int8-tensor, none); empty: none")
    ap.add_argument("--no-default-row", dest="default_row", action="store_false",
                    help="skip `qabridge serve` with no --model/--engine (the default a user gets)")
    ap.add_argument("--no-inprocess-row", dest="inprocess_row", action="store_false",
                    help="skip qabridge's Python API in-process (qabridge.pipeline(), the default model), the peers' setting")
    ap.add_argument("--burst", default="25,200",
                    help="questions per turn for each of --modes: the systems (all loaded) take turns every burst")
    ap.add_argument("--limit", type=int, default=None, help="smoke run: same as --n")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--corpora", default="paragraphs,articles",
                    help="paragraphs: the first --n dev questions over their paragraph; articles: --n-articles dev "
                         "questions (spread over every article) asked over their whole article, paragraphs joined")
    ap.add_argument("--n-articles", type=int, default=96)
    ap.add_argument("--peer-batch", type=int, default=8, help="the transformers pipeline's batch_size on whole articles")
    ap.add_argument("--torch-on-articles", action="store_true", help="also the torch fp32 pipeline on whole articles (slow)")
    ap.add_argument("--no-native", dest="native", action="store_false",
                    help="skip the OpenVINO and CTranslate2 peers (scripts/bench_native.py)")
    args = ap.parse_args()
    if args.limit:
        args.n = args.limit
    if args.engines_alone:
        res = engines_alone(args.n, args.rounds, args.threads, args.outtypes.split(","))
        f = OUT / "results" / "performance" / "engines-alone.json"
        runs = json.loads(f.read_text()) if f.exists() else []
        runs.append(res)
        f.write_text(json.dumps(runs, indent=2) + "\n")
        print(f"{res['machine']['cpu']}, {res['threads']} threads, first {res['n']} dev questions "
              f"({res['windows']} windows, {res['tokens_per_window']} tokens each), ms per question per round:")
        for r in res["rows"]:
            print(f"  {r['system']:<38} {r['ms_per_question']}  median {r['median_ms']}  EM {r['exact_match']}  F1 {r['f1']}")
        return
    if args.report_only:
        saved = json.loads((OUT / "results.json").read_text())
        write_report(saved["rows"], saved["machine"], saved["n"], saved.get("rounds", 1), saved.get("bursts"), saved)
        return
    from tqdm import tqdm

    from qabridge.export.run import export
    from qabridge.train.squad import load_squad, squad_file

    dev = load_squad(squad_file("dev"))
    corpora = {"paragraphs": dev[: args.n]}
    if "articles" in args.corpora.split(","):
        from bench_adapt import long_documents  # beside this file: an article's paragraphs joined

        titles = list(dict.fromkeys(e.title for e in dev))
        per = -(-args.n_articles // len(titles))
        corpora["articles"] = long_documents(dev, titles, per, seed=0)[: args.n_articles]
    corpora = {k: v for k, v in corpora.items() if k in args.corpora.split(",")}
    py = setup_peer()
    model_dir = merged_model_dir()
    ort_dirs = ort_peer_dirs(py, model_dir)
    natives = native_peer_files(model_dir) if args.native else {}
    ggufs = {}
    for o in filter(None, args.outtypes.split(",")):
        p = CACHE / f"bert-qa.{o}.gguf"
        if not p.exists():
            export(ROOT / "models" / "lora", output=p, outtype=o, modelfile=None)
        ggufs[o] = p
    onnx_files = onnx_models(tuple(f"O2+{q}" for q in filter(None, args.onnx.split(","))))
    peers = [("transformers-4.57.6 pipeline (torch fp32)", {"backend": "torch", "model_dir": str(model_dir)}),
             ("transformers-4.57.6 pipeline (ORT fp32)", {"backend": "ort", "model_dir": str(ort_dirs["fp32"])}),
             ("transformers-4.57.6 pipeline (ORT O2 + int8 dynamic)", {"backend": "ort", "model_dir": str(ort_dirs["o2-int8"])})]
    native_peers = [("OpenVINO fp32 IR (its default precision) + qabridge span head", "openvino-fp32"),
                    ("OpenVINO int8 (NNCF) + qabridge span head", "openvino-int8"),
                    ("CTranslate2 int8 + qabridge span head", "ct2-int8")] if natives else []
    rows = []
    bursts = dict(zip((int(x) for x in args.modes.split(",")), (int(x) for x in args.burst.split(","))))
    machine = machine_info()
    for corpus, examples in corpora.items():
        long = corpus == "articles"
        n_windows = count_windows(examples)
        plan = []
        for c in (int(x) for x in args.modes.split(",")):
            for name, peer in peers:
                if long and "torch" in name and not args.torch_on_articles:
                    continue  # ~1 s a question on 2 cores: the ORT rows are the pipeline's best
                plan.append((name, "peer", peer, c, [str(args.peer_batch)] if long else []))
            for name, backend in native_peers:
                plan.append((name, "native", backend, c, []))
            for o, p in ggufs.items():
                # Default serving settings: min(4, cores) contexts sharing the cores between the requests encoding at once.
                plan.append((f"qabridge HTTP (llama.cpp {o})", "bridge", p, c, ["--engine", "llama.cpp"]))
                for extra in filter(None, args.variant):
                    plan.append((f"qabridge HTTP (llama.cpp {o}, {extra})", "bridge", p, c, ["--engine", "llama.cpp", *extra.split()]))
            for k, p in onnx_files.items():
                plan.append((f"qabridge HTTP (onnxruntime {k.split('+')[1]})", "bridge", p, c, ["--engine", "onnx"]))
            for spec in args.serve:
                label, _, argv = spec.partition("=")
                plan.append((f"qabridge HTTP ({label})", "bridge", None, c, os.path.expanduser(argv).split()))
            if args.default_row:
                plan.append(("qabridge HTTP (default settings)", "bridge", None, c, []))
            if args.inprocess_row:
                plan.append(("qabridge Python API in-process (default)", "inproc", None, c, []))
        for c in dict.fromkeys(x[3] for x in plan):
            # One mode at a time: its systems all loaded (a few GB), then taking turns.
            mine = [x for x in plan if x[3] == c]
            burst = bursts.get(c, 25 * c)
            if long:
                burst = max(c, burst // 20)  # a whole-article question is ~20x a paragraph's work
            systems = {}
            try:
                for name, kind, target, _, extra in tqdm(mine, desc=f"{corpus}, {c} client(s): loading", unit="system", leave=False):
                    systems[name] = start_system(py, kind, target, c, extra, examples)
                rounds = run_turns(systems, examples, args.rounds, burst)
            finally:
                rss = {name: sys_.stop() for name, sys_ in systems.items()}
            for name, _, _, _, _ in mine:
                res = [summarise(name, {**x, "peak_rss_mb": rss[name]}, examples, c) for x in rounds[name]]
                by_qps = sorted(res, key=lambda x: x["qps"])
                row = {"corpus": corpus, **by_qps[(len(by_qps) - 1) // 2], "rounds_qps": [round(x["qps"], 2) for x in res]}
                row["windows_per_question"] = round(n_windows / len(examples), 2)
                row["windows_per_s"] = row["qps"] * n_windows / len(examples)
                rows.append(row)
                tqdm.write(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in rows[-1].items()}))
    OUT.mkdir(exist_ok=True)
    run = {"machine": machine, "n": args.n, "n_articles": args.n_articles if "articles" in corpora else 0, "rounds": args.rounds,
           "bursts": bursts, "date": time.strftime("%Y-%m-%d %H:%M"), "peak": int8_peak(machine), "engine_choice": engine_choice_summary(),
           "rows": rows}
    (OUT / "results.json").write_text(json.dumps(run, indent=2) + "\n")
    runs_file = OUT / "runs.json"
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else []
    runs.append(run)
    runs_file.write_text(json.dumps(runs, indent=2) + "\n")
    write_report(rows, machine, args.n, args.rounds, bursts, run)


def training_cost_section() -> list[str]:
    """The training-cost tables from benchmarks/experiments/train_cost.py's committed results (CPU, GPU)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_cost", ROOT / "benchmarks" / "experiments" / "train_cost.py")
    tc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tc)
    out = ["", "## Training cost (384-token windows, the default recipe: LoRA r=32 on query/key/value/dense)", ""]
    for name in ("train-cost-cpu.json", "train-cost-gpu.json"):
        f = OUT / "results" / "training" / name
        if not f.exists():
            continue
        res = json.loads(f.read_text())
        out += [f"`{name}`: {res['steps']} steps of {res['batch_size']} windows per method on {res['device']}, "
                f"one method at a time (`benchmarks/experiments/train_cost.py`; on the GPU via `scripts/recipes/device_cost.sh`).", "",
                tc.table(res), ""]
    out.append("Peak RSS includes reading all of SQuAD train before the subset is drawn. Windows are padded to the "
               "longest in their batch (length-grouped), not to 384. The GPU's 300-step speeds are dominated by "
               "start-up; its 3-epoch runs went at 1,239-1,490 windows/s (docs/quality.md).")
    return out


def write_report(rows, machine, n, rounds: int = 1, bursts: dict | None = None, run: dict | None = None) -> None:
    run = run or {}
    lines = ["# Performance: the bridge vs the engines a user would pick (transformers pipeline on torch and ONNX Runtime, OpenVINO, CTranslate2)\n",
             f"Machine: {machine['cpu']}, {machine['cpus']} cores ({machine['platform']}). Run {run.get('date', '')}.",
             f"SIMD flags: {' '.join(machine.get('simd_flags', [])) or 'not recorded'}.",
             f"Corpora: `paragraphs`, the first {n} SQuAD v1.1 dev questions over their paragraph; `articles`, "
             f"{run.get('n_articles', 0)} dev questions spread over every article, each asked over its whole article "
             "(paragraphs joined by a blank line, thousands of tokens: the windows/question column). The transformers "
             "pipeline gets `batch_size=8` on articles; the OpenVINO and CTranslate2 rows run their encoder behind "
             "qabridge's tokenizer, windows, batching rule and numpy span head (neither has a BERT QA pipeline), "
             "OpenVINO int8 calibrated by NNCF on 300 SQuAD *train* questions.",
             (f"{rounds} round(s), the systems of a mode loaded at once and taking turns every "
              f"{' / '.join(f'{b} ({c} client(s))' for c, b in bursts.items())} paragraph questions (a twentieth of that on "
              "articles): each row is the system's median round by q/s (its latencies and scores from that round, the "
              "process's peak RSS over all); every round's q/s is in the last column." if bursts else
              f"{rounds} interleaved round(s): each row is the system's median round by q/s."),
             "Reproduce: `.venv/bin/python scripts/bench.py` (writes results.json, this file and performance.png).\n",
             "| corpus | system | clients | q/s | windows/s | p50 ms | p95 ms | EM | F1 | peak RSS MB | q/s per round |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per = ", ".join(f"{q:.1f}" for q in r.get("rounds_qps", [r["qps"]]))
        wps = f"{r['windows_per_s']:.1f}" if "windows_per_s" in r else ""
        lines.append(f"| {r.get('corpus', 'paragraphs')} | {r['system']} | {r['clients']} | {r['qps']:.2f} | {wps} | {r['p50_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['exact_match']:.2f} | {r['f1']:.2f} | {r['peak_rss_mb']:.0f} | {per} |")
    lines.append("")
    corpora = list(dict.fromkeys(r.get("corpus", "paragraphs") for r in rows))
    for corpus in corpora:
        for c in sorted({r["clients"] for r in rows}):
            mine = [r for r in rows if r.get("corpus", "paragraphs") == corpus and r["clients"] == c]
            peers = [r for r in mine if not r["system"].startswith("qabridge")]
            if not peers:
                continue
            torch_peer = next((r for r in peers if "torch" in r["system"]), None)
            best = max(peers, key=lambda r: r["qps"])
            for r in mine:
                if r in peers:
                    continue
                vs_torch = f"; F1 {r['f1'] - torch_peer['f1']:+.2f} vs torch fp32" if torch_peer else ""
                lines.append(f"- {corpus}, {c} client(s), {r['system']}: throughput x{r['qps'] / best['qps']:.2f} of the best peer "
                             f"({best['system']}); p50 x{r['p50_ms'] / best['p50_ms']:.2f}; "
                             f"RSS x{r['peak_rss_mb'] / best['peak_rss_mb']:.2f}{vs_torch}")
    peak = run.get("peak")
    if peak:
        lines += ["", "## How close to the machine's int8 limit", "",
                  f"One 384-token window is {peak['window_macs_384'] / 1e9:.2f} G multiply-accumulates (`window_macs`). "
                  f"Peak at the reported {peak['clock_ghz']} GHz x {peak['cores']} cores: AVX512-VNNI "
                  f"{peak.get('vnni_peak_gmacs', '?')} GMAC/s ({peak['vnni_macs_per_cycle_core']} MACs/cycle/core)"
                  + (f", AMX {peak['amx_peak_gmacs']} GMAC/s (1,024)" if peak.get("amx_peak_gmacs") else "")
                  + ". From each system's whole-article windows/s with one client (nearly every window full-length; "
                  "tokenizing, HTTP and the span head included, so this understates the encoder):", "",
                  "| system | ms per window | GMAC/s | % of VNNI peak | % of AMX peak |", "|---|---|---|---|---|"]
        for r in rows:
            if r.get("corpus") != "articles" or r["clients"] != 1 or not r.get("windows_per_s"):
                continue
            gmacs = peak["window_macs_384"] * r["windows_per_s"] / 1e9
            v = f"{100 * gmacs / peak['vnni_peak_gmacs']:.0f}%" if peak.get("vnni_peak_gmacs") else ""
            a = f"{100 * gmacs / peak['amx_peak_gmacs']:.1f}%" if peak.get("amx_peak_gmacs") else "no AMX"
            lines.append(f"| {r['system']} | {1e3 / r['windows_per_s']:.1f} | {gmacs:.0f} | {v} | {a} |")
    choice = run.get("engine_choice")
    if choice and "candidates" in choice:
        lines += ["", f"## `--engine auto` on this CPU: {choice['engine']}", "",
                  f"Candidates measured by the bridge on first start ({choice['cpu']}, {choice['threads']} threads; "
                  f"answers checked against {choice['reference']}):", "",
                  "| candidate | ms per window | agreement | passed |", "|---|---|---|---|"]
        for m in choice["candidates"]:
            lines.append(f"| {m['label']} | {m['ms_per_window']} | {m['agreement']} | {m['passed']} |")
    lines += training_cost_section()
    (OUT / "performance.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        short = {"transformers-4.57.6 pipeline": "HF pipeline", " + qabridge span head": "", "qabridge ": "qb "}

        def label(r):
            t = r["system"]
            for k, v in short.items():
                t = t.replace(k, v)
            return f"{t}, {r['clients']}c"

        corpora = list(dict.fromkeys(r.get("corpus", "paragraphs") for r in rows))
        fig, axes = plt.subplots(len(corpora), 1, figsize=(12, 4.2 * len(corpora)), squeeze=False)
        for ax, corpus in zip(axes[:, 0], corpora):
            mine = [r for r in rows if r.get("corpus", "paragraphs") == corpus]
            ax.barh([label(r) for r in mine], [r["qps"] for r in mine],
                    color=["#2a7" if r["system"].startswith("qabridge") else "#999" for r in mine])
            ax.set_xlabel("questions / s (green: qabridge)")
            ax.set_title(f"{corpus}: {len(set(r['system'] for r in mine))} systems, {machine['cpu']}, {machine['cpus']} cores")
            ax.tick_params(axis="y", labelsize=7)
            ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(OUT / "performance.png", dpi=110)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
