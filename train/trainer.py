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
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from qabridge._version import __version__
from qabridge.core.machine import cpu_info
from qabridge.core.settings import DEFAULTS
from qabridge.core.tokenizer import WordPieceTokenizer
from qabridge.core.windows import WindowSpec
from qabridge.errors import DeviceUnsupported, OutputExists, UsageError
from qabridge.paths import is_offline_base

from . import allocator
from .features import build_features, cap_null_windows, length_grouped_batches, pad_batch
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
    # Long documents: keep at most this many of a question's windows that miss its answer (seeded
    # draw; None keeps all). A 6,000-token document is ~30 windows, one of which holds the answer:
    # its other windows teach the [CLS] "not here" score that ranks spans across windows, but all
    # of them cost 30x the training time of a paragraph.
    null_windows_per_question: int | None = None
    # Refuse a data file whose answer_start misses its text instead of re-anchoring it (train/squad.py).
    strict: bool = False
    # Pause after this many seconds: a checkpoint, no adapter; the same command resumes with the
    # schedule unchanged (a run longer than one sitting), unlike time_budget, which fits the schedule.
    stop_after: float | None = None
    # Autocast dtype of the forward pass: "auto" = bf16 on CUDA and on CPUs with native bf16 dot
    # products (AVX512-BF16 or AMX-BF16), else fp32; "fp32" or "bf16" to choose.
    precision: str = "auto"
    curve_limit: int = 2000
    overwrite: bool = False
    # Generated unanswerable examples (train/negatives.py): "none", "topical", "adversarial" or
    # "topical,adversarial"; negative_ratio = negatives per answerable training question.
    negatives: str = "none"
    negative_ratio: float = 0.33
    # The adversarial perturbations, comma-separated (None: negatives.DEFAULT_METHODS).
    adversarial_methods: str | None = None
    # Warm start: an adapter (from `qabridge train`) whose LoRA matrices and span head this run
    # starts from, e.g. to add abstention to a trained reader; its rank, alpha and targets are used.
    init_adapter: str | None = None
    # Dropout inside the base encoder (hidden and attention; None: the base's own, 0.1 for BERT).
    # Data-parallel ranks draw their own dropout masks: with dropout on, N ranks match one process in
    # distribution, not bit for bit; with 0 they match it to float rounding.
    dropout: float | None = None
    # Distillation (train/distill.py, `qabridge distill`): soft start/end targets from this teacher
    # adapter or model directory, at temperature T, mixed with the gold loss: alpha * soft + (1 - alpha) * gold.
    teacher: str | None = None
    temperature: float = 2.0
    distill_alpha: float = 0.5
    cache_teacher: str | None = None  # directory of cached teacher logits (None: computed each step)
    # What generated negatives (--negatives) learn from under distillation: "gold" (their [CLS] label
    # alone) or "teacher" (the alpha mix, like every other window).
    negatives_target: str = "gold"

    def identity(self) -> dict:
        """What makes two runs the same run (resume allowed) - not budget or bookkeeping."""
        keep = ("base", "data", "subset_size", "batch_size", "grad_accum", "lr", "lora_r", "lora_alpha",
                "lora_dropout", "target_modules", "quantize", "max_seq_len", "doc_stride", "seed", "full",
                "max_question_tokens", "weight_decay", "warmup_ratio")
        from .negatives import DEFAULT_METHODS

        d = asdict(self)
        ident = {k: d[k] for k in keep}
        neg = self.negative_config()
        if neg is not None:
            # Only when on, so runs without negatives keep the identity they always had (their
            # checkpoints still resume); the kinds are normalised so "adversarial,topical" and
            # "topical,adversarial" are one run.
            ident["negatives"] = ",".join(neg.kinds)
            ident["negative_ratio"] = neg.ratio
            if neg.methods != DEFAULT_METHODS:  # runs on the defaults keep the identity they had
                ident["adversarial_methods"] = ",".join(neg.methods)
        if self.init_adapter:
            from qabridge.core.hashing import adapter_hash

            ident["init_adapter"] = adapter_hash(self.init_adapter)
        if self.dropout is not None:
            ident["dropout"] = self.dropout
        if self.null_windows_per_question is not None:
            ident["null_windows_per_question"] = self.null_windows_per_question
        if self.teacher:
            from qabridge.core.hashing import adapter_hash

            # A different teacher, T or alpha is a different run; where the logits come from is not.
            ident.update(teacher=adapter_hash(self.teacher), temperature=self.temperature,
                         distill_alpha=self.distill_alpha)
            if neg is not None:
                ident["negatives_target"] = self.negatives_target
        return ident

    def window_spec(self) -> WindowSpec:
        """The training windows' shape (what the features, and a teacher cache's key, are built with)."""
        return WindowSpec(self.max_seq_len, self.doc_stride, self.max_question_tokens)

    def negative_config(self) -> NegativeConfig | None:
        """The generator's config for this run, or None without negatives (raises UsageError when bad)."""
        from .negatives import NegativeConfig

        return NegativeConfig.parse(self.negatives, self.negative_ratio, self.seed, self.adversarial_methods)


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


def pick_precision(precision: str, device: str) -> str:
    """"bf16" or "fp32" for ``--precision`` on ``device``. On the 2-core AMD EPYC (AVX512-BF16), LoRA
    r=32 training steps of 16 windows x 180 tokens: MiniLM-L6 12.4 -> 22.0 windows/s, bge-small
    6.2 -> 10.9 with bf16 autocast (benchmarks/experiments/train_precision.py, docs/quality.md); the GPU recipe has always used it."""
    if precision not in ("auto", "fp32", "bf16"):
        raise UsageError(f"--precision must be auto, fp32 or bf16, not {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16"
    from qabridge.core.machine import cpu_info

    return "bf16" if {"avx512_bf16", "amx_bf16"} & set(cpu_info().flags) else "fp32"


def train(cfg: TrainConfig, *, progress: bool = True, log=print) -> dict:
    """Train (or distil, with ``cfg.teacher``) an adapter into ``cfg.output``; returns the run summary.

    Launched with WORLD_SIZE > 1 (torchrun, accelerate launch --multi_gpu), every rank runs this
    same function: see train/distributed.py. Only rank 0 writes, logs and evaluates; the other
    ranks return ``{"rank": r, ...}``.
    """
    import torch
    from tqdm.auto import tqdm

    from . import distributed

    out = Path(cfg.output)
    if cfg.quantize not in ("none", "8bit", "4bit"):
        raise UsageError(f"--quantize must be none, 8bit or 4bit, not {cfg.quantize!r}")
    if cfg.full and cfg.quantize != "none":
        raise UsageError("--full cannot be combined with --quantize (a quantised base cannot be fully trained)")
    if cfg.max_seq_len < 32:
        raise UsageError("--max-seq-len must be at least 32")
    if cfg.dropout is not None and not 0.0 <= cfg.dropout < 1.0:
        raise UsageError(f"--dropout must be in [0, 1), not {cfg.dropout:g}")
    if cfg.stop_after is not None and cfg.stop_after <= 0:
        raise UsageError(f"--stop-after must be a positive number of seconds, not {cfg.stop_after:g}")
    pick_precision(cfg.precision, "cpu")  # a bad --precision fails before any loading
    neg_cfg = cfg.negative_config()  # bad --negatives / --negative-ratio fail before any loading
    if cfg.teacher:
        from .distill import check_options

        check_options(cfg)
    if cfg.init_adapter:
        _take_init_adapter(cfg, log)
    device = pick_device(cfg.device)
    dist, device = distributed.init(device)
    if not dist.main:
        progress = False
        log = _silent  # noqa: F811 - one voice: rank 0 speaks for the run
    note = distributed.single_process_note()
    if note:
        log(f"warning: {note}")
    try:
        return _train(cfg, out, device, dist, neg_cfg, progress=progress, log=log, torch=torch, tqdm=tqdm)
    finally:
        distributed.shutdown(dist)


def _silent(*_a, **_k) -> None:
    pass


def _set_dropout(model, p: float) -> None:
    import torch

    # Every dropout of the BERT graph (embeddings, attention probabilities, outputs) is an nn.Dropout
    # whose .p the forward reads, attention included (transformers passes self.dropout.p to it).
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p


def training_examples(cfg: TrainConfig, rng: np.random.Generator, neg_cfg=None, *, log=print):
    """The run's training examples: the data file, its seeded subset (drawn from ``rng``, which the
    batch order then goes on drawing from), then the generated negatives. Returns (examples, the
    data's own unanswerable count, the negatives' report or None)."""
    examples = load_squad(cfg.data, split="train", strict=cfg.strict)
    for note in examples.notes(str(cfg.data)):
        log(note)
    repairs = {"reanchored": examples.reanchored, "skipped": len(examples.skipped), "answers_dropped": len(examples.dropped)}
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
    return examples, unanswerable_in_data, neg_report, repairs


def _train(cfg: TrainConfig, out: Path, device: str, dist, neg_cfg, *, progress: bool, log, torch, tqdm) -> dict:
    from . import distributed

    prev = distributed.on_main(lambda: _check_output(out, cfg), dist)
    check_quantize(cfg.quantize, device)  # before minutes of feature building, not after
    ref: BaseRef = resolve_base(cfg.base)
    hf_cfg = load_config(ref)
    if cfg.max_seq_len > hf_cfg.max_position_embeddings:
        raise UsageError(f"--max-seq-len {cfg.max_seq_len} exceeds the base's {hf_cfg.max_position_embeddings} positions")
    eval_examples = load_squad(cfg.eval_data, split="validation", strict=cfg.strict) if cfg.eval_data else None
    for note in eval_examples.notes(str(cfg.eval_data)) if eval_examples is not None else ():
        log(note)
    # The same seed on every rank: the same subset, LoRA initialisation and batch order everywhere.
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    examples, unanswerable_in_data, neg_report, data_repairs = training_examples(cfg, rng, neg_cfg, log=log)

    tok = WordPieceTokenizer.from_hf_dir(tokenizer_dir(ref))
    spec = cfg.window_spec()
    feats = build_features(examples, tok, spec)
    if cfg.null_windows_per_question is not None:
        before = len(feats)
        feats = cap_null_windows(feats, cfg.null_windows_per_question, np.random.default_rng(cfg.seed + 1))
        log(f"windows: kept {len(feats)} of {before} (at most {cfg.null_windows_per_question} without the answer per question)")
    if len(feats) == 0:
        raise UsageError(f"{cfg.data}: no usable training windows")
    lengths = feats.lengths()

    model = load_qa_model(ref, quantize=cfg.quantize, device=device)
    if cfg.dropout is not None:
        _set_dropout(model, cfg.dropout)  # before peft wraps it: LoRA's own dropout is --lora-dropout
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
        if cfg.init_adapter:
            _load_init_weights(trainable_model, Path(cfg.init_adapter))
            log(f"warm start from {cfg.init_adapter}")
    trainable_model.train()
    params = [p for p in trainable_model.parameters() if p.requires_grad]
    # The span head's bias adds one constant to every position's start (end) logit, and a softmax
    # over positions ignores constants: its gradient is exactly zero. Left alone, Adam divides the
    # float noise of that zero by its own tiny running scale and takes lr-sized random steps
    # (different ones for any change of batching, threads or ranks); zeroing it keeps the bias put.
    shift_invariant = [p for n, p in trainable_model.named_parameters()
                       if p.requires_grad and n.endswith(("qa_outputs.bias", "qa_outputs.modules_to_save.default.bias"))]
    n_trainable = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in trainable_model.parameters())

    # The span loss: gold start/end, or (distillation) the teacher's soft targets mixed in.
    objective: Objective = GoldLoss()
    if cfg.teacher:
        from .distill import Distiller

        objective = Distiller(cfg, feats, tok, ref, device=device, dist=dist, generated=feats.generated(examples), log=log)

    # --batch-size is the global batch: ranks split each batch, so the schedule does not depend on the world.
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
    curve: list[dict] = []  # learning-curve points, kept in the checkpoint across a pause or a crash
    ckpt = out / CKPT_DIR

    def read_checkpoint():
        if prev is not None and (ckpt / "state.pt").exists():
            return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
        return None

    # Rank 0 reads the checkpoint and hands it to the others: on several nodes only it may hold one.
    state = distributed.on_main(read_checkpoint, dist)
    if state is not None:
        missing = trainable_model.load_state_dict(state["model"], strict=False)
        del missing
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, examples_seen, wall_before = state["step"], state["examples_seen"], state.get("wall_s", 0.0)
        curve = list(state.get("curve", []))
        log(f"resuming from {ckpt} at step {step}/{total_steps}")
    del state
    # find_unused_parameters only for --full: with LoRA every trainable tensor is used each step.
    model_step = distributed.wrap(trainable_model, dist, find_unused=cfg.full)
    if dist.enabled:
        torch.manual_seed(cfg.seed + dist.rank)  # independent dropout streams per rank, same init above
        log(f"data parallel: {dist.world} ranks ({dist.backend}), global batch {cfg.batch_size} split across them")

    precision = pick_precision(cfg.precision, device)
    use_amp = precision == "bf16"
    amp_device = "cuda" if device.startswith("cuda") else "cpu"
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
            "curve": curve,
        }
        tmp = ckpt / "state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, ckpt / "state.pt")
        _write_qa_config(out, cfg, ref, spec, partial=True)

    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        _write_qa_config(out, cfg, ref, spec, partial=True)

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
    padded_tokens = 0  # tokens run through the model (all ranks), padding included
    step_at_loop = step
    planned_steps = total_steps
    t_warm, step_warm = t_loop, step
    micro = step * cfg.grad_accum
    per_epoch = len(batches_for_epoch(0))
    epoch, pos = divmod(micro, per_epoch)
    batches = batches_for_epoch(epoch)
    last_loss = float("nan")
    stopped_early = False
    stop_next = pause_next = False
    while step < total_steps:
        if pause_next:
            if dist.main:
                save_checkpoint()
                log(f"paused at step {step}/{total_steps} after {cfg.stop_after:g} s: the same command resumes")
            distributed.barrier(dist)  # every rank leaves once rank 0 has written the checkpoint
            bar.close()
            return {"rank": dist.rank, "paused": True, "steps": step, "planned_steps": total_steps,
                    "examples_seen": examples_seen, "wall_time_s": round(wall_before + time.time() - t_loop, 1),
                    "checkpoint": str(ckpt), "precision": precision}
        if stop_next:
            stopped_early = True
            log(f"time budget of {cfg.time_budget:g} s reached at step {step}/{total_steps}")
            break
        opt.zero_grad(set_to_none=True)
        loss_part = 0.0  # this rank's share of the step's mean loss; summed over ranks below
        for k in range(cfg.grad_accum):
            if pos >= len(batches):
                epoch += 1
                pos = 0
                batches = batches_for_epoch(epoch)
            bidx = batches[pos]
            pos += 1
            n_global, width = len(bidx), int(lengths[bidx].max())
            mine, weight = distributed.share(bidx, dist)
            ids, mask = pad_batch([feats.input_ids[i] for i in mine], pad, length=width)
            padded_tokens += n_global * width
            ids_t = torch.from_numpy(ids).to(device)
            batch = Batch(
                index=mine,
                input_ids=ids_t,
                attention_mask=torch.from_numpy(mask).to(device),
                start_positions=torch.from_numpy(feats.start_positions[mine]).to(device),
                end_positions=torch.from_numpy(feats.end_positions[mine]).to(device),
            )
            with distributed.no_sync(model_step, dist, last=k == cfg.grad_accum - 1):
                with torch.autocast(device_type=amp_device, dtype=amp_dtype, enabled=use_amp):
                    res = model_step(input_ids=ids_t, attention_mask=batch.attention_mask,
                                     token_type_ids=torch.zeros_like(ids_t))
                per_example = objective(res.start_logits.float(), res.end_logits.float(), batch)
                # Normalised by the global batch: DDP averages over ranks, hence the world factor, and
                # uneven or empty shares (weight 0) weigh exactly what they weigh in the full batch.
                share_loss = per_example.sum() * (weight / (n_global * cfg.grad_accum))
                (share_loss * dist.world).backward()
            loss_part += float(share_loss.detach())
            examples_seen += n_global
        for p in shift_invariant:
            if p.grad is not None:
                p.grad.zero_()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        done = step - step_at_loop
        if done == 30:
            t_warm, step_warm = time.time(), step  # rate measured after warm-up (kernel caches, allocator)
        # Rank 0's clock decides the budget for everyone (a rank that stopped alone would leave the
        # others waiting in the all-reduce): its stop flag and step total travel with the loss sum.
        want_stop, new_total, want_pause = 0.0, 0.0, 0.0
        if dist.main:
            want_pause = float(bool(cfg.stop_after) and time.time() - t_loop > cfg.stop_after)
            new_total = float(total_steps)
            if cfg.time_budget and done in (100, 300, 1000, 3000):
                # Fit the whole schedule (warm-up and decay) into the budget instead of cutting it short.
                per_step = (time.time() - t_warm) / (step - step_warm)
                fit = step + int(0.9 * (cfg.time_budget - (time.time() - t_loop)) / per_step)
                new_total = float(max(step + 1, min(planned_steps, fit)))
                if new_total != total_steps:
                    log(f"time budget: {total_steps} planned steps -> {int(new_total)} ({per_step * 1e3:.1f} ms/step)")
            want_stop = float(bool(cfg.time_budget) and time.time() - t_loop > cfg.time_budget)
        last_loss, stop_sum, total_sum, pause_sum = distributed.all_sum([loss_part, want_stop, new_total, want_pause],
                                                                        dist, device)
        stop_next = stop_sum > 0
        pause_next = pause_sum > 0 and step < total_steps
        if int(total_sum) != total_steps:
            total_steps = int(total_sum)
            bar.total = total_steps
        elapsed = time.time() - t_loop
        bar.set_postfix(loss=f"{last_loss:.3f}", ex_s=f"{(examples_seen - seen_at_loop) / max(elapsed, 1e-6):.1f}")
        bar.update(1)
        if dist.main and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
            save_checkpoint()
            if not progress:  # a long quiet run (--stop-after sittings) still says where it is
                rate = (examples_seen - seen_at_loop) / max(elapsed, 1e-6)
                left_h = (total_steps - step) * cfg.batch_size * cfg.grad_accum / max(rate, 1e-6) / 3600
                log(f"checkpoint: step {step}/{total_steps}, loss {last_loss:.3f}, {rate:.1f} windows/s this sitting, "
                    f"~{left_h:.1f} h to go")
        if dist.main and cfg.eval_every and eval_examples is not None and step % cfg.eval_every == 0 and step < total_steps:
            eval_point()
    bar.close()
    wall = wall_before + (time.time() - t_loop)
    if not dist.main:
        distributed.barrier(dist)  # leave together once rank 0 has written the adapter
        return {"rank": dist.rank, "world_size": dist.world, "steps": step, "final_loss": last_loss}

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
        "data_repairs": data_repairs,
        "negatives": {"kinds": cfg.negatives, "ratio": cfg.negative_ratio,
                      "adversarial_methods": list(neg_cfg.methods), **neg_report.as_dict()}
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
        "precision": precision,
        "allocator": allocator.in_use(),
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else cpu_info().describe(),
        "trainable_params": n_trainable,
        "total_params": n_total,
        "adapter_bytes": _dir_bytes(out, {"adapter_model.safetensors", "adapter_config.json", "model.safetensors"}),
        "final_loss": round(last_loss, 4),
        "segment_ids": "zeros",
        "config": asdict(cfg),
    }
    if dist.enabled:
        summary["distributed"] = dist.as_dict()  # peak_rss_mb / peak_gpu_mb are rank 0's
    if cfg.teacher:
        summary["distill"] = objective.summary()
    if curve:
        summary["curve"] = curve
    if eval_examples is not None:
        from .evaluate import evaluate_adapter

        res = evaluate_adapter(out, eval_examples, limit=cfg.eval_limit, device=device, progress=progress)
        summary["dev"] = {k: res[k] for k in ("exact_match", "f1", "count", "seconds")}
        summary["dev"]["data"] = str(cfg.eval_data)
    _write_qa_config(out, cfg, ref, spec, partial=False)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    distributed.barrier(dist)
    return summary


@dataclass
class Batch:
    """One rank's share of a micro-batch, as the objective sees it."""

    index: np.ndarray  # feature indices (into Features), one per row
    input_ids: Any
    attention_mask: Any
    start_positions: Any
    end_positions: Any


class Objective(Protocol):
    """Per-example span loss (shape [rows]) from the student's fp32 start/end logits."""

    def __call__(self, start_logits, end_logits, batch: Batch): ...


def gold_span_loss(start_logits, end_logits, batch: Batch):
    """(CE(start) + CE(end)) / 2 per example: transformers' QA loss, unreduced.

    As there, every position of the padded row is a candidate and labels beyond the row are
    ignored; the mean over the batch is taken by the trainer (over the global batch).
    """
    import torch.nn.functional as F

    width = start_logits.size(1)
    s = batch.start_positions.clamp(0, width)
    e = batch.end_positions.clamp(0, width)
    ce_s = F.cross_entropy(start_logits, s, ignore_index=width, reduction="none")
    ce_e = F.cross_entropy(end_logits, e, ignore_index=width, reduction="none")
    return (ce_s + ce_e) / 2


class GoldLoss:
    def __call__(self, start_logits, end_logits, batch: Batch):
        return gold_span_loss(start_logits, end_logits, batch)


def _take_init_adapter(cfg: TrainConfig, log) -> None:
    """Adopt the warm-start adapter's LoRA shape and base (the weights only fit that shape)."""
    from .model import read_adapter

    if cfg.full:
        raise UsageError("--init-adapter starts LoRA training from an adapter; it cannot be combined with --full")
    acfg, qcfg = read_adapter(cfg.init_adapter)
    if acfg.get("full_model") or acfg.get("peft_type") != "LORA":
        raise UsageError(f"--init-adapter {cfg.init_adapter}: not a LoRA adapter")
    shape = {"lora_r": int(acfg["r"]), "lora_alpha": int(acfg["lora_alpha"]),
             "target_modules": sorted(acfg["target_modules"])}
    changed = {k: v for k, v in shape.items() if getattr(cfg, k) != v and
               (k != "target_modules" or sorted(cfg.target_modules) != v)}
    if changed:
        log(f"--init-adapter: LoRA shape taken from the adapter: {changed}")
    cfg.lora_r, cfg.lora_alpha, cfg.target_modules = shape["lora_r"], shape["lora_alpha"], shape["target_modules"]
    base = qcfg.get("base_model") or acfg.get("base_model_name_or_path")
    if cfg.base is None and base and not is_offline_base(base):
        cfg.base = base
    elif cfg.base is not None and base and resolve_base(cfg.base).name != resolve_base(base).name:
        raise UsageError(f"--init-adapter {cfg.init_adapter} was trained on {base!r}, not on --base {cfg.base!r}")


def _load_init_weights(model, d: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    f = d / "adapter_model.safetensors"
    if not f.exists():
        raise UsageError(f"--init-adapter {d}: no adapter_model.safetensors")
    res = set_peft_model_state_dict(model, load_file(str(f)))
    missing = [k for k in res.missing_keys if "lora_" in k or "modules_to_save" in k]
    if missing or res.unexpected_keys:
        raise UsageError(f"--init-adapter {d}: weights do not fit this model "
                         f"(missing {missing[:3]}, unexpected {list(res.unexpected_keys)[:3]})")


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
