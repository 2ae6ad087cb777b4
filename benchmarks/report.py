"""Shared output of the benchmark scripts: run metadata, then <out>.json and a Markdown table <out>.md."""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

import torch


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
