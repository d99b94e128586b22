"""The ONNX Runtime measurements behind docs/performance.md (step 7), rerunnable.

    .venv/bin/python benchmarks/experiments/onnx_steps.py skipln              # one SkipLayerNormalization vs Add + LayerNormalization
    .venv/bin/python benchmarks/experiments/onnx_steps.py variants            # per-input int8 recipes: agreement and speed
    .venv/bin/python benchmarks/experiments/onnx_steps.py openvino            # OpenVINO beside ORT (pip install openvino nncf)
    .venv/bin/python benchmarks/experiments/onnx_steps.py ceiling             # the CPU's GEMM ceiling and each engine's share of it
    .venv/bin/python benchmarks/experiments/onnx_steps.py batching            # windows per ORT call: grouping rules compared

``variants`` exports the committed adapter once (fp32 reference, O2 graph with MultiHeadAttention),
then quantises it with chosen inputs per tensor instead of per token (``--variant name=indices``,
indices in graph order: per layer Q/K/V input, attention output, FFN input, FFN output) and
reports, for each, argmax span agreement with the fp32 graph on the test fixture (95 questions),
the first 300 dev questions and every 50th (200), and ms per question with the graphs taking
turns every 20 questions (the default int8 file and the peer's graph beside them when present).
Timings name the CPU; they hold for it only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))  # bench.py
sys.path.insert(0, str(ROOT))

LAYERS = 6
ROLES = {"qkv": 0, "attn_out": 1, "ffn_in": 2, "ffn_out": 3}
VARIANTS = {  # name -> inputs quantised per tensor
    "per-token (recipe 3)": [],
    "per-tensor everywhere": list(range(4 * LAYERS)),
    "per-tensor Q/K/V input": [4 * i + ROLES["qkv"] for i in range(LAYERS)],
    "per-tensor attention output": [4 * i + ROLES["attn_out"] for i in range(LAYERS)],
    "per-tensor FFN output": [4 * i + ROLES["ffn_out"] for i in range(LAYERS)],
    "per-token FFN only": [4 * i + r for i in range(LAYERS) for r in (ROLES["qkv"], ROLES["attn_out"])],
}


def skipln(rows: int, hidden: int = 384, reps: int = 2000) -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    def model(fused: bool) -> bytes:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, hidden])
        s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, rows, hidden])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        rng = np.random.default_rng(0)
        inits = [numpy_helper.from_array(rng.random(hidden, dtype=np.float32), n) for n in ("g", "b", "bias")]
        if fused:
            nodes = [helper.make_node("SkipLayerNormalization", ["x", "s", "g", "b", "bias"], ["y"], domain="com.microsoft", epsilon=1e-12)]
        else:
            nodes = [helper.make_node("Add", ["x", "s"], ["t"]), helper.make_node("Add", ["t", "bias"], ["t2"]),
                     helper.make_node("LayerNormalization", ["t2", "g", "b"], ["y"], axis=-1, epsilon=1e-12)]
        m = helper.make_model(helper.make_graph(nodes, "g", [x, s], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        m.ir_version = 8
        return m.SerializeToString()

    rng = np.random.default_rng(1)
    feed = {"x": rng.standard_normal((1, rows, hidden), dtype=np.float32), "s": rng.standard_normal((1, rows, hidden), dtype=np.float32)}
    print(f"{cpu()}: one [{rows}, {hidden}] input, us per run (median of 5 x {reps})")
    for threads in (1, 2):
        for fused in (True, False):
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            sess = ort.InferenceSession(model(fused), so, providers=["CPUExecutionProvider"])
            out = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(reps):
                    sess.run(None, feed)
                out.append(1e6 * (time.perf_counter() - t0) / reps)
            print(f"  {threads} thread(s)  {'SkipLayerNormalization' if fused else 'Add + Add + LayerNormalization':<32} {statistics.median(out):7.1f}")


def cpu() -> str:
    from bench import machine_info

    return machine_info()["cpu"]


def build_variants(work: Path, names: list[str]) -> dict[str, Path]:
    from qabridge.export import onnx_export as oe
    from qabridge.export.merge import merge_adapter
    from qabridge.paths import DEFAULT_ADAPTER

    merged = merge_adapter(DEFAULT_ADAPTER)
    fp32, o2 = work / "fp32.onnx", work / "o2-mha.onnx"
    oe._export_fp32(merged, fp32)
    oe._optimize(fp32, o2, merged.spec, mha=True)
    out = {"fp32": fp32}
    for name in names:
        q, p = work / f"v{len(out)}.q.onnx", work / f"v{len(out)}.onnx"
        oe._quantize_per_token(o2, q, per_tensor=set(VARIANTS[name]))
        oe._split_skip_layernorm(q, p)
        out[name] = p
    return out


def variants(names: list[str], n_speed: int, rounds: int) -> None:
    from types import SimpleNamespace

    from bench import PeerGraph, merged_path, peer_ort_dir, take_turns

    from qabridge.bridge.engine_select import default_candidates
    from qabridge.bridge.onnx_engine import inference_session, onnx_pipeline, session_options
    from qabridge.train.squad import load_squad, squad_file
    from tests.conftest import DEV_SAMPLE

    default = default_candidates(onnx_types=("int8",), engines=("onnx",))[0].path  # metadata for every graph
    with tempfile.TemporaryDirectory(prefix="qabridge-steps-") as td:
        files = build_variants(Path(td), names)

        def pipe_for(path: Path):
            p = onnx_pipeline(default, n_threads=2)
            p.encoder.session = inference_session(path, session_options(2))  # same metadata, this graph
            return p

        dev = load_squad(squad_file("dev"))
        sets = {"fixture (95)": load_squad(DEV_SAMPLE), "first 300": dev[:300], "every 50th (200)": dev[::50][:200]}
        ref = pipe_for(files["fp32"])
        refs = {k: [ref.predict(e.question, e.context, top_k=2).spans for e in ex] for k, ex in sets.items()}
        print(f"argmax span agreement with the fp32 graph ({cpu()}), flips' largest fp32 margin in brackets:")
        for name in names:
            p, cells = pipe_for(files[name]), []
            for k, ex in sets.items():
                flips = []
                for e, top in zip(ex, refs[k]):
                    got = p.predict(e.question, e.context).spans[0]
                    if (got.start, got.end) != (top[0].start, top[0].end):
                        flips.append(top[0].score - (top[1].score if len(top) > 1 else 0.0))
                cells.append(f"{k} {len(ex) - len(flips)}/{len(ex)} [{max(flips, default=0):.3f}]")
            print(f"  {name:<30} " + " | ".join(cells))
        systems = {name: pipe_for(files[name]) for name in names}
        systems["default file " + Path(default).name] = onnx_pipeline(default, n_threads=2)
        peer = peer_ort_dir(merged_path()) / "o2-int8" / "model.onnx"
        if peer.exists():
            systems["peer graph (optimum O2 + int8)"] = SimpleNamespace(encoder=PeerGraph(peer, 2))
        ex = dev[:n_speed]
        prepared = [ref.prepare(e.question, e.context)[1] for e in ex]
        times = take_turns(systems, prepared, rounds)
        first = statistics.median(times[names[0]])
        print(f"ms per question, first {n_speed} dev questions, 2 threads, {rounds} rounds taking turns every 20 ({cpu()}):")
        for k, t in times.items():
            print(f"  {k:<44} {[round(x, 2) for x in t]}  median {statistics.median(t):.2f}  x{statistics.median(t) / first:.3f}")


def openvino(n: int, rounds: int) -> None:
    try:
        import nncf
        import openvino as ov
    except ImportError:
        raise SystemExit("needs `pip install openvino nncf` (not a qabridge dependency)") from None
    from bench import take_turns

    from qabridge.bridge.engine_select import default_candidates
    from qabridge.bridge.onnx_engine import onnx_pipeline
    from qabridge.core.windows import padded_batch
    from qabridge.train.squad import load_squad, squad_file

    with tempfile.TemporaryDirectory(prefix="qabridge-ov-") as td:
        fp32 = build_variants(Path(td), [])["fp32"]
        default = default_candidates(onnx_types=("int8",), engines=("onnx",))[0].path
        core = ov.Core()
        model = core.read_model(str(fp32))
        systems = {"onnxruntime int8 (default file)": onnx_pipeline(default, n_threads=2)}
        base = {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        configs = {"openvino f32": (model, {**base, "INFERENCE_PRECISION_HINT": "f32"}),
                   "openvino bf16": (model, {**base, "INFERENCE_PRECISION_HINT": "bf16"})}
        w8 = nncf.compress_weights(model.clone(), mode=nncf.CompressWeightsMode.INT8_SYM)
        for g in (32, 0):
            configs[f"openvino int8 weights, dynamic activations group {g or 'off'}"] = (
                w8, {**base, "INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": g})
        for name, (m, cfg) in configs.items():
            compiled = core.compile_model(m, "CPU", cfg)
            req = compiled.create_infer_request()
            p = onnx_pipeline(default, n_threads=1)  # the file's metadata (span head, vocabulary); OpenVINO runs

            def run(seqs, req=req, compiled=compiled):
                ids, mask = padded_batch(seqs)
                return req.infer({"input_ids": ids, "attention_mask": mask})[compiled.output(0)]

            p.encoder._run = run
            systems[name] = p
        ex = load_squad(squad_file("dev"))[:n]
        first = next(iter(systems.values()))
        prepared = [first.prepare(e.question, e.context)[1] for e in ex]
        times = take_turns(systems, prepared, rounds)
        print(f"openvino {ov.__version__}, ms per question, first {n} dev questions, 2 threads ({cpu()}):")
        for k, t in times.items():
            print(f"  {k:<56} {[round(x, 2) for x in t]}  median {statistics.median(t):.2f}")


def gemm_rate(kind: str, m: int, k: int, n: int, threads: int = 2, reps: int = 20) -> float:
    """G(multiply-add x 2) per second of one ORT GEMM [m, k] x [k, n]: fp32 MatMul or int8
    MatMulIntegerToFloat (u8 activations, s8 weights: the default engine's kernel)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        w = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
        nodes, inits = [helper.make_node("MatMul", ["x", "w"], ["y"])], [w]
        feed = {"x": rng.standard_normal((m, k), dtype=np.float32)}
    else:
        inits = [numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w"),
                 numpy_helper.from_array(np.array(0.01, dtype=np.float32), "a_s"),
                 numpy_helper.from_array(np.full(n, 0.01, dtype=np.float32), "w_s"),
                 numpy_helper.from_array(np.array(128, dtype=np.uint8), "a_zp")]
        x = helper.make_tensor_value_info("x", TensorProto.UINT8, [m, k])
        nodes = [helper.make_node("MatMulIntegerToFloat", ["x", "w", "a_s", "w_s", "a_zp"], ["y"], domain="com.microsoft")]
        feed = {"x": rng.integers(0, 256, (m, k), dtype=np.uint8)}
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, feed)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            sess.run(None, feed)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * m * k * n / best / 1e9


def ceiling(n: int) -> None:
    """Arithmetic per question (weight GEMMs + attention) against the best GEMM rate ORT reaches on
    this CPU, and each engine's share of it (engines-alone timings of the latest run)."""
    import json

    from qabridge.bridge.onnx_engine import onnx_pipeline
    from qabridge.train.squad import load_squad, squad_file

    runs = json.loads((ROOT / "benchmarks" / "results" / "performance" / "engines-alone.json").read_text())
    run = next((r for r in reversed(runs) if r["n"] == n), None)
    if run is None:
        raise SystemExit(f"no engines-alone run over {n} questions in benchmarks/results/performance/engines-alone.json")
    from qabridge.bridge.engine_select import default_candidates

    pipe = onnx_pipeline(default_candidates(onnx_types=("int8",), engines=("onnx",))[0].path, n_threads=1)
    windows = [len(w.input_ids) for e in load_squad(squad_file("dev"))[:n] for w in pipe.prepare(e.question, e.context)[1]]
    h, ff, layers = 384, 1536, 6
    gemm = sum(2 * t * layers * (4 * h * h + 2 * h * ff) for t in windows) / n / 1e9
    attn = sum(2 * layers * 2 * t * t * h for t in windows) / n / 1e9
    mean = sum(windows) / len(windows)
    rates = {}
    for kind in ("int8", "fp32"):
        rates[kind] = max(gemm_rate(kind, m, k, nn) for m, k, nn in ((2048, h, ff), (2048, ff, h), (round(mean), h, ff)))
    print(f"{cpu()}, 2 threads: best ORT GEMM rate (2048 x 384 x 1536 and transposed, or one window's "
          f"{round(mean)} rows): int8 {rates['int8']:.0f} GOP/s, fp32 {rates['fp32']:.0f} GFLOP/s")
    print(f"per question ({n} dev questions, {len(windows)} windows of {mean:.1f} tokens): weight GEMMs "
          f"{gemm:.2f} GOP, attention {attn:.2f} GOP")
    print(f"  {'engine':<40} {'ms/q':>6} {'GOP/s':>7}  share of the ceiling")
    for r in run["rows"]:
        ms = r["median_ms"]
        rate = (gemm + attn) / (ms / 1e3)
        int8 = "int8" in r["system"] or "q8_0" in r["system"]
        floor_ms = 1e3 * (gemm / rates["int8" if int8 else "fp32"] + attn / rates["fp32"])
        print(f"  {r['system']:<40} {ms:6.2f} {rate:7.0f}  {100 * floor_ms / ms:4.0f}% (GEMM-only floor {floor_ms:.2f} ms)")


def batching(rules: list[str], rounds: int) -> None:
    """The default int8 graph, 2 threads, windows grouped by ``token_batches`` under each rule
    ("TOKENS:PADDING": at most TOKENS rows a call, at most PADDING of them padding; "1:0" one window
    a call, "3072:1" the former 8 windows of 384): eval's length-sorted windows (first 300 dev
    questions, in groups of 50), the first 40 dev questions with several windows, one 6-window context
    (ten dev paragraphs joined). The rules take turns on every call (bench.turns: the machine's speed drifts)."""
    from bench import turns

    from qabridge.bridge.engine_select import default_candidates
    from qabridge.bridge.onnx_engine import onnx_pipeline
    from qabridge.train.squad import load_squad, squad_file

    pipe = onnx_pipeline(default_candidates(onnx_types=("int8",), engines=("onnx",))[0].path, n_threads=2)
    eng = pipe.encoder
    ex = load_squad(squad_file("dev"))
    evalw = [w for e in ex[:300] for w in pipe.prepare(e.question, e.context)[1]]
    multi = [ws for ws in (pipe.prepare(e.question, e.context)[1] for e in ex[:3000]) if len(ws) > 1][:40]
    long = pipe.prepare("who won the game?", " ".join(e.context for e in ex[:40:4]))[1]
    print(f"{cpu()}, 2 threads; eval: {len(evalw)} windows; several windows: {len(multi)} questions, "
          f"{sum(map(len, multi))} windows; one long context: {[len(w.input_ids) for w in long]} tokens")
    units = [("eval", evalw[i : i + 50]) for i in range(0, len(evalw), 50)] + [("several", ws) for ws in multi] \
        + [("long", long)] * 4
    counts = {"eval": len(evalw), "several": len(multi), "long": 4}
    parsed = {r: (int(r.split(":")[0]), float(r.split(":")[1])) for r in rules}
    spent = [{rule: dict.fromkeys(counts, 0.0) for rule in rules} for _ in range(rounds)]
    for r, j, rule in turns(rules, len(units), rounds):
        kind, ws = units[j]
        eng.batch_tokens, eng.max_padding = parsed[rule]
        t0 = time.perf_counter()
        eng.logits(ws)
        spent[r][rule][kind] += time.perf_counter() - t0
    print("rule: eval ms/window, several windows ms/question, long context ms (per round)")
    for r in range(rounds):
        for rule in rules:
            ms = {kind: 1e3 * spent[r][rule][kind] / counts[kind] for kind in counts}
            print(f"  round {r + 1} {rule:>8}: {ms['eval']:5.2f}  {ms['several']:6.2f}  {ms['long']:6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("skipln")
    s.add_argument("--rows", type=int, default=150, help="tokens (a SQuAD window averages ~150)")
    v = sub.add_parser("variants")
    v.add_argument("--variant", action="append", choices=list(VARIANTS), help="default: all")
    v.add_argument("--n", type=int, default=300)
    v.add_argument("--rounds", type=int, default=3)
    o = sub.add_parser("openvino")
    o.add_argument("--n", type=int, default=200)
    o.add_argument("--rounds", type=int, default=3)
    c = sub.add_parser("ceiling")
    c.add_argument("--n", type=int, default=300, help="the engines-alone run to read (its question count)")
    b = sub.add_parser("batching")
    b.add_argument("--rule", action="append", help="TOKENS:PADDING (default: 1:0, 512:1, 768:1, 768:0.1, 3072:1)")
    b.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    if a.cmd == "skipln":
        skipln(a.rows)
    elif a.cmd == "variants":
        variants(a.variant or list(VARIANTS), a.n, a.rounds)
    elif a.cmd == "ceiling":
        ceiling(a.n)
    elif a.cmd == "batching":
        batching(a.rule or ["1:0", "512:1", "768:1", "768:0.1", "3072:1"], a.rounds)
    else:
        openvino(a.n, a.rounds)


if __name__ == "__main__":
    main()
