"""Shared output of the benchmark scripts: run metadata, then <out>.json and a Markdown table <out>.md; and the
two agreement measures the gradient checks report (cosine, relative error)."""

from __future__ import annotations

import datetime
import json
import math
import platform
import sys
from pathlib import Path

import torch


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) over all entries."""
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30))


def rel_error(gs: list[torch.Tensor], refs: list[torch.Tensor]) -> float:
    """||g - g_ref|| / ||g_ref|| over all tensors (g cast to float64)."""
    num = sum(float((a.double() - b).pow(2).sum()) for a, b in zip(gs, refs))
    return math.sqrt(num / sum(float(b.pow(2).sum()) for b in refs))


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU and its thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"


def write_report(out: str | Path, device: torch.device | str, payload: dict, table: list[str]) -> None:
    """Write ``{"meta": ..., **payload}`` as JSON and the Markdown ``table`` under a header, then print it."""
    meta = {
        "device": device_name(device),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join(sys.argv),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, **payload}, indent=2))
    lines = [f"Device: {meta['device']}; torch {meta['torch']}; {meta['date']}", "", f"`{meta['command']}`", ""] + table
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
