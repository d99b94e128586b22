"""Peak resident memory of a process, for the benchmarks (scripts/bench*.py)."""

import resource


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM of ``pid``: it starts afresh at exec. (``ru_maxrss`` does not: a child of
    scripts/bench.py would report the parent's size at fork whenever its own peak is smaller.)"""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if pid == "self" else float("nan")
