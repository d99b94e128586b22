"""Knowledge distillation as a loss hook of the trainer (``qabridge distill``).

The student (a LoRA adapter on its base) learns from the gold span and from a teacher's soft
start/end distributions on the *same* windows:

    loss = alpha * T^2 * (KL(p_t^T || p_s^T)_start + KL(...)_end) / 2  +  (1 - alpha) * gold CE

(Hinton et al.: the T^2 keeps the soft term's gradients on the scale of the gold term's as T
grows). The KL runs over the window's real tokens only, so padding never enters it.

Generated negatives (``--negatives``) are the exception by default (``--negatives-target gold``):
their windows take the gold [CLS] loss alone, since a teacher that never saw such questions would
teach the student to answer them.

Teacher logits are computed on the fly (the teacher runs on each rank's share of each batch), or
once into ``--cache-teacher DIR``: full float32 start/end logits for every training window, not
top-k. Full logits cost 8 bytes per token - about 110 MB for SQuAD v1.1 train at 384/128 windows
(computed: 88,524 windows of ~150 tokens), memory-mapped and shared by every rank - while top-k would cut
the tail that a temperature above 1 exists to expose, and save little at this size.
The cache is keyed by the teacher's hash and a hash of the training windows' token ids, which
covers the data, subset, negatives, window spec and tokenizer at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qabridge.core.hashing import adapter_hash
from qabridge.core.tokenizer import WordPieceTokenizer
from qabridge.errors import DataError, ModelError, UsageError

from . import distributed
from .model import (
    BaseRef,
    adapter_tokenizer_dir,
    load_config,
    read_adapter,
    resolve_base,
    tokenizer_dir,
)

if TYPE_CHECKING:
    from .features import Features
    from .trainer import Batch, TrainConfig

CACHE_VERSION = "1"  # bump when the cached computation changes
MASKED = -1e4  # logit for positions outside the window: exp() underflows to exactly 0, and 0 * finite = 0


def check_options(cfg: TrainConfig) -> None:
    """Bad distillation options fail before anything loads."""
    if not cfg.temperature > 0:
        raise UsageError(f"--temperature must be > 0, not {cfg.temperature:g}")
    if not 0.0 <= cfg.distill_alpha <= 1.0:
        raise UsageError(f"--alpha must be between 0 (gold only) and 1 (teacher only), not {cfg.distill_alpha:g}")
    read_adapter(cfg.teacher)  # ModelError for a missing or foreign directory
    student = resolve_base(cfg.base)
    check_same_tokenizer(cfg.teacher, WordPieceTokenizer.from_hf_dir(tokenizer_dir(student)), student)


def check_same_tokenizer(teacher: str, student_tok: WordPieceTokenizer, student: BaseRef) -> None:
    """Soft targets are per token position: teacher and student must read the same token ids."""
    t = WordPieceTokenizer.from_hf_dir(adapter_tokenizer_dir(teacher))
    if t.vocab != student_tok.vocab:
        n = min(len(t.vocab), len(student_tok.vocab))
        first = next((i for i in range(n) if t.vocab[i] != student_tok.vocab[i]), n)
        raise ModelError(
            f"teacher {teacher} and student {student.name} have different vocabularies "
            f"({len(t.vocab)} vs {len(student_tok.vocab)} tokens, first difference at id {first}): "
            "distillation needs the same tokenizer (soft targets are per token)"
        )
    if t.lowercase != student_tok.lowercase:
        raise ModelError(f"teacher {teacher} lowercases={t.lowercase}, student {student.name} lowercases="
                         f"{student_tok.lowercase}: the same text would tokenize differently")


def windows_hash(feats: Features) -> str:
    h = hashlib.sha256()
    h.update(feats.lengths().astype(np.int64).tobytes())
    for ids in feats.input_ids:
        h.update(np.asarray(ids, dtype=np.int32).tobytes())
    return h.hexdigest()


def cache_fits(offsets: np.ndarray, feats: Features) -> bool:
    """Do a cache entry's offsets describe exactly these windows (count and every length)?"""
    return len(offsets) == len(feats) + 1 and np.array_equal(np.diff(offsets), feats.lengths())


def span_kl(student, teacher, mask, temperature: float):
    """KL(teacher || student) per row at temperature T over the positions where mask is 1."""
    import torch.nn.functional as F

    keep = mask.bool()
    s = (student / temperature).masked_fill(~keep, MASKED)
    t = (teacher / temperature).masked_fill(~keep, MASKED)
    log_ps, log_pt = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1)


def model_logits(model, input_ids, attention_mask, precision: str = "fp32"):
    """(start, end) fp32 logits of a QA model, segment ids all zero as in training; the forward pass
    under bf16 autocast with ``precision="bf16"`` (as the student's)."""
    import torch

    with torch.no_grad(), torch.autocast(device_type=input_ids.device.type, dtype=torch.bfloat16,
                                         enabled=precision == "bf16"):
        res = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids))
    return res.start_logits.float(), res.end_logits.float()


def compute_teacher_logits(model, feats: Features, pad_id: int, device: str, *, batch_size: int = 64,
                           precision: str = "fp32", log=print) -> tuple[np.ndarray, np.ndarray]:
    """Every window's (start, end) logits, flat [tokens, 2] float32, and offsets [windows + 1]."""
    import torch

    lengths = feats.lengths()
    offsets = np.zeros(len(feats) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.empty((int(offsets[-1]), 2), dtype=np.float32)
    order = np.argsort(-lengths, kind="stable")  # similar lengths together: little padding
    t0 = time.time()
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = int(lengths[idx].max())
        ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, : lengths[i]] = feats.input_ids[i]
            mask[r, : lengths[i]] = 1
        s, e = model_logits(model, torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device), precision)
        s, e = s.cpu().numpy(), e.cpu().numpy()
        for r, i in enumerate(idx):
            n = lengths[i]
            flat[offsets[i] : offsets[i] + n, 0] = s[r, :n]
            flat[offsets[i] : offsets[i] + n, 1] = e[r, :n]
    log(f"teacher logits: {len(feats)} windows in {time.time() - t0:.1f} s ({precision})")
    return flat, offsets


class Distiller:
    """The trainer's objective with a teacher: alpha * soft KL * T^2 + (1 - alpha) * gold CE."""

    def __init__(self, cfg: TrainConfig, feats: Features, tok: WordPieceTokenizer, student: BaseRef, *,
                 device: str, dist: distributed.Dist, generated: np.ndarray | None = None, log=print):
        self.temperature, self.alpha, self.device = cfg.temperature, cfg.distill_alpha, device
        # Per window: the soft term's weight. A generated negative is unanswerable by construction,
        # and a teacher never trained on such questions still puts its mass on some span there (the
        # reader it is): under "gold" those windows learn their [CLS] label alone.
        self.negatives_target = cfg.negatives_target
        self.soft_weight = np.full(len(feats), self.alpha, dtype=np.float32)
        self.gold_only_windows = 0  # generated windows taken out of the soft term
        if generated is not None and cfg.negatives_target == "gold":
            self.soft_weight[generated] = 0.0
            self.gold_only_windows = int(np.count_nonzero(generated))
        from .trainer import pick_precision

        # The teacher runs in the student's forward precision: on a CPU with AVX512-BF16 bf16 autocast
        # computed bge-small's logits 2.5x faster (17 -> 43 windows/s), with a mean KL of 2e-5 at T=2
        # from the fp32 ones (604 SQuAD windows, 2-core AMD EPYC; docs/quality.md).
        self.precision = pick_precision(cfg.precision, device)
        self.teacher_path = str(cfg.teacher)
        self.teacher_hash = adapter_hash(cfg.teacher)
        check_same_tokenizer(cfg.teacher, tok, student)
        acfg, qcfg = read_adapter(cfg.teacher)
        if not acfg.get("full_model"):
            positions = load_config(resolve_base(qcfg.get("base_model") or acfg.get("base_model_name_or_path")))
            if cfg.max_seq_len > positions.max_position_embeddings:
                raise UsageError(f"--max-seq-len {cfg.max_seq_len} exceeds the teacher's "
                                 f"{positions.max_position_embeddings} positions")
        # Loaded only where its logits are computed: a cache hit never holds the teacher in memory.
        self.teacher = None
        self.cache_dir: Path | None = None
        self.cache_hit: bool | None = None
        self.flat: np.ndarray | None = None
        self.offsets: np.ndarray | None = None
        if cfg.cache_teacher:
            self._open_cache(Path(cfg.cache_teacher), feats, tok.pad_id, dist, log)
        else:
            self.teacher = self._load_teacher()
        log(f"distilling from {self.teacher_path} (sha256 {self.teacher_hash[:12]}), T={self.temperature:g}, "
            f"alpha={self.alpha:g}, teacher logits "
            + (f"from {self.cache_dir}" if self.cache_dir else "computed each step"))

    def _open_cache(self, root: Path, feats: Features, pad_id: int, dist: distributed.Dist, log) -> None:
        # fp32 keeps the key it always had (its caches stay valid); bf16 logits are another entry.
        ident = f"{CACHE_VERSION}\n{self.teacher_hash}\n{windows_hash(feats)}" + ("" if self.precision == "fp32" else f"\n{self.precision}")
        key = hashlib.sha256(ident.encode()).hexdigest()
        d = root / f"teacher-{key[:24]}"

        def build() -> bool:
            if (d / "meta.json").exists():
                return True
            try:
                root.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=".tmp-teacher-", dir=root))
            except OSError as exc:
                raise UsageError(f"--cache-teacher {root}: cannot write ({exc.strerror})") from None
            try:
                flat, offsets = compute_teacher_logits(self._load_teacher(), feats, pad_id, self.device, precision=self.precision, log=log)
                np.save(tmp / "logits.npy", flat)
                np.save(tmp / "offsets.npy", offsets)
                meta = {"teacher": self.teacher_path, "teacher_hash": self.teacher_hash, "windows": len(feats),
                        "tokens": int(offsets[-1]), "dtype": "float32", "precision": self.precision,
                        "version": CACHE_VERSION, "key": key}
                (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")  # written last: marks it complete
                os.replace(tmp, d)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return False

        # Rank 0 builds it; the others wait and then read it (the directory must be shared by every rank).
        self.cache_hit = distributed.on_main(build, dist)
        if not (d / "meta.json").exists():
            raise DataError(f"--cache-teacher {root}: {d.name} is not readable on rank {dist.rank} "
                            "(with several nodes, the cache directory must be on a filesystem every node reads)")
        self.flat = np.load(d / "logits.npy", mmap_mode="r")
        self.offsets = np.load(d / "offsets.npy")
        if not cache_fits(self.offsets, feats):
            raise DataError(f"{d}: teacher cache does not match the training windows; delete it to rebuild")
        self.cache_dir = d
        log(f"teacher logits: cache {'hit' if self.cache_hit else 'built'} ({d})")

    def _load_teacher(self):
        from .model import load_for_inference

        teacher, _, _ = load_for_inference(self.teacher_path, device=self.device)
        return teacher.eval()

    def teacher_logits(self, batch: Batch):
        import torch

        if self.flat is None:
            return model_logits(self.teacher, batch.input_ids, batch.attention_mask, self.precision)
        rows, width = len(batch.index), batch.input_ids.size(1)
        out = np.zeros((rows, width, 2), dtype=np.float32)  # padding is masked in the KL
        for r, i in enumerate(batch.index):
            a, b = self.offsets[i], self.offsets[i + 1]
            out[r, : b - a] = self.flat[a:b]
        t = torch.from_numpy(out).to(batch.input_ids.device)
        return t[..., 0], t[..., 1]

    def __call__(self, start_logits, end_logits, batch: Batch):
        import torch

        from .trainer import gold_span_loss

        t_s, t_e = self.teacher_logits(batch)
        T = self.temperature
        soft = (span_kl(start_logits, t_s, batch.attention_mask, T) + span_kl(end_logits, t_e, batch.attention_mask, T)) / 2
        soft = soft * (T * T)
        w = torch.from_numpy(self.soft_weight[batch.index]).to(soft.device)
        if bool((w >= 1.0).all()):
            return soft
        return w * soft + (1.0 - w) * gold_span_loss(start_logits, end_logits, batch)

    def summary(self) -> dict:
        return {"teacher": self.teacher_path, "teacher_hash": self.teacher_hash, "temperature": self.temperature,
                "alpha": self.alpha, "negatives_target": self.negatives_target, "teacher_precision": self.precision,
                "gold_only_windows": self.gold_only_windows,
                "teacher_logits": "cache" if self.cache_dir else "on the fly",
                "cache": str(self.cache_dir) if self.cache_dir else None, "cache_hit": self.cache_hit}
