"""The training loop: LoRA (or full) fine-tuning for span QA, resumable, with a run summary."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qabridge._version import __version__
from qabridge.core.settings import DEFAULTS
from qabridge.core.tokenizer import WordPieceTokenizer
from qabridge.core.windows import WindowSpec
from qabridge.errors import DeviceUnsupported, OutputExists, UsageError

from .features import build_features, length_grouped_batches, pad_batch
from .model import (
    DEFAULT_TARGET_MODULES,
    QA_CONFIG,
    BaseRef,
    check_quantize,
    load_config,
    load_qa_model,
    resolve_base,
    tokenizer_dir,
)
from .squad import load_squad

if TYPE_CHECKING:
    from .negatives import NegativeConfig

CKPT_DIR = "checkpoint"
SUMMARY = "training_summary.json"


@dataclass
class TrainConfig:
    base: str | None = None
    data: str = "squad"
    eval_data: str | None = None
    output: str = "models/lora"
    subset_size: int | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    quantize: str = "none"
    max_seq_len: int = DEFAULTS.max_seq_len
    doc_stride: int = DEFAULTS.doc_stride
    max_question_tokens: int = DEFAULTS.max_question_tokens
    seed: int = 42
    full: bool = False
    device: str = "auto"
    checkpoint_every: int = 200
    eval_limit: int | None = None
    eval_every: int | None = None
    time_budget: float | None = None
    curve_limit: int = 2000
    overwrite: bool = False
    # Generated unanswerable examples (train/negatives.py): "none", "topical", "adversarial" or
    # "topical,adversarial"; negative_ratio = negatives per answerable training question.
    negatives: str = "none"
    negative_ratio: float = 0.33

    def identity(self) -> dict:
        """What makes two runs the same run (resume allowed) - not budget or bookkeeping."""
        keep = ("base", "data", "subset_size", "batch_size", "grad_accum", "lr", "lora_r", "lora_alpha",
                "lora_dropout", "target_modules", "quantize", "max_seq_len", "doc_stride", "seed", "full",
                "max_question_tokens", "weight_decay", "warmup_ratio")
        d = asdict(self)
        ident = {k: d[k] for k in keep}
        neg = self.negative_config()
        if neg is not None:
            # Only when on, so runs without negatives keep the identity they always had (their
            # checkpoints still resume); the kinds are normalised so "adversarial,topical" and
            # "topical,adversarial" are one run.
            ident["negatives"] = ",".join(neg.kinds)
            ident["negative_ratio"] = neg.ratio
        return ident

    def negative_config(self) -> NegativeConfig | None:
        """The generator's config for this run, or None without negatives (raises UsageError when bad)."""
        from .negatives import NegativeConfig

        return NegativeConfig.parse(self.negatives, self.negative_ratio, self.seed)


def _peak_rss_mb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover
        return float("nan")


def _dir_bytes(d: Path, names=None) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file() and (names is None or p.name in names))


def _check_output(out: Path, cfg: TrainConfig) -> dict | None:
    """Existing run state in ``out``; refuses an unrelated or different adapter."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise OutputExists(f"{out}: exists and is not a directory")
    qa = out / QA_CONFIG
    has_adapter = (out / "adapter_config.json").exists() or (out / "config.json").exists()
    if not has_adapter and not (out / CKPT_DIR).exists():
        if any(out.iterdir()):
            raise OutputExists(f"{out}: exists, is not empty and holds no qabridge adapter; choose another --output")
        return None
    if cfg.overwrite:
        return None
    prev = json.loads(qa.read_text()) if qa.exists() else {}
    ident = prev.get("train_identity")
    if ident != cfg.identity():
        diff = sorted(k for k in cfg.identity() if (ident or {}).get(k) != cfg.identity()[k])
        raise OutputExists(
            f"{out}: already holds a different adapter (differs in: {', '.join(diff) or 'unknown'}); "
            "choose another --output or pass --overwrite"
        )
    return prev


def pick_device(device: str) -> str:
    """``auto`` -> cuda when torch sees a GPU, else cpu; an explicit device must exist here."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device}: not a torch device (use cpu, cuda, cuda:N or auto)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceUnsupported(f"--device {device}: torch {torch.__version__} sees no CUDA device here (use cpu or auto)")
    return device


def train(cfg: TrainConfig, *, progress: bool = True, log=print) -> dict:
    import torch
    from tqdm.auto import tqdm

    out = Path(cfg.output)
    if cfg.quantize not in ("none", "8bit", "4bit"):
        raise UsageError(f"--quantize must be none, 8bit or 4bit, not {cfg.quantize!r}")
    if cfg.full and cfg.quantize != "none":
        raise UsageError("--full cannot be combined with --quantize (a quantised base cannot be fully trained)")
    if cfg.max_seq_len < 32:
        raise UsageError("--max-seq-len must be at least 32")
    neg_cfg = cfg.negative_config()  # bad --negatives / --negative-ratio fail before any loading
    prev = _check_output(out, cfg)
    device = pick_device(cfg.device)
    check_quantize(cfg.quantize, device)  # before minutes of feature building, not after
    ref: BaseRef = resolve_base(cfg.base)
    hf_cfg = load_config(ref)
    if cfg.max_seq_len > hf_cfg.max_position_embeddings:
        raise UsageError(f"--max-seq-len {cfg.max_seq_len} exceeds the base's {hf_cfg.max_position_embeddings} positions")
    examples = load_squad(cfg.data, split="train")
    eval_examples = load_squad(cfg.eval_data, split="validation") if cfg.eval_data else None
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    corpus = examples
    if cfg.subset_size:
        idx = np.sort(rng.permutation(len(examples))[: cfg.subset_size])
        examples = [examples[i] for i in idx]
    unanswerable_in_data = sum(1 for e in examples if not e.has_answer)
    neg_report = None
    if neg_cfg is not None:
        from .negatives import with_negatives

        # Paragraphs and replacements come from the whole file, sources only from the subset.
        examples, neg_report = with_negatives(examples, neg_cfg, corpus=corpus)
        log(f"negatives: added {neg_report.counts} ({neg_report.seconds:.1f} s)")
    del corpus

    tok = WordPieceTokenizer.from_hf_dir(tokenizer_dir(ref))
    spec = WindowSpec(cfg.max_seq_len, cfg.doc_stride, cfg.max_question_tokens)
    feats = build_features(examples, tok, spec)
    if len(feats) == 0:
        raise UsageError(f"{cfg.data}: no usable training windows")
    lengths = feats.lengths()

    model = load_qa_model(ref, quantize=cfg.quantize, device=device)
    if cfg.full:
        trainable_model = model
    else:
        from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

        if cfg.quantize != "none":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        lcfg = LoraConfig(
            task_type=TaskType.QUESTION_ANS,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules),
            modules_to_save=["qa_outputs"],
        )
        trainable_model = get_peft_model(model, lcfg)
    trainable_model.train()
    params = [p for p in trainable_model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in trainable_model.parameters())

    steps_per_epoch = math.ceil(len(feats) / (cfg.batch_size * cfg.grad_accum))
    total_steps = cfg.max_steps or max(1, int(math.ceil(steps_per_epoch * cfg.epochs)))
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total_steps)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    step, examples_seen, wall_before = 0, 0, 0.0
    ckpt = out / CKPT_DIR
    if prev is not None and (ckpt / "state.pt").exists():
        state = torch.load(ckpt / "state.pt", map_location=device, weights_only=False)
        missing = trainable_model.load_state_dict(state["model"], strict=False)
        del missing
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, examples_seen, wall_before = state["step"], state["examples_seen"], state.get("wall_s", 0.0)
        log(f"resuming from {ckpt} at step {step}/{total_steps}")

    use_amp = device.startswith("cuda")
    amp_dtype = torch.bfloat16
    pad = tok.pad_id

    def batches_for_epoch(epoch: int):
        r = np.random.default_rng(cfg.seed + 1000 * epoch)
        return length_grouped_batches(lengths, cfg.batch_size, r)

    def save_checkpoint():
        ckpt.mkdir(parents=True, exist_ok=True)
        state = {
            "model": {k: v for k, v in trainable_model.state_dict().items() if _is_trainable_key(k, trainable_model)},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "examples_seen": examples_seen,
            "wall_s": wall_before + (time.time() - t_loop),
        }
        tmp = ckpt / "state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, ckpt / "state.pt")
        _write_qa_config(out, cfg, ref, spec, partial=True)

    out.mkdir(parents=True, exist_ok=True)
    _write_qa_config(out, cfg, ref, spec, partial=True)
    curve: list[dict] = []

    def eval_point():
        # Learning curve: F1 on the first dev questions against windows seen so far.
        from qabridge.core.pipeline import QAPipeline

        from .evaluate import TorchEncoder, evaluate_pipeline

        trainable_model.eval()
        pipe = QAPipeline(tok, TorchEncoder(trainable_model, device, batch_size=128), spec)
        r = evaluate_pipeline(pipe, eval_examples, limit=cfg.curve_limit)
        trainable_model.train()
        curve.append({"step": step, "examples_seen": examples_seen, "exact_match": round(r["exact_match"], 2),
                      "f1": round(r["f1"], 2), "count": r["count"], "wall_s": round(wall_before + time.time() - t_loop, 1)})
        log(f"curve: step {step} windows {examples_seen} EM {r['exact_match']:.2f} F1 {r['f1']:.2f}")

    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True, file=sys.stderr)
    t_loop = time.time()
    seen_at_loop = examples_seen
    padded_tokens = 0  # tokens run through the model in this process, padding included
    step_at_loop = step
    planned_steps = total_steps
    t_warm, step_warm = t_loop, step
    micro = step * cfg.grad_accum
    per_epoch = len(batches_for_epoch(0))
    epoch, pos = divmod(micro, per_epoch)
    batches = batches_for_epoch(epoch)
    last_loss = float("nan")
    stopped_early = False
    while step < total_steps:
        if cfg.time_budget and time.time() - t_loop > cfg.time_budget:
            stopped_early = True
            log(f"time budget of {cfg.time_budget:g} s reached at step {step}/{total_steps}")
            break
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for _ in range(cfg.grad_accum):
            if pos >= len(batches):
                epoch += 1
                pos = 0
                batches = batches_for_epoch(epoch)
            bidx = batches[pos]
            pos += 1
            ids, mask = pad_batch([feats.input_ids[i] for i in bidx], pad)
            padded_tokens += ids.size
            ids_t = torch.from_numpy(ids).to(device)
            mask_t = torch.from_numpy(mask).to(device)
            sp = torch.from_numpy(feats.start_positions[bidx]).to(device)
            ep = torch.from_numpy(feats.end_positions[bidx]).to(device)
            with torch.autocast(device_type="cuda", dtype=amp_dtype, enabled=use_amp):
                res = trainable_model(
                    input_ids=ids_t,
                    attention_mask=mask_t,
                    token_type_ids=torch.zeros_like(ids_t),
                    start_positions=sp,
                    end_positions=ep,
                )
                loss = res.loss / cfg.grad_accum
            loss.backward()
            loss_sum += float(loss.detach())
            examples_seen += len(bidx)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        last_loss = loss_sum
        elapsed = time.time() - t_loop
        bar.set_postfix(loss=f"{last_loss:.3f}", ex_s=f"{(examples_seen - seen_at_loop) / max(elapsed, 1e-6):.1f}")
        bar.update(1)
        done = step - step_at_loop
        if done == 30:
            t_warm, step_warm = time.time(), step  # rate measured after warm-up (kernel caches, allocator)
        if cfg.time_budget and done in (100, 300, 1000, 3000):
            # Fit the whole schedule (warm-up and decay) into the budget instead of cutting it short.
            per_step = (time.time() - t_warm) / (step - step_warm)
            fit = step + int(0.9 * (cfg.time_budget - (time.time() - t_loop)) / per_step)
            new_total = max(step + 1, min(planned_steps, fit))
            if new_total != total_steps:
                log(f"time budget: {total_steps} planned steps -> {new_total} ({per_step * 1e3:.1f} ms/step)")
                total_steps = new_total
                bar.total = total_steps
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
            save_checkpoint()
        if cfg.eval_every and eval_examples is not None and step % cfg.eval_every == 0 and step < total_steps:
            eval_point()
    bar.close()
    wall = wall_before + (time.time() - t_loop)

    # Save atomically: build the adapter in a temp dir beside the output, then swap files in.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-adapter-", dir=out.parent))
    try:
        if cfg.full:
            trainable_model.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_vocab(tmp / "vocab.txt")
        else:
            trainable_model.save_pretrained(str(tmp))
            _portable_base(tmp / "adapter_config.json", ref)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(ckpt, ignore_errors=True)

    summary = {
        "qabridge_version": __version__,
        "base": ref.name,
        "data": str(cfg.data),
        "train_examples": len(examples),
        "train_features": len(feats),
        "unanswerable_in_data": unanswerable_in_data,
        "negatives": {"kinds": cfg.negatives, "ratio": cfg.negative_ratio, **neg_report.as_dict()}
        if neg_report is not None else None,
        "null_windows": feats.null_windows,
        "skipped_questions": feats.skipped_questions,
        "steps": step,
        "planned_steps": total_steps,
        "stopped_by_time_budget": stopped_early,
        "epochs": round(examples_seen / max(1, len(feats)), 3),
        "examples_seen": examples_seen,
        "wall_time_s": round(wall, 1),
        "examples_per_s": round(examples_seen / max(wall, 1e-6), 2),
        "mean_padded_tokens": round(padded_tokens / max(1, examples_seen - seen_at_loop), 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None,
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else _cpu_name(),
        "trainable_params": n_trainable,
        "total_params": n_total,
        "adapter_bytes": _dir_bytes(out, {"adapter_model.safetensors", "adapter_config.json", "model.safetensors"}),
        "final_loss": round(last_loss, 4),
        "segment_ids": "zeros",
        "config": asdict(cfg),
    }
    if curve:
        summary["curve"] = curve
    if eval_examples is not None:
        from .evaluate import evaluate_adapter

        res = evaluate_adapter(out, eval_examples, limit=cfg.eval_limit, device=device, progress=progress)
        summary["dev"] = {k: res[k] for k in ("exact_match", "f1", "count", "seconds")}
        summary["dev"]["data"] = str(cfg.eval_data)
    _write_qa_config(out, cfg, ref, spec, partial=False)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return "cpu"


def _is_trainable_key(key: str, model) -> bool:
    # Only what training changes: LoRA matrices and the saved span head (or everything for --full).
    return "lora_" in key or "modules_to_save" in key or not hasattr(model, "peft_config")


def _portable_base(cfg_path: Path, ref: BaseRef) -> None:
    """Record the base by name, not by a machine-specific site-packages path."""
    d = json.loads(cfg_path.read_text())
    d["base_model_name_or_path"] = ref.name
    cfg_path.write_text(json.dumps(d, indent=2) + "\n")


def _write_qa_config(out: Path, cfg: TrainConfig, ref: BaseRef, spec: WindowSpec, *, partial: bool) -> None:
    d = {
        "qabridge_version": __version__,
        "base_model": ref.name,
        "max_seq_len": spec.max_seq_len,
        "doc_stride": spec.doc_stride,
        "max_question_tokens": spec.max_question_tokens,
        "max_answer_len": DEFAULTS.max_answer_len,
        "segment_ids": "zeros",
        "full": cfg.full,
        "complete": not partial,
        "train_identity": cfg.identity(),
    }
    (out / QA_CONFIG).write_text(json.dumps(d, indent=2) + "\n")
