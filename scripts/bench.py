"""Bridge vs the transformers 4.57.6 QA pipeline (torch and ONNX Runtime), same questions, one run.

    .venv/bin/python scripts/bench.py [--n 2000] [--rounds 3] [--outtypes q8_0,bf16] [--onnx int8] [--variant '--contexts 1']
    .venv/bin/python scripts/bench.py --engines-alone --n 300 [--rounds 3]   # encoders only, taking turns, no HTTP

Sets up .venv-peer (transformers 4.57.6, the last release with the QA pipeline, with optimum 2.1.0,
optimum-onnx 0.1.0 and onnxruntime 1.32.0) on first use, merges the committed adapter into fp32
weights for the peers (token-type row 1 set equal to row 0, so their 0/1 segments compute what the
bridge's all-zero segments compute), exports them with optimum (ORT fp32; O2-fused then int8
dynamic per-channel), then for each mode (1 client, 8 concurrent clients) runs each peer in-process
and the bridge over HTTP (llama.cpp per outtype, ONNX Runtime, and the default settings), in
``--rounds`` interleaved rounds (the order rotated each round; a row is the system's median round).
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

from bench_child import peak_rss_mb  # beside this file

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

        from qabridge.bridge.onnx_engine import padded_batch

        ids, mask = padded_batch([w.input_ids for w in windows])
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(ids)  # its row 1 equals row 0 (merged_model_dir)
        start, end = self.session.run(None, feed)[:2]
        return [(start[i, : len(w.input_ids)], end[i, : len(w.input_ids)]) for i, w in enumerate(windows)]

    def close(self):
        self.session = None


def take_turns(systems: dict, windows: list, rounds: int, burst: int = 20, warmup: int = 5, on_logits=None) -> dict[str, list[float]]:
    """ms per question of each system's ``encoder.logits`` (a question's windows in one call), the
    systems taking turns every ``burst`` questions, ``rounds`` times over, so a drift in the machine's
    speed falls on all alike. ``on_logits(name, question_index, logits)`` sees the first round's."""
    for s in systems.values():
        for w in windows[:warmup]:
            s.encoder.logits(w)
    times: dict[str, list[float]] = {k: [] for k in systems}
    for r in range(rounds):
        spent = dict.fromkeys(systems, 0.0)
        for b in range(0, len(windows), burst):
            for name, s in systems.items():
                t0 = time.perf_counter()
                logits = [s.encoder.logits(w) for w in windows[b : b + burst]]
                spent[name] += time.perf_counter() - t0
                if r == 0 and on_logits is not None:
                    for i, lg in enumerate(logits, start=b):
                        on_logits(name, i, lg)
        for name in systems:
            times[name].append(1e3 * spent[name] / len(windows))
    return times


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


def run_peer(py: Path, peer: dict, examples, clients: int) -> dict:
    job = {**peer, "clients": clients, "threads": os.cpu_count() or 2,
           "items": [{"id": e.id, "question": e.question, "context": e.context} for e in examples]}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["HF_HUB_OFFLINE"] = "1"
    r = subprocess.run([str(py), str(ROOT / "scripts" / "bench_peer.py")], input=json.dumps(job), capture_output=True,
                       text=True, env=env, check=False)
    if r.returncode != 0:
        raise SystemExit(f"peer failed: {r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_inprocess(examples, clients: int) -> dict:
    """qabridge's Python API in its own process (scripts/bench_inproc.py), this venv's Python."""
    job = {"clients": clients, "items": [{"id": e.id, "question": e.question, "context": e.context} for e in examples]}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_inproc.py")], input=json.dumps(job),
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"in-process qabridge failed: {r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_bridge(model: Path | None, examples, clients: int, extra: list[str]) -> dict:
    """``qabridge serve`` in a child process, asked over HTTP from this one: one keep-alive
    ``http.client`` connection per client thread. The client shares the machine's cores with the
    bridge (its CPU counts against the bridge); httpx took ~0.85 ms of CPU per request here against
    http.client's ~0.3 (benchmarks/performance-steps.md), so the lighter client is the harness."""
    import http.client
    import threading

    from tests.helpers import start_server

    tmp = CACHE / "logs"
    tmp.mkdir(parents=True, exist_ok=True)
    # model None: `qabridge serve` with no --model, the default model and settings a user gets.
    s = start_server(model, tmp, *extra) if model is not None else start_server(None, tmp, argv=extra)
    host, port = s.url.removeprefix("http://").split(":")
    local = threading.local()
    try:
        def post(body: bytes) -> dict:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=300)
            conn.request("POST", "/api/qa", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
            return json.loads(data)

        bodies = {e.id: json.dumps({"question": e.question, "context": e.context}).encode() for e in examples}
        for e in examples[:5]:
            post(bodies[e.id])

        def one(e):
            t0 = time.perf_counter()
            answer = post(bodies[e.id])["answer"]
            return e.id, answer, time.perf_counter() - t0

        t0 = time.perf_counter()
        if clients == 1:
            res = [one(e) for e in examples]
        else:
            with ThreadPoolExecutor(clients) as ex:
                res = list(ex.map(one, examples))
        wall = time.perf_counter() - t0
        rss = peak_rss_mb(s.proc.pid)
    finally:
        s.stop()
    return {"wall_s": wall, "latencies": [r[2] for r in res], "answers": {r[0]: r[1] for r in res}, "peak_rss_mb": rss}


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
    ap.add_argument("--modes", default="1,8")
    ap.add_argument("--report-only", action="store_true", help="rewrite performance.md/.png from results.json without running")
    ap.add_argument("--engines-alone", action="store_true",
                    help="time the encoders alone (llama.cpp --outtypes, ONNX Runtime fp32/O2/O2+int8), no HTTP; "
                         "appends to benchmarks/steps/engines-alone.json")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds: every system runs once per round, the order rotated each round; "
                         "a row is its median round (the machine's speed drifts by up to 2x over minutes)")
    ap.add_argument("--onnx", default="int8", help="ONNX quantisations to serve with `--engine onnx` (int8, int8-tensor, none); empty: none")
    ap.add_argument("--no-default-row", dest="default_row", action="store_false",
                    help="skip `qabridge serve` with no --model/--engine (the default a user gets)")
    ap.add_argument("--no-inprocess-row", dest="inprocess_row", action="store_false",
                    help="skip qabridge's Python API in-process (qabridge.pipeline(), the default model), the peers' setting")
    ap.add_argument("--limit", type=int, default=None, help="smoke run: same as --n")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    if args.limit:
        args.n = args.limit
    if args.engines_alone:
        res = engines_alone(args.n, args.rounds, args.threads, args.outtypes.split(","))
        f = OUT / "steps" / "engines-alone.json"
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
        write_report(saved["rows"], saved["machine"], saved["n"], saved.get("rounds", 1))
        return
    from tqdm import tqdm

    from qabridge.export.run import export
    from qabridge.train.squad import load_squad, squad_file

    examples = load_squad(squad_file("dev"))[: args.n]
    py = setup_peer()
    model_dir = merged_model_dir()
    ort_dirs = ort_peer_dirs(py, model_dir)
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
    rows = []
    plan = []
    for c in (int(x) for x in args.modes.split(",")):
        for name, peer in peers:
            plan.append((name, "peer", peer, c, []))
        for o, p in ggufs.items():
            # Default serving settings: min(4, cores) contexts sharing the cores between the requests encoding at once.
            plan.append((f"qabridge HTTP (llama.cpp {o})", "bridge", p, c, ["--engine", "llama.cpp"]))
            for extra in filter(None, args.variant):
                plan.append((f"qabridge HTTP (llama.cpp {o}, {extra})", "bridge", p, c, ["--engine", "llama.cpp", *extra.split()]))
        for k, p in onnx_files.items():
            plan.append((f"qabridge HTTP (onnxruntime {k.split('+')[1]})", "bridge", p, c, ["--engine", "onnx"]))
        if args.default_row:
            plan.append(("qabridge HTTP (default settings)", "bridge", None, c, []))
        if args.inprocess_row:
            plan.append(("qabridge Python API in-process (default)", "inproc", None, c, []))
    runs: dict[int, list[dict]] = {i: [] for i in range(len(plan))}
    # Round r starts r/rounds of the way into the plan and wraps around.
    steps = [(r, (i + r * len(plan) // args.rounds) % len(plan)) for r in range(args.rounds) for i in range(len(plan))]
    for r, i in tqdm(steps, desc="bench", unit="run"):
        name, kind, target, c, extra = plan[i]
        res = (run_peer(py, target, examples, c) if kind == "peer" else run_inprocess(examples, c) if kind == "inproc"
               else run_bridge(target, examples, c, extra))
        runs[i].append(summarise(name, res, examples, c))
        tqdm.write(json.dumps({"round": r + 1, **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in runs[i][-1].items()}}))
    for i in range(len(plan)):
        by_qps = sorted(runs[i], key=lambda x: x["qps"])
        rows.append({**by_qps[(len(by_qps) - 1) // 2], "rounds_qps": [round(x["qps"], 2) for x in runs[i]],
                     "rounds_peak_rss_mb": [round(x["peak_rss_mb"]) for x in runs[i]]})
    machine = machine_info()
    OUT.mkdir(exist_ok=True)
    run = {"machine": machine, "n": args.n, "rounds": args.rounds, "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    (OUT / "results.json").write_text(json.dumps(run, indent=2) + "\n")
    runs_file = OUT / "runs.json"
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else []
    runs.append(run)
    runs_file.write_text(json.dumps(runs, indent=2) + "\n")
    write_report(rows, machine, args.n, args.rounds)


def training_cost_section() -> list[str]:
    """The training-cost tables from scripts/train_cost.py's committed results (CPU, GPU)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_cost", ROOT / "scripts" / "train_cost.py")
    tc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tc)
    out = ["", "## Training cost (384-token windows, the default recipe: LoRA r=32 on query/key/value/dense)", ""]
    for name in ("train-cost-cpu.json", "train-cost-gpu.json"):
        f = OUT / name
        if not f.exists():
            continue
        res = json.loads(f.read_text())
        out += [f"`{name}`: {res['steps']} steps of {res['batch_size']} windows per method on {res['device']}, "
                f"one method at a time (`scripts/train_cost.py`; on the GPU via `scripts/device_cost.sh`).", "",
                tc.table(res), ""]
    out.append("Peak RSS includes reading all of SQuAD train before the subset is drawn. Windows are padded to the "
               "longest in their batch (length-grouped), not to 384. The GPU's 300-step speeds are dominated by "
               "start-up; its 3-epoch runs went at 1,239-1,490 windows/s (benchmarks/quality.md).")
    return out


def write_report(rows, machine, n, rounds: int = 1) -> None:
    lines = ["# Performance: bridge vs the transformers QA pipeline (torch, ONNX Runtime)\n",
             f"Machine: {machine['cpu']}, {machine['cpus']} cores ({machine['platform']}). First {n} SQuAD v1.1 dev questions.",
             f"SIMD flags: {' '.join(machine.get('simd_flags', [])) or 'not recorded'}.",
             f"{rounds} interleaved round(s): each row is the system's median round by q/s (its latencies, scores and "
             "RSS from that round); every round's q/s is in the last column.",
             "Reproduce: `.venv/bin/python scripts/bench.py` (writes results.json, this file and performance.png).\n",
             "| system | clients | q/s | p50 ms | p95 ms | EM | F1 | peak RSS MB | q/s per round |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per = ", ".join(f"{q:.1f}" for q in r.get("rounds_qps", [r["qps"]]))
        lines.append(f"| {r['system']} | {r['clients']} | {r['qps']:.2f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                     f"{r['exact_match']:.2f} | {r['f1']:.2f} | {r['peak_rss_mb']:.0f} | {per} |")
    lines.append("")
    for c in sorted({r["clients"] for r in rows}):
        peers = [r for r in rows if r["clients"] == c and r["system"].startswith("transformers")]
        if not peers:
            continue
        torch_peer = next((r for r in peers if "torch" in r["system"]), peers[0])
        best = max(peers, key=lambda r: r["qps"])
        for r in rows:
            if r["clients"] == c and r not in peers:
                lines.append(f"- {c} client(s), {r['system']}: throughput x{r['qps'] / best['qps']:.2f} of the best peer "
                             f"({best['system'].split('(')[-1].rstrip(')')}), x{r['qps'] / torch_peer['qps']:.2f} of torch; "
                             f"p50 x{r['p50_ms'] / best['p50_ms']:.2f}; RSS x{r['peak_rss_mb'] / best['peak_rss_mb']:.2f}; "
                             f"F1 {r['f1'] - torch_peer['f1']:+.2f} vs torch")
    lines += training_cost_section()
    (OUT / "performance.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        labels = [f"{r['system'].split(' (')[0].replace('transformers-4.57.6 pipeline', 'HF pipeline')}\n{r['system'].split('(')[-1].rstrip(')')}, {r['clients']}c" for r in rows]
        axes[0].bar(labels, [r["qps"] for r in rows], color=["#999" if r["system"].startswith("transformers") else "#2a7" for r in rows])
        axes[0].set_ylabel("questions / s")
        axes[1].bar(labels, [r["peak_rss_mb"] for r in rows], color=["#999" if r["system"].startswith("transformers") else "#27a" for r in rows])
        axes[1].set_ylabel("peak RSS (MB)")
        for ax in axes:
            ax.tick_params(axis="x", labelsize=7, rotation=30)
        fig.suptitle(f"First {n} SQuAD dev questions, {machine['cpus']}-core CPU")
        fig.tight_layout()
        fig.savefig(OUT / "performance.png", dpi=110)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
