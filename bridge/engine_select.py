"""``--engine auto``: measure the candidate engines on this CPU, keep those that agree, pick the fastest.

Which engine and weight type is fastest depends on the CPU (issue 12: bf16 led on an AMD EPYC with
AVX512-BF16; on an Intel Xeon with AMX, ORT int8 and AMX q8_0 did), so it is measured, not
guessed from flags. Each candidate encodes the same fixed windows (questions of the committed
SQuAD dev sample); a candidate whose argmax spans disagree with the reference's on more than
``1 - min_agreement`` of the questions is dropped, whatever its speed. The choice is cached as
JSON per CPU (model name and flags), thread count, library versions and model files.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qabridge._version import __version__
from qabridge.core.decode import best_spans
from qabridge.core.hashing import sha256_file
from qabridge.errors import ModelError, QABridgeError, UsageError
from qabridge.paths import cache_dir

ENGINES = ("llama.cpp", "onnx", "openvino")
#: The engine a model file's extension names (anything else: a GGUF for llama.cpp).
ENGINE_BY_SUFFIX = {".onnx": "onnx", ".xml": "openvino"}
_LABELS = {"onnx": "onnxruntime"}
#: Fixed questions for the check: the first paragraphs of SQuAD v1.1 dev (tests/fixtures/README.md),
#: shipped with the package so that `auto` works from a wheel too.
DEV_SAMPLE = Path(__file__).resolve().parent / "data" / "squad_sample.json"
#: Questions the built-in models' candidates are checked on: every question of the dev sample.
CHECK_QUESTIONS = 200
#: Interleaved timing rounds, best kept. Two were a coin toss between close candidates: on the
#: 2-core AMD EPYC Zen 4, ONNX Runtime int8 and OpenVINO int8 took 10.89 and 10.89 ms a window at
#: best of two, 11.34 and 10.68 at best of four, and OpenVINO int8 answered 300 dev paragraphs
#: faster in each of 4 interleaved rounds (67-82 q/s against 46-75; docs/performance.md).
ROUNDS = 4
#: A choice measured while other processes took more than this share of the machine's CPU time is
#: served but not cached: it is measured again on the next start. Measured during a benchmark that
#: loaded the machine, auto cached ONNX Runtime int8 (13.5 ms a window against OpenVINO int8's 16.9)
#: where the idle machine measures OpenVINO int8 faster (10.85 against 11.04; 2-core AMD EPYC Zen 4).
BUSY_SHARE = 0.2
#: Precision order for the reference: the most exact candidate available is the yardstick.
_REFERENCE_ORDER = ("f32", "f16", "bf16", "q8_0", "int8")


@dataclass(frozen=True)
class Candidate:
    engine: str  # "llama.cpp" | "onnx" | "openvino"
    path: Path
    outtype: str = ""  # f32, f16, bf16, q8_0 (GGUF); f32, int8 (ONNX): read from the file when empty
    device: str = "cpu"  # "cuda": ONNX Runtime's CUDA provider, or llama.cpp with every layer offloaded

    @property
    def label(self) -> str:
        return f"{_LABELS.get(self.engine, self.engine)} {self.outtype}{' cuda' if self.device == 'cuda' else ''}".strip()

    def open(self, n_threads: int | None = None):
        """A QAPipeline over this candidate (one llama.cpp context: one request at a time)."""
        if self.engine == "onnx":
            from .onnx_engine import onnx_pipeline

            return onnx_pipeline(self.path, n_threads=n_threads, device=self.device)
        if self.engine == "openvino":
            from .openvino_engine import openvino_pipeline

            return openvino_pipeline(self.path, n_threads=n_threads)
        if self.engine == "llama.cpp":
            from .llama_engine import gguf_pipeline

            return gguf_pipeline(self.path, n_threads=n_threads, n_contexts=1, n_gpu_layers=-1 if self.device == "cuda" else 0)
        raise UsageError(f"unknown engine {self.engine!r}; expected one of {', '.join(ENGINES)}")


def file_pipeline(path: str | os.PathLike, engine: str | None = None, n_threads: int | None = None):
    """A QAPipeline over a model file (`qabridge eval --model`, Ray batch actors): ``engine`` or, when
    None, the file's extension (.onnx: ONNX Runtime, .xml: OpenVINO, else llama.cpp) decides."""
    engine = engine or engine_for(path)
    return Candidate(engine, Path(path)).open(n_threads)


def engine_for(path: str | os.PathLike) -> str:
    """The engine a model file runs in, by its extension (:data:`ENGINE_BY_SUFFIX`)."""
    return ENGINE_BY_SUFFIX.get(Path(path).suffix, "llama.cpp")


def candidate_for(path: str | os.PathLike) -> Candidate:
    """A Candidate for a model file, engine by extension and outtype from its metadata."""
    p = Path(path)
    if p.suffix == ".xml":
        from .openvino_engine import OpenVinoModel

        m = OpenVinoModel(p, n_threads=1)
        out = m.outtype
        m.close()
        return Candidate("openvino", p, out)
    if p.suffix == ".onnx":
        from .onnx_engine import OnnxModel

        m = OnnxModel(p, n_threads=1)
        out = m.outtype
        m.close()
        return Candidate("onnx", p, out)
    from qabridge.core.model_file import ModelFile

    return Candidate("llama.cpp", p, ModelFile(p).outtype)


@dataclass
class Measurement:
    label: str
    engine: str
    path: str
    outtype: str
    ms_per_window: float | None = None  # best round
    rounds_ms: list[float] = field(default_factory=list)
    agreement: float | None = None  # share of questions whose argmax span equals the reference's
    passed: bool = False
    error: str | None = None


@dataclass
class EngineChoice:
    engine: str  # "llama.cpp" | "onnx"
    path: str
    outtype: str
    label: str
    reference: str
    cpu: str
    threads: int
    key: str
    cached: bool
    seconds: float  # spent measuring (0 when read from the cache)
    candidates: list[Measurement]
    device: str = "cpu"  # where the chosen candidate runs
    #: Share of the machine's CPU time other processes took while the rounds ran (None off Linux).
    busy_share: float | None = None

    @property
    def ms_per_window(self) -> dict[str, float | None]:
        return {m.label: m.ms_per_window for m in self.candidates}

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """What /api/health and /api/model/info show: the choice, and what each candidate measured."""
        return {
            "engine": self.label, "cached": self.cached, "cpu": self.cpu, "threads": self.threads,
            "busy_share": self.busy_share,
            "reference": self.reference,
            "candidates": [{"label": m.label, "engine": m.engine, "outtype": m.outtype,
                            "ms_per_window": m.ms_per_window, "agreement": m.agreement,
                            "passed": m.passed, "error": m.error} for m in self.candidates],
        }

    @classmethod
    def from_dict(cls, d: dict) -> EngineChoice:
        d = dict(d)
        d["candidates"] = [Measurement(**m) for m in d["candidates"]]
        return cls(**d)


def cpu_identity() -> tuple[str, list[str]]:
    """CPU model name and flags (Linux /proc/cpuinfo; elsewhere the platform's processor string)."""
    from qabridge.core.machine import cpu_info

    cpu = cpu_info()
    return cpu.name, list(cpu.flags)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"qabridge": __version__}
    for pkg in ("onnxruntime", "llama_cpp_python", "openvino"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = ""
    return out


def cache_key(candidates: list[Candidate], threads: int, hashes: dict[Path, str] | None = None,
              check: dict | None = None, rounds: int = ROUNDS) -> str:
    """Per CPU, threads, library versions, candidate files, ``check`` (how they were checked) and
    ``rounds`` (how many timing rounds the choice is the best of)."""
    name, flags = cpu_identity()
    hashes = hashes or {}
    files = sorted((c.engine, c.device, hashes.get(Path(c.path)) or sha256_file(c.path)) for c in candidates)
    blob = json.dumps({"cpu": name, "flags": flags, "threads": threads, "versions": _versions(), "files": files,
                       "rounds": rounds, **({"check": check} if check else {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cpu_ticks() -> tuple[int, int, int] | None:
    """(ticks the whole machine was busy, ticks in all, ticks this process used) from /proc; None
    where there is no /proc (the busy check is then skipped)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()  # after the command name: state is field 3
    except (OSError, ValueError, IndexError):
        return None
    total = sum(vals)
    return total - vals[3] - vals[4], total, int(own[11]) + int(own[12])  # utime, stime: fields 14, 15


def others_share(before: tuple[int, int, int] | None, after: tuple[int, int, int] | None) -> float | None:
    """Share of the machine's CPU time between two :func:`cpu_ticks` that other processes used."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    others = (after[0] - before[0]) - (after[2] - before[2])
    return round(max(0.0, others / (after[1] - before[1])), 3)


def sample_questions(n: int, path: Path = DEV_SAMPLE) -> list[tuple[str, str]]:
    """The first ``n`` (question, context) pairs of the dev sample, in file order."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read the fixed questions for --engine auto ({exc})") from None
    out = []
    for art in data["data"]:
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                out.append((qa["question"], para["context"]))
    return out[:n]


def _reference(candidates: list[Candidate]) -> Candidate:
    rank = {o: i for i, o in enumerate(_REFERENCE_ORDER)}
    # ONNX f32 before GGUF f32: same precision, and ORT's fp32 kernels are the plain reference.
    return min(candidates, key=lambda c: (rank.get(c.outtype, len(rank)), c.engine != "onnx"))


def choose_engine(
    candidates: list[Candidate],
    *,
    reference: Candidate | None = None,
    n_questions: int = 24,
    check_questions: int | None = None,
    rounds: int = ROUNDS,
    min_agreement: float = 0.95,
    n_threads: int | None = None,
    use_cache: bool = True,
    only_cached: bool = False,
    hashes: dict[Path, str] | None = None,
    log=None,
) -> EngineChoice | None:
    """Measure ``candidates`` (and check them against ``reference``), return the fastest that agrees.

    ``reference`` defaults to the most exact candidate (f32, then f16...). Timings are ms per
    window over ``n_questions`` questions, each question's windows in one ``logits`` call as the
    bridge makes them, best of ``rounds`` interleaved rounds (``only_cached``: None rather than
    measure when no choice is cached). Agreement is counted over
    ``check_questions`` (default: ``n_questions``): on 24 questions one near-tie decides a pass
    (0.958) from a fail (0.917), so the built-in models check every question of the sample. With ``use_cache`` a choice stored
    for the same CPU, threads, versions and files is returned without measuring.
    """
    if not candidates:
        raise UsageError("no candidate engines to choose from")
    candidates = [c if c.outtype else Candidate(c.engine, c.path, candidate_for(c.path).outtype, c.device) for c in candidates]
    threads = max(1, n_threads or os.cpu_count() or 1)
    ref_c = reference or _reference(candidates)
    check = {"reference": [ref_c.engine, ref_c.outtype, Path(ref_c.path).name], "questions": check_questions} if check_questions else None
    key = cache_key(candidates, threads, hashes, check, rounds)
    cache_file = cache_dir() / "engine-choice" / f"{key}.json"
    if use_cache and cache_file.exists():
        try:
            choice = EngineChoice.from_dict(json.loads(cache_file.read_text()))
            if choice.key == key and any(str(c.path) == choice.path for c in candidates):
                choice.cached, choice.seconds = True, 0.0
                return choice
        except (OSError, ValueError, TypeError, KeyError):
            pass  # a damaged cache entry is measured again and rewritten
    if only_cached:
        return None

    t_start = time.perf_counter()
    questions = sample_questions(max(n_questions, check_questions or 0))
    if log:
        log(f"stage 2/3: measuring {len(candidates)} engines on this CPU ({min(n_questions, len(questions))} questions, "
            f"{rounds} rounds{f', answers checked on {len(questions)}' if check_questions else ''}; once per CPU, then cached)")
    labels = [c.label for c in candidates]
    # Two files of one engine and type (say, two exports) are told apart by their file names.
    measured: dict[Candidate, Measurement] = {
        c: Measurement(c.label if labels.count(c.label) == 1 else f"{c.label} ({Path(c.path).name})",
                       c.engine, str(c.path), c.outtype)
        for c in candidates
    }
    pipes = {}
    ref_pipe = None
    try:
        if ref_c not in candidates:
            ref_pipe = ref_c.open(threads)
        for c in candidates:
            try:
                pipes[c] = c.open(threads)
            except QABridgeError as exc:
                measured[c].error = exc.message
        base = ref_pipe or pipes.get(ref_c)
        if base is None:
            raise ModelError(f"{ref_c.path}: the reference engine could not be opened ({measured[ref_c].error})")
        checked = [base.prepare(q, ctx) for q, ctx in questions]
        prepared = checked[:n_questions]
        n_windows = sum(len(w) for _, w in prepared)

        def spans(pipe, prepared=prepared):
            out = []
            for ctx, wins in prepared:
                lg = pipe.encoder.logits(wins)
                top = best_spans(lg, wins, ctx, max_answer_len=base.max_answer_len, top_k=1)
                out.append((top[0].start, top[0].end) if top else None)
            return out

        ref_spans = spans(base, checked)
        for c, pipe in pipes.items():
            if pipe.tokenizer.vocab != base.tokenizer.vocab or pipe.spec != base.spec:
                measured[c].error = "vocabulary or window settings differ from the reference's"
        ticks = cpu_ticks()
        for r in range(max(1, rounds)):
            # Interleaved: a burst of load from elsewhere on the machine hits every candidate's round alike.
            for c, pipe in pipes.items():
                m = measured[c]
                if m.error:
                    continue
                for _, wins in prepared[:3]:
                    pipe.encoder.logits(wins)  # warm-up: first-call allocations, thread start
                t0 = time.perf_counter()
                try:
                    got = spans(pipe)
                except QABridgeError as exc:
                    m.error = exc.message
                    continue
                m.rounds_ms.append(1e3 * (time.perf_counter() - t0) / max(1, n_windows))
                if r == 0:
                    got += spans(pipe, checked[len(prepared):])
                    m.agreement = round(sum(a == b for a, b in zip(got, ref_spans)) / max(1, len(ref_spans)), 4)
                    m.passed = m.agreement >= min_agreement
        busy = others_share(ticks, cpu_ticks())
        for m in measured.values():
            if m.rounds_ms:
                m.ms_per_window = round(min(m.rounds_ms), 3)
                m.rounds_ms = [round(x, 3) for x in m.rounds_ms]
            if log:
                log(f"auto engine: {m.label}: {m.ms_per_window} ms/window, agreement {m.agreement}"
                    f"{'' if m.passed else ' (excluded)'}{f', {m.error}' if m.error else ''}")
    finally:
        for pipe in pipes.values():
            pipe.encoder.close()
        if ref_pipe is not None:
            ref_pipe.encoder.close()

    ok = [c for c in candidates if measured[c].passed and measured[c].ms_per_window is not None and not measured[c].error]
    if not ok:
        raise ModelError("no candidate engine passed the parity check: "
                         + "; ".join(f"{m.label}: {m.error or f'agreement {m.agreement}'}" for m in measured.values()))
    best = min(ok, key=lambda c: measured[c].ms_per_window)
    choice = EngineChoice(
        engine=best.engine, path=str(best.path), outtype=best.outtype, label=measured[best].label,
        reference=measured[ref_c].label if ref_c in measured else ref_c.label,
        cpu=cpu_identity()[0], threads=threads, key=key, cached=False,
        seconds=round(time.perf_counter() - t_start, 2), candidates=[measured[c] for c in candidates], device=best.device,
        busy_share=busy,
    )
    if use_cache and busy is not None and busy > BUSY_SHARE:
        if log:
            log(f"auto engine: other processes took {busy:.0%} of the CPU while measuring; this choice is not "
                "cached (measured again on the next start)")
    elif use_cache:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(choice.to_dict(), indent=2) + "\n")
            os.replace(tmp, cache_file)
        except OSError:
            pass  # an unwritable cache costs a re-measure next start, nothing more
    return choice


def choose_default(engine: str = "auto", outtype: str = "auto", *, adapter: str | os.PathLike | None = None,
                   n_threads: int | None = None, device: str = "cpu", log=None) -> EngineChoice:
    """A built-in model's file and engine (``adapter``: the default's when None), as ``qabridge serve``
    (and the Python API) pick them: ``engine`` "auto" measures llama.cpp (``outtype``, or q8_0 and
    bf16) and ONNX Runtime int8 candidates on this CPU (cached per CPU and model), "onnx" only the
    ONNX ones."""
    engines = (engine,) if engine in ("onnx", "openvino") else ENGINES
    outtypes = ("q8_0", "bf16") if outtype == "auto" else (outtype,)
    if log:
        log("stage 1/3: building the candidate models (first start only: GGUF "
            + "/".join(outtypes) + (", ONNX int8" if "onnx" in engines else "")
            + (", OpenVINO " + "/".join(ov) if "openvino" in engines and (ov := openvino_candidate_types(engine == "openvino")) else "")
            + "; ~2-4 min on 2 cores, then cached)")
    cands = default_candidates(adapter, gguf_outtypes=outtypes, engines=engines, log=log, device=device,
                               openvino_types=openvino_candidate_types(True) if engine == "openvino" else None)
    if engine in ("onnx", "openvino") and not cands:
        raise UsageError(f"--engine {engine}: no {engine} model could be built (exporting needs torch"
                         + (" and the openvino package" if engine == "openvino" else "") + ")")
    from qabridge.export.run import default_model

    # The yardstick is the f32 GGUF (numpy-built, no torch): with bf16 as the reference, its own
    # near-tie flips counted against the others (on the Intel Xeon, 2 of 24 questions).
    reference = Candidate("llama.cpp", default_model("f32", adapter=adapter, log=log), "f32")
    kw = {"reference": reference, "check_questions": CHECK_QUESTIONS, "n_threads": n_threads}
    cached = choose_engine(cands, only_cached=True, **kw)
    return cached or measure_in_child(cands, log=log, **kw)


def measure_in_child(candidates: list[Candidate], *, reference: Candidate, check_questions: int | None,
                     n_threads: int | None, log=None) -> EngineChoice:
    """:func:`choose_engine` in a child process: every candidate is open at once while they take
    turns (~900 MB for five on the Intel Xeon), and memory a process has touched stays its peak,
    so the serving process only reads the choice the child cached. Log lines come through as they are made."""
    import subprocess
    import sys

    job = {"candidates": [[c.engine, str(c.path), c.outtype, c.device] for c in candidates],
           "reference": [reference.engine, str(reference.path), reference.outtype],
           "check_questions": check_questions, "n_threads": n_threads}
    proc = subprocess.Popen([sys.executable, "-m", "qabridge.bridge.engine_select"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write(json.dumps(job))
    proc.stdin.close()
    tail: list[str] = []
    for line in proc.stderr:  # the child's log lines, live; anything else is kept for an error
        if line.startswith(_LOG_PREFIX):
            if log:
                log(line[len(_LOG_PREFIX):].rstrip("\n"))
        else:
            tail = (tail + [line])[-20:]
    out = proc.stdout.read()
    proc.wait()
    try:
        res = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ModelError("measuring the candidate engines failed: " + "".join(tail)[-500:].strip()) from None
    if "error" in res:
        raise ModelError(res["error"])
    return EngineChoice.from_dict(res)


_LOG_PREFIX = "qabridge-engine-select: "


def _child_main() -> None:
    import sys

    job = json.loads(sys.stdin.read())
    cands = [Candidate(e, Path(p), o, d) for e, p, o, d in job["candidates"]]
    e, p, o = job["reference"]
    try:
        choice = choose_engine(cands, reference=Candidate(e, Path(p), o), check_questions=job["check_questions"],
                               n_threads=job["n_threads"], log=lambda m: print(_LOG_PREFIX + m, file=sys.stderr, flush=True))
    except QABridgeError as exc:
        print(json.dumps({"error": exc.message}))
        return
    print(json.dumps(choice.to_dict()))


if __name__ == "__main__":
    _child_main()


def openvino_precision(required: bool = False) -> str | None:
    """The OpenVINO candidate's precision on this CPU: bf16 where it has AMX-BF16 or AVX512-BF16
    (OpenVINO's bf16 kernels), else f32 when ``required`` (``--engine openvino``), else None: an
    fp32 OpenVINO candidate is not measured under auto (on the CPUs seen it trails ONNX Runtime
    int8 by ~2x: 11.5 vs 6.2 ms per window on the Intel Xeon, docs/performance.md)."""
    from .openvino_engine import available, has_bf16_kernels

    if not available():
        return None
    if has_bf16_kernels():
        return "bf16"
    return "f32" if required else None


def openvino_candidate_types(required: bool = False) -> tuple[str, ...]:
    """The OpenVINO files measured on this CPU: :func:`openvino_precision`'s, and int8 (NNCF,
    export/openvino_export.py) wherever nncf can build it: its VNNI/AMX int8 kernels may beat bf16
    or ONNX Runtime int8 on one CPU and not on another, so it is measured, not assumed."""
    import importlib.util

    from .openvino_engine import available

    if not available():
        return ()
    int8 = ("int8",) if importlib.util.find_spec("nncf") is not None else ()
    return tuple(filter(None, [openvino_precision(required)])) + int8


def default_candidates(
    adapter: str | os.PathLike | None = None,
    *,
    gguf_outtypes: tuple[str, ...] = ("q8_0", "bf16"),
    onnx_types: tuple[str, ...] = ("int8",),
    openvino_types: tuple[str, ...] | None = None,
    engines: tuple[str, ...] = ENGINES,
    device: str = "cpu",
    log=None,
) -> list[Candidate]:
    """The shipped (or given) adapter exported once per engine and type, cached by adapter hash.

    GGUFs come from :func:`qabridge.export.run.default_model` (numpy, no torch). ONNX files need
    torch to export: they are built by ``qabridge export --format onnx`` in a child process, so the
    serving process never loads torch (its memory would stay); without torch they are skipped.
    With ``device`` "cuda" the GPU candidates of :func:`~qabridge.bridge.devices.candidate_plan`
    join the CPU ones, and the measurement decides.
    """
    import importlib.util
    import subprocess
    import sys

    from qabridge.core.hashing import adapter_hash
    from qabridge.export.run import default_model
    from qabridge.paths import default_adapter

    from .devices import candidate_plan, cuda_available, llama_gpu_offload

    adapter = Path(adapter) if adapter else default_adapter()
    out = []
    gpu = candidate_plan(cuda=device == "cuda" and cuda_available(), gpu_offload=device == "cuda" and llama_gpu_offload(),
                         engines=engines)
    if "llama.cpp" in engines:
        out += [Candidate("llama.cpp", default_model(o, adapter=adapter, log=log), o) for o in gguf_outtypes]
    out += [Candidate(e, default_model(t, adapter=adapter, log=log), t, d) for e, t, d in gpu if e == "llama.cpp"]
    from qabridge.export.onnx_export import ONNX_RECIPE

    h = adapter_hash(adapter)[:16]
    builds = []  # (engine, outtype, file, export options, device)
    if "onnx" in engines:
        builds += [("onnx", t, f"default-{h}.{t}.r{ONNX_RECIPE}.onnx", ["--format", "onnx", "--quantize", "none" if t == "f32" else t], "cpu")
                   for t in onnx_types]
        builds += [("onnx", t, f"default-{h}.{t}.r{ONNX_RECIPE}.onnx", ["--format", "onnx", "--quantize", "none"], d)
                   for e, t, d in gpu if e == "onnx"]
    if "openvino" in engines:
        if openvino_types is None:
            openvino_types = openvino_candidate_types()
        from qabridge.export.openvino_export import INT8_RECIPE

        # int8's name carries its recipe too (the layers kept in floating point): a changed recipe rebuilds.
        builds += [("openvino", t, f"default-{h}.{t}.r{ONNX_RECIPE}{f'.{INT8_RECIPE}' if t == 'int8' else ''}.xml",
                    ["--format", "openvino", "--outtype", t], "cpu") for t in openvino_types]
    for eng, t, fname, opts, dev in builds:
        p = cache_dir() / "models" / fname
        what = f"{_LABELS.get(eng, eng)} {t}"
        if not p.exists():
            if importlib.util.find_spec("torch") is None:
                if log:
                    log(f"{what} candidate skipped: exporting it needs torch (pip install 'qabridge[train]')")
                continue
            if log:
                log(f"building the {what} model from {adapter} -> {p}")
            p.parent.mkdir(parents=True, exist_ok=True)
            r = subprocess.run([sys.executable, "-m", "qabridge.cli", "export", *opts, "--adapter", str(adapter),
                                "--output", str(p), "--modelfile", ""], capture_output=True, text=True)
            if r.returncode != 0:
                if log:
                    log(f"{what} candidate skipped: {r.stderr.strip()[-300:]}")
                continue
        out.append(Candidate(eng, p, t, dev))
    if not out:
        raise ModelError(f"no candidate engine could be built for {adapter}")
    return out
