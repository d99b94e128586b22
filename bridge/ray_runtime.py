"""What Ray Serve and Ray Data share here: importing Ray (an optional extra), starting or joining a
cluster with a small object store, and the CPUs Ray gave the current actor.

Nothing in the default serving path imports this module; only ``--ray`` and ``qabridge batch`` do.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

from qabridge.errors import ExtraNotInstalled, ServiceError

log = logging.getLogger("qabridge.ray")

#: Object store of a local cluster we start: answers and passages are small, and Ray's default
#: (30% of RAM) would reserve gigabytes of /dev/shm on a shared machine.
DEFAULT_OBJECT_STORE_MB = 128


def require_ray():
    """The ``ray`` module, or a one-line error naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise ExtraNotInstalled(f"Ray is not installed ({exc}): pip install 'qabridge[ray]'") from None
    return ray


def init_ray(address: str | None, *, num_cpus: int | None = None, object_store_mb: int = DEFAULT_OBJECT_STORE_MB,
             log_fn: Callable[[str], None] | None = None) -> bool:
    """Join the cluster at ``address`` ("auto": the one this machine belongs to), or start a local one
    with a small object store when ``address`` is None. True when this call started Ray (the caller
    shuts it down)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    # Ray's own INFO lines (dashboard, worker logs) drown the one line a user wants to read.
    kw = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, object_store_memory=object_store_mb * 2**20,
                     include_dashboard=False, **kw)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ServiceError(f"could not start or join {where}: {exc}") from None
    if log_fn:
        res = ray.cluster_resources()
        log_fn(f"ray {ray.__version__}: {'joined ' + address if address else 'local instance'}, "
               f"{res.get('CPU', 0):g} CPUs, object store {res.get('object_store_memory', 0) / 2**20:.0f} MB")
    return not address


def assigned_cpus() -> float | None:
    """The CPUs Ray reserved for the current actor or task (None outside Ray)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)) or None
    except Exception:  # not in a worker; the caller falls back
        return None


def threads_for(cpus: float | None) -> int:
    """Engine threads for an actor holding ``cpus`` CPUs: at least one. Ray sets OMP_NUM_THREADS=1
    but llama.cpp would otherwise size itself from os.cpu_count(), so N replicas on one machine would
    each take every core."""
    if not cpus:
        return 1
    return max(1, math.floor(cpus + 1e-9))
