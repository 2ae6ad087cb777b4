"""Whether a tensor of a requested size can fit, asked before it is allocated: a size typed wrong (``image_size``,
``channels``) is a config error that says how large it would be and what the machine has, not an allocator's
traceback or the kernel's out-of-memory killer."""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError

__all__ = ["memory_bytes", "require_fits", "gib"]


def memory_bytes(device: torch.device | str = "cpu") -> int | None:
    """The device's total memory in bytes (physical RAM for the CPU); None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None


def gib(nbytes: float) -> str:
    """Bytes as a readable size (GiB, or TiB when large)."""
    return f"{nbytes / 2**40:,.1f} TiB" if nbytes >= 2**40 else f"{nbytes / 2**30:,.2f} GiB"


def require_fits(nbytes: float, what: str, fix: str, device: torch.device | str = "cpu") -> None:
    """A ConfigError when ``nbytes`` exceed the device's memory: ``what`` needs that much; ``fix`` says which key
    to change and to what."""
    total = memory_bytes(device)
    if total is not None and nbytes > total:
        raise ConfigError(f"{what} needs {gib(nbytes)}, more than this machine's {gib(total)} of memory; {fix}")
