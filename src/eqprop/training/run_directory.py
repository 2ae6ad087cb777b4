"""A run directory: everything one run writes, and nothing the training loop needs to know about files.

It holds ``config.json`` (the resolved config, in sections), per-epoch metrics (``metrics.jsonl`` and
``metrics.csv``), TensorBoard logs (``tensorboard/``), diagnostics (``diagnostics.jsonl``) and checkpoints
(``checkpoint_last.pt``, ``checkpoint_best.pt``), each written atomically: a crash or a full disk mid-write leaves
the previous checkpoint intact. :func:`rng_state` / :func:`restore_rng` capture every random generator a run
draws from, so a checkpoint resumes exactly.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["RunDirectory", "rng_state", "restore_rng", "atomic_save"]


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to ``path`` through a temporary file and a rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The state of torch's, CUDA's, numpy's and Python's global generators and of ``generator``."""
    return {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class RunDirectory:
    """The files of one run in ``path`` (created if missing); ``tensorboard`` adds TensorBoard logs."""

    LAST, BEST = "checkpoint_last.pt", "checkpoint_best.pt"

    def __init__(self, path: str | Path, tensorboard: bool = True, log: Callable[[str], None] = print) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.tensorboard, self.log = tensorboard, log
        self._writer: Any = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    # ---- config and metrics ------------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        (self.path / "config.json").write_text(json.dumps(config, indent=2))

    def read_config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())

    def append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        with open(self.path / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_metrics(self, row: dict[str, float], history: list[dict[str, float]]) -> None:
        """Append an epoch's row to ``metrics.jsonl``, rewrite ``metrics.csv`` and log the row to TensorBoard."""
        self.append_jsonl("metrics.jsonl", row)
        with open(self.path / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
        if self._writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self._writer.add_scalar(f"epoch/{key}", value, row["epoch"])
            self._writer.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One TensorBoard scalar (nothing without TensorBoard logs)."""
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    # ---- TensorBoard -------------------------------------------------------------------------------------
    def open_logs(self) -> None:
        if not self.tensorboard or self._writer is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: the JSON/CSV metrics still hold everything
            self.log("eqprop: tensorboard is not installed; skipping TensorBoard logs (pip install tensorboard)")
            return
        self._writer = SummaryWriter(str(self.path / "tensorboard"))

    def close_logs(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ---- checkpoints -------------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any], best: bool = False) -> Path:
        """Write ``checkpoint_last.pt`` atomically (and ``checkpoint_best.pt`` when ``best``)."""
        atomic_save(state, self.last)
        if best:
            atomic_save(state, self.best)
        return self.last

    def load_checkpoint(self, which: str = "last", device: torch.device | str = "cpu") -> dict[str, Any]:
        """A checkpoint's state ("last" or "best"; "best" falls back to "last" where there is none)."""
        path = self.best if which == "best" and self.best.exists() else self.last
        return torch.load(path, map_location=device, weights_only=False)
