"""The memory allocator of CPU training: tcmalloc when the machine has it.

A training step on long windows allocates activations of tens of MB (a 32 x 384-token micro-batch of
bge-small: attention scores alone 226 MB a layer). glibc serves every block over 32 MB with a fresh
mmap and gives it back at free, so each step faults the same memory in again page by page;
tcmalloc keeps it. On the 2-core AMD EPYC (Zen 5): 10 steps of 64 SQuAD windows of bge-small,
5.56 / 5.00 -> 7.71 / 7.96 windows/s in two rounds (benchmarks/experiments/train_allocator.py), the same loss to the
last digit; 384-token steps alone ~1.8x; 180-token steps unchanged (docs/quality.md, "Training
on the CPU: the allocator").

``qabridge train`` and ``distill`` re-execute themselves once with ``LD_PRELOAD`` set when they will
train on the CPU and tcmalloc is installed (Debian: ``libtcmalloc-minimal4``); ``QABRIDGE_ALLOCATOR=
system`` keeps glibc's. The allocator in use is recorded in ``training_summary.json``.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

#: ``QABRIDGE_ALLOCATOR``: ``auto`` (tcmalloc when found, the default) or ``system`` (glibc's malloc).
ENV = "QABRIDGE_ALLOCATOR"
#: Set in the re-executed process, so that a preload the loader refused cannot loop.
_REEXEC_MARK = "QABRIDGE_ALLOCATOR_REEXEC"
_PATTERNS = ("/usr/lib/*/libtcmalloc_minimal.so.4", "/usr/lib/*/libtcmalloc.so.4",
             "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc.so.4",
             "/usr/local/lib/libtcmalloc_minimal.so.4", "/usr/local/lib/libtcmalloc.so.4")
INSTALL_HINT = "apt-get install libtcmalloc-minimal4"


def find_tcmalloc() -> Path | None:
    for pattern in _PATTERNS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return Path(hits[0])
    return None


def in_use(maps: str | None = None) -> str:
    """``tcmalloc``, ``jemalloc`` or ``system``: the allocator mapped into this process."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return "system"
    if "libtcmalloc" in maps:
        return "tcmalloc"
    if "libjemalloc" in maps:
        return "jemalloc"
    return "system"


def trains_on_cpu(device: str) -> bool:
    """Without importing torch (the re-exec happens before it loads): an explicit CPU device, or
    ``auto`` on a machine with no NVIDIA device node."""
    if device == "cpu":
        return True
    return device == "auto" and not Path("/dev/nvidiactl").exists()


def _is_cli_process() -> bool:
    """This process was started as the ``qabridge`` command (never a library caller, a test runner
    calling the CLI in-process, or a notebook: replacing those would lose their state)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        return spec.name in ("qabridge.cli", "qabridge.__main__")
    return Path(sys.argv[0]).name == "qabridge"


def reexec_with_tcmalloc(device: str, *, log=None) -> None:
    """Replace this process by itself with tcmalloc preloaded, when that helps and is possible.

    Returns (doing nothing) when the allocator is already tcmalloc/jemalloc, the user asked for the
    system one, training goes to a GPU, tcmalloc is not installed, this already is the re-executed
    process, or the process is not the ``qabridge`` command."""
    choice = os.environ.get(ENV, "auto").strip().lower()
    if choice not in ("auto", "system", "tcmalloc"):
        from qabridge.errors import UsageError

        raise UsageError(f"{ENV}={choice!r}: use auto, tcmalloc or system")
    if choice == "system" or os.environ.get(_REEXEC_MARK) or in_use() != "system" or not _is_cli_process():
        return
    if choice == "auto" and not trains_on_cpu(device):
        return
    lib = find_tcmalloc()
    if lib is None:
        if log:
            log(f"allocator: glibc malloc; CPU training runs ~1.5x faster with tcmalloc ({INSTALL_HINT})")
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(p for p in (str(lib), env.get("LD_PRELOAD", "")) if p)
    env[_REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)
