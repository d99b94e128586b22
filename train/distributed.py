"""Data-parallel training across processes (torchrun, ``accelerate launch --multi_gpu``).

The launcher sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; with
``WORLD_SIZE > 1`` the trainer joins a process group (gloo on CPU, nccl on CUDA) and wraps the
model in DDP. ``--batch-size`` stays the *global* batch: every rank builds the same length-grouped
batch order (same seed) and takes a contiguous share of each batch, so N ranks take the same
optimizer steps as one process on the whole batch (same schedule, same checkpoints, and a
checkpoint resumes under any world size).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from qabridge.errors import QABridgeError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; ``world == 1`` is plain single-process training."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints, the adapter, the summary, and evaluates."""
        return self.rank == 0

    def as_dict(self) -> dict:
        return {"world_size": self.world, "backend": self.backend}


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise UsageError(f"${name}={v!r}: not an integer (set by torchrun / accelerate launch)") from None


def launched_world() -> int:
    return _env_int("WORLD_SIZE", 1)


def single_process_note() -> str | None:
    """A warning when a launcher was used but started one process.

    ``accelerate launch --cpu --num_processes 2`` (accelerate 1.15, measured) starts ONE process,
    with ACCELERATE_USE_CPU and MASTER_ADDR but no WORLD_SIZE (and OMP_NUM_THREADS=1): training
    then runs alone on one thread.
    """
    if launched_world() > 1 or "ACCELERATE_USE_CPU" not in os.environ or "MASTER_ADDR" not in os.environ:
        return None
    return ("accelerate launch --cpu started this as a single process (no WORLD_SIZE; accelerate 1.15 ignores "
            "--num_processes with --cpu): training runs alone; for N CPU processes use "
            "`accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`")


def init(device: str, timeout_s: float = 3600.0) -> tuple[Dist, str]:
    """Join the process group when launched with WORLD_SIZE > 1; returns (dist, this rank's device).

    The timeout is long because ranks wait for rank 0 while it evaluates a curve point or
    builds the teacher cache; a crashed rank is torn down by the launcher well before that.
    """
    world = launched_world()
    if world <= 1:
        return Dist(), device
    import torch
    import torch.distributed as td

    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not (0 <= rank < world):
        raise UsageError(f"RANK={rank} is outside WORLD_SIZE={world}")
    if device.startswith("cuda"):
        if local >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK={local} but torch sees {torch.cuda.device_count()} CUDA device(s) here")
        device = f"cuda:{local}"  # one GPU per process: an explicit cuda:N would put every rank on N
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    if not td.is_initialized():
        td.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank, world, local, backend), device


def shutdown(dist: Dist) -> None:
    if dist.enabled:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()


def share(batch: np.ndarray, dist: Dist) -> tuple[np.ndarray, float]:
    """This rank's contiguous share of a global batch, and the weight of its examples.

    A batch smaller than the world leaves some ranks nothing; they still run one example with
    weight 0, because DDP all-reduces in backward and every rank must take part.
    """
    if not dist.enabled:
        return batch, 1.0
    part = np.array_split(batch, dist.world)[dist.rank]
    if len(part) == 0:
        return batch[:1], 0.0
    return part, 1.0


def wrap(model, dist: Dist, *, find_unused: bool = False):
    """DDP over the model (gradients of the trainable parameters are averaged in backward)."""
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [dist.local_rank] if dist.backend == "nccl" else None
    return DDP(model, device_ids=device_ids, find_unused_parameters=find_unused)


def no_sync(ddp_model, dist: Dist, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a gradient-accumulation step."""
    if dist.enabled and not last:
        return ddp_model.no_sync()
    return nullcontext()


def all_sum(values: list[float], dist: Dist, device: str) -> list[float]:
    """Element-wise sum over ranks (float64, so step counts travel exactly)."""
    if not dist.enabled:
        return values
    import torch
    import torch.distributed as td

    t = torch.tensor(values, dtype=torch.float64, device=device)
    td.all_reduce(t, op=td.ReduceOp.SUM)
    return t.tolist()


def on_main(fn: Callable[[], T], dist: Dist) -> T:
    """Run ``fn`` on rank 0 only and hand its result - or its QABridgeError - to every rank.

    For what only rank 0 may do (read the output directory, load a checkpoint it alone may hold
    on a multi-node run): an error there must stop every rank, not leave the others waiting.
    """
    if not dist.enabled:
        return fn()
    import torch.distributed as td

    box: list[Any] = [None]
    if dist.main:
        try:
            box[0] = ("ok", fn())
        except QABridgeError as exc:
            box[0] = ("err", exc)
    td.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "err":
        raise value
    return value


def barrier(dist: Dist) -> None:
    if dist.enabled:
        import torch.distributed as td

        td.barrier()
