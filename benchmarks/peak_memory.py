"""Peak memory of one call, for the memory benchmarks: CUDA max_memory_allocated, or on the CPU the peak
resident set (VmHWM, reset through /proc/self/clear_refs just before the call) minus the resident set before."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (CPU peak memory needs Linux)")


def peak_mib(fn: Callable[[], object], device: str) -> float:
    """Extra memory (MiB) at the peak of ``fn()``; run each measurement in a fresh process on the CPU."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) / 1024
