"""Bridge vs the transformers 4.57.6 QA pipeline, on the same questions, in one run.

    .venv/bin/python scripts/bench.py [--n 2000] [--outtypes q8_0,bf16] [--variant '--contexts 1']

Sets up .venv-peer (transformers 4.57.6, the last release with the QA pipeline) on first use,
merges the committed adapter into fp32 weights for the peer (token-type row 1 set equal to row 0,
so its 0/1 segments compute what the bridge's all-zero segments compute), then for each mode
(1 client, 8 concurrent clients) runs the peer in-process and the bridge over HTTP, alternating.
Writes benchmarks/results.json, benchmarks/performance.md and benchmarks/performance.png.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PEER = ROOT / ".venv-peer"
OUT = ROOT / "benchmarks"
CACHE = ROOT / ".cache" / "bench"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def setup_peer() -> Path:
    py = PEER / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import transformers, torch; assert transformers.__version__ == '4.57.6'"]).returncode == 0:
        return py
    sh([sys.executable, "-m", "venv", str(PEER)])
    # torch comes from the project's .venv (same wheel, no second 2.5 GB download); the peer's own
    # site-packages come first, so its transformers 4.57.6 and tokenizers win.
    site = next((PEER / "lib").glob("python3*/site-packages"))
    main_site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    (site / "zz_qabridge_torch.pth").write_text(str(main_site) + "\n")
    sh([str(py), "-m", "pip", "install", "-q", "transformers==4.57.6", "tokenizers>=0.22,<0.23", "huggingface-hub<1.0", "safetensors"])
    return py


def merged_model_dir() -> Path:
    import torch

    from qabridge.paths import DEFAULT_ADAPTER
    from qabridge.train.model import load_for_inference, tokenizer_dir
    from qabridge.core.hashing import adapter_hash

    d = CACHE / f"merged-{adapter_hash(DEFAULT_ADAPTER)[:12]}"
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


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def score(answers: dict, examples) -> dict:
    from qabridge.train import metrics

    return metrics.evaluate(answers, ((e.id, [a.text for a in e.answers]) for e in examples))


def run_peer(py: Path, model_dir: Path, examples, clients: int) -> dict:
    job = {"model_dir": str(model_dir), "clients": clients, "threads": os.cpu_count() or 2,
           "items": [{"id": e.id, "question": e.question, "context": e.context} for e in examples]}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["HF_HUB_OFFLINE"] = "1"
    r = subprocess.run([str(py), str(ROOT / "scripts" / "bench_peer.py")], input=json.dumps(job), capture_output=True,
                       text=True, env=env, check=False)
    if r.returncode != 0:
        raise SystemExit(f"peer failed: {r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_bridge(model: Path, examples, clients: int, extra: list[str]) -> dict:
    import httpx

    from tests.helpers import start_server

    tmp = CACHE / "logs"
    tmp.mkdir(parents=True, exist_ok=True)
    s = start_server(model, tmp, *extra)
    try:
        client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=clients + 2))
        for e in examples[:5]:
            client.post(s.url + "/api/qa", json={"question": e.question, "context": e.context})

        def one(e):
            t0 = time.perf_counter()
            r = client.post(s.url + "/api/qa", json={"question": e.question, "context": e.context})
            r.raise_for_status()
            return e.id, r.json()["answer"], time.perf_counter() - t0

        t0 = time.perf_counter()
        if clients == 1:
            res = [one(e) for e in examples]
        else:
            with ThreadPoolExecutor(clients) as ex:
                res = list(ex.map(one, examples))
        wall = time.perf_counter() - t0
        rss = vm_hwm_mb(s.proc.pid)
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
    args = ap.parse_args()
    if args.report_only:
        saved = json.loads((OUT / "results.json").read_text())
        write_report(saved["rows"], saved["machine"], saved["n"])
        return
    from tqdm import tqdm

    from qabridge.export.run import export
    from qabridge.train.squad import load_squad, squad_file

    examples = load_squad(squad_file("dev"))[: args.n]
    py = setup_peer()
    model_dir = merged_model_dir()
    ggufs = {}
    for o in args.outtypes.split(","):
        p = CACHE / f"bert-qa.{o}.gguf"
        if not p.exists():
            export(ROOT / "models" / "lora", output=p, outtype=o, modelfile=None)
        ggufs[o] = p
    rows = []
    plan = []
    for c in (int(x) for x in args.modes.split(",")):
        plan.append(("transformers-4.57.6 pipeline (torch fp32)", None, c, []))
        for o, p in ggufs.items():
            # Default serving settings: min(4, cores) contexts sharing the cores between the requests encoding at once.
            plan.append((f"qabridge HTTP (llama.cpp {o})", p, c, []))
            for extra in filter(None, args.variant):
                plan.append((f"qabridge HTTP (llama.cpp {o}, {extra})", p, c, extra.split()))
    for name, p, c, extra in tqdm(plan, desc="bench", unit="run"):
        res = run_peer(py, model_dir, examples, c) if p is None else run_bridge(p, examples, c, extra)
        rows.append(summarise(name, res, examples, c))
        tqdm.write(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in rows[-1].items()}))
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": _cpu()}
    OUT.mkdir(exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"machine": machine, "n": args.n, "rows": rows}, indent=2) + "\n")
    write_report(rows, machine, args.n)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


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


def write_report(rows, machine, n) -> None:
    lines = ["# Performance: bridge vs transformers QA pipeline\n",
             f"Machine: {machine['cpu']}, {machine['cpus']} cores ({machine['platform']}). First {n} SQuAD v1.1 dev questions.",
             "Reproduce: `.venv/bin/python scripts/bench.py` (writes results.json, this file and performance.png).\n",
             "| system | clients | q/s | p50 ms | p95 ms | EM | F1 | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['clients']} | {r['qps']:.2f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                     f"{r['exact_match']:.2f} | {r['f1']:.2f} | {r['peak_rss_mb']:.0f} |")
    lines.append("")
    for c in sorted({r["clients"] for r in rows}):
        peer = next(r for r in rows if r["clients"] == c and r["system"].startswith("transformers"))
        for r in rows:
            if r["clients"] == c and r is not peer:
                lines.append(f"- {c} client(s), {r['system']}: throughput x{r['qps'] / peer['qps']:.2f}, "
                             f"p50 x{r['p50_ms'] / peer['p50_ms']:.2f}, RSS x{r['peak_rss_mb'] / peer['peak_rss_mb']:.2f}, "
                             f"F1 {r['f1'] - peer['f1']:+.2f}")
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
