"""Ten adapters over one base against ten merged models (issue 34 part 3): memory and speed.

    .venv/bin/python scripts/bench_adapters.py [--n 200] [--adapters 10] [--outtype auto] [--engine openvino]

Makes ``--adapters`` real LoRA adapters over MiniLM (the committed ``models/lora`` with its LoRA B
scaled by 0.55, 0.6, ... so that each answers differently), then measures ``qabridge serve`` over
real HTTP on loopback, each configuration in a fresh process:

- peak RSS (VmHWM) with 1 and with all adapters (``--adapter``, one base), and with 1 and all of
  their merged exports (``--model``), after every model answered the same 20 questions;
- q/s of one client on ``--n`` SQuAD dev questions, the first adapter (runtime LoRA) against its
  merged model, both served by one bridge and taking turns every 25 questions;
- whether each adapter's answers equal its merged model's (text, offsets; the score difference).

``--engine openvino``: the adapters over one OpenVINO base (bridge/openvino_lora.py) against merged
OpenVINO IRs of the precision ``--outtype`` maps to (f32 -> f32, else bf16 where the CPU has it).

Writes benchmarks/results/adapters/<stamp>.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_adapt import cpu_family, cpu_name  # noqa: E402
from bench_child import peak_rss_mb  # noqa: E402


def make_adapters(n: int, work: Path) -> list[Path]:
    from safetensors.numpy import load_file, save_file

    src = ROOT / "models" / "lora"
    base = load_file(str(src / "adapter_model.safetensors"))
    out = []
    for i in range(n):
        d = work / f"a{i}"
        if not d.exists():
            shutil.copytree(src, d)
            f = 0.55 + 0.05 * i
            save_file({k: v * f if ".lora_B." in k else v for k, v in base.items()}, str(d / "adapter_model.safetensors"),
                      metadata={"format": "pt"})
        out.append(d)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bridge:
    def __init__(self, argv: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "qabridge.cli", "serve", "--port", str(self.port), *argv],
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT)
        t = time.time()
        while time.time() - t < 600:
            if self.proc.poll() is not None:
                raise RuntimeError(log.read_text()[-2000:])
            try:
                if httpx.get(self.url + "/api/health", timeout=2).json().get("ready"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("bridge not ready")

    def batch(self, model: str, qs: list[dict]) -> list[dict]:
        out = []
        for i in range(0, len(qs), 20):  # within the bridge's body and batch limits
            r = httpx.post(self.url + "/api/qa/batch", json={"qa_pairs": [{**q, "model": model} for q in qs[i:i + 20]]},
                           timeout=600)
            r.raise_for_status()
            out += r.json()["results"]
        return out

    def stop(self) -> float:
        rss = peak_rss_mb(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(30)
        return rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--adapters", type=int, default=10)
    ap.add_argument("--outtype", default="auto", help="GGUF type of the base and of the merged models")
    ap.add_argument("--engine", choices=["llama.cpp", "openvino"], default="llama.cpp")
    ap.add_argument("--work", default=str(ROOT / ".cache" / "bench-adapters"))
    a = ap.parse_args()
    from qabridge.export.run import auto_outtype, export
    from qabridge.train.squad import load_squad, squad_file

    outtype = auto_outtype() if a.outtype == "auto" else a.outtype
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    adapters = make_adapters(a.adapters, work)
    merged = []
    precision = None
    if a.engine == "openvino":
        from qabridge.bridge.adapters import openvino_precision
        from qabridge.export.openvino_export import export_openvino

        precision = openvino_precision(outtype)
        # The shared base IR is built (and cached) on first use: built here, so no serve's peak RSS holds the export.
        from qabridge.export.run import openvino_base

        openvino_base(None, precision)
    for d in adapters:
        f = work / (f"m-{d.name}.{outtype}.gguf" if precision is None else f"m-{d.name}.ov-{precision}.xml")
        if not f.exists():
            if precision is None:
                export(d, output=f, outtype=outtype, modelfile=None)
            else:
                export_openvino(d, f, precision=precision)
        merged.append(f)
    dev = squad_file("dev")
    if dev is None:
        sys.exit("needs SQuAD v1.1 dev (QABRIDGE_SQUAD_DIR or ../shared/data/squad)")
    qs = [{"question": e.question, "context": e.context} for e in list(load_squad(dev))[: a.n]]
    logs = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    common = ["--default-outtype", outtype, "--engine", a.engine]

    def rss_of(argv: list[str], names: list[str]) -> float:
        b = Bridge(common + argv, logs / f"{len(names)}-{time.time():.0f}.log")
        for name in names:
            b.batch(name, qs[:20])
        return b.stop()

    # The first merged model is every configuration's default, so each differs by what is measured alone.
    first = ["--model", str(merged[0])]
    ad_args = lambda k: [x for i, d in enumerate(adapters[:k]) for x in ("--adapter", f"a{i}={d}")]  # noqa: E731
    rss = {
        "adapters_1": rss_of(first + ad_args(1), ["a0"]),
        f"adapters_{a.adapters}": rss_of(first + ad_args(a.adapters), [f"a{i}" for i in range(a.adapters)]),
        "merged_1": rss_of(first, [merged[0].stem]),
        f"merged_{a.adapters}": rss_of([x for f in merged for x in ("--model", str(f))],
                                       [f.stem for f in merged]),
    }
    adapter_bytes = (adapters[0] / "adapter_model.safetensors").stat().st_size

    # Speed and equality: adapter a0 and its merged model in one bridge, taking turns.
    b = Bridge(common + [x for f in merged for x in ("--model", str(f))] + ad_args(a.adapters), logs / "speed.log")
    m0 = merged[0].stem
    for name in ("a0", m0):
        b.batch(name, qs[:10])  # warm-up
    times: dict[str, list[float]] = {"a0": [], m0: []}
    answers: dict[str, list[dict]] = {"a0": [], m0: []}
    for i in range(0, len(qs), 25):
        for name in (("a0", m0) if (i // 25) % 2 == 0 else (m0, "a0")):
            for q in qs[i:i + 25]:
                t = time.perf_counter()
                r = httpx.post(b.url + "/api/qa", json={**q, "model": name}, timeout=60)
                times[name].append(time.perf_counter() - t)
                answers[name].append(r.json())
    equal = {}
    for i in range(a.adapters):
        got = b.batch(f"a{i}", qs)
        ref = b.batch(merged[i].stem, qs)
        errors = [x for x in got + ref if "score" not in x]
        if errors:
            sys.exit(f"a{i}: {len(errors)} error(s), first {errors[0]}")
        d = np.abs(np.array([x["score"] for x in got]) - np.array([x["score"] for x in ref]))
        equal[f"a{i}"] = {"same_spans": sum((x["answer"], x["start"], x["end"]) == (y["answer"], y["start"], y["end"])
                                            for x, y in zip(got, ref)),
                          "questions": len(qs), "score_diff_max": float(d.max()), "score_diff_median": float(np.median(d))}
    b.stop()
    qps = {k: round(len(v) / sum(v), 2) for k, v in times.items()}
    res = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": {"model": cpu_name(), "family": cpu_family(), "cores": os.cpu_count()},
        "command": " ".join(["scripts/bench_adapters.py", *sys.argv[1:]]),
        "engine": a.engine,
        "outtype": outtype if precision is None else f"openvino {precision}",
        "adapter_file_bytes": adapter_bytes,
        "peak_rss_mb": rss,
        "rss_delta_adapters_mb": round(rss[f"adapters_{a.adapters}"] - rss["adapters_1"], 1),
        "rss_delta_merged_mb": round(rss[f"merged_{a.adapters}"] - rss["merged_1"], 1),
        "rss_bound_mb": round(a.adapters * (adapter_bytes / 2**20 + 3), 1),
        "one_client_qps": {"runtime_lora": qps["a0"], "merged": qps[m0]},
        "p50_ms": {"runtime_lora": round(1000 * statistics.median(times["a0"]), 2),
                   "merged": round(1000 * statistics.median(times[m0]), 2)},
        "lora_cost_pct": round(100 * (qps[m0] / qps["a0"] - 1), 1),
        "equality": equal,
    }
    out = ROOT / "benchmarks" / "results" / "adapters"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M", time.gmtime())
    (out / f"{stamp}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
