"""The CPU this process runs on: its model name and instruction-set flags, read once.

Benchmarks name the CPU beside every number, the engine choice is cached per CPU, and the default
outtype follows its flags: one reader for all of them (Linux /proc/cpuinfo; elsewhere the
platform's processor string and no flags).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class CpuInfo:
    name: str  # "AMD EPYC 9B45", "Intel(R) Xeon(R) Platinum 8581C CPU @ 2.10GHz", ...
    flags: tuple[str, ...]  # sorted, as /proc/cpuinfo spells them ("avx512_bf16", "amx_tile", ...)
    family: str = ""
    model: str = ""

    @property
    def simd(self) -> list[str]:
        """The vector/matrix extensions a reader of a benchmark needs to know."""
        return [f for f in self.flags if f.startswith(("avx", "amx", "fma", "f16c"))]

    def describe(self) -> str:
        """``name (N cores)``: what a benchmark row or training summary prints."""
        return f"{self.name} ({os.cpu_count()} cores)"


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's entry of a /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # end of the first processor: every core reports the same model and flags
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    return CpuInfo(name=name, flags=tuple(sorted(fields.get("flags", "").split())),
                   family=fields.get("cpu family", ""), model=fields.get("model", ""))


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text)
