"""Callbacks: what a run does besides the loop itself, each a small class with hooks the Trainer calls.

- :class:`DivergenceGuard`: stop with :class:`DivergenceError` on a non-finite loss, output or weight, or a batch
  loss above ``max_loss`` (the last good checkpoint is kept);
- :class:`KappaSchedule`: the signal strength kappa of each epoch (scalable-EP paper, eq. 14);
- :class:`Diagnostics`: Figure 5's per-layer mean activation and update norm, per epoch;
- :class:`BatchFunction`: a plain ``fn(trainer, epoch, batch)`` called after each batch.

Hooks: ``on_epoch_start(trainer, epoch)``, ``after_step(trainer, epoch, batch, result)`` (before the optimiser
step), ``on_batch_end(trainer, epoch, batch, result)``, ``on_epoch_end(trainer, epoch, row)`` (may add to the
row). A callback with state that must survive a mid-epoch interruption provides ``state_dict`` and
``load_state_dict``; the Trainer stores it with the partial epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..rules.signals import kappa_schedule
from .distributed import any_rank

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = [
    "Callback",
    "DivergenceGuard",
    "DivergenceError",
    "KappaSchedule",
    "Diagnostics",
    "BatchFunction",
    "all_finite",
]


class DivergenceError(RuntimeError):
    """Raised when output, loss or weights become NaN/inf or the loss passes ``max_loss``; the last good checkpoint
    is kept."""


class Callback:
    """Base class: every hook does nothing."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def after_step(self, trainer: Trainer, epoch: int, batch: int, result: Any) -> None: ...

    def on_batch_end(self, trainer: Trainer, epoch: int, batch: int, result: Any) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class DivergenceGuard(Callback):
    """Non-finite loss or output state (before the update) or weights (after it), or a batch's mean loss above
    ``max_loss`` (a loss that explodes but stays finite, as when a biased gradient estimate turns to ascent):
    stop with advice."""

    def __init__(self, max_loss: float | None = None) -> None:
        self.max_loss = max_loss

    def _diverged(self, trainer: Trainer, epoch: int, what: str) -> DivergenceError:
        where = f" (last good checkpoint: {trainer.run_dir.last})" if trainer.run_dir else ""
        return DivergenceError(
            f"training diverged in epoch {epoch}: {what}{where}; "
            "try smaller learning rates, a smaller beta or more iterations"
        )

    def after_step(self, trainer, epoch, batch, result):
        mean = float(result.loss.sum()) / max(1, result.loss.numel())
        bad = not math.isfinite(mean) or not bool(torch.isfinite(result.output).all())
        over = self.max_loss is not None and mean > self.max_loss
        if any_rank(bad or over, trainer.dist):  # one reduction: every rank stops at the same batch
            if bad:
                what = "non-finite loss or output state"
            elif over:
                what = f"batch {batch + 1}'s mean loss {mean:.3g} is above max_loss={self.max_loss:g}"
            else:
                what = "non-finite loss or output state, or a loss above max_loss, on another rank"
            raise self._diverged(trainer, epoch, what)

    def on_batch_end(self, trainer, epoch, batch, result):
        if not all_finite(list(trainer.network.parameters())):
            raise self._diverged(trainer, epoch, "non-finite weights")


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of ``tensors`` is finite. One sum per tensor (a NaN or an infinity makes it non-finite)
    instead of an elementwise test: on a DRN-1H at batch 4 the elementwise test took a third of each step. Only a
    non-finite sum is checked element by element, so a finite tensor whose sum overflows is not mistaken."""
    if not tensors:
        return True
    with torch.no_grad():
        sums = torch.stack([t.sum(dtype=torch.float32 if t.element_size() < 4 else None) for t in tensors])
        if bool(torch.isfinite(sums).all()):
            return True
        return all(bool(torch.isfinite(t).all()) for t in tensors)


class KappaSchedule(Callback):
    """Sets the rule's kappa at the start of each epoch (eq. 14) and records it in the epoch's row."""

    def __init__(self, kind: str, kappa_init: float, kappa_min: float, gamma: float, epochs: int) -> None:
        self.kind, self.kappa_init, self.kappa_min, self.gamma, self.epochs = kind, kappa_init, kappa_min, gamma, epochs

    def on_epoch_start(self, trainer, epoch):
        trainer.algorithm.kappa = kappa_schedule(
            self.kind, epoch - 1, self.epochs, self.kappa_init, self.kappa_min, self.gamma
        )

    def on_epoch_end(self, trainer, epoch, row):
        row["kappa"] = trainer.algorithm.kappa


class Diagnostics(Callback):
    """Figure 5's quantities: per layer, the mean free-state activation and the norm of the update estimate,
    averaged over the epoch's batches; appended to ``diagnostics.jsonl`` and plotted into ``diagnostics.png``."""

    def __init__(self) -> None:
        self.activation: list[float] | None = None
        self.grad_norm: list[float] | None = None
        self.batches = 0

    def on_epoch_start(self, trainer, epoch):
        if trainer.resuming_batch == 0:
            self.activation, self.grad_norm, self.batches = None, None, 0

    def on_batch_end(self, trainer, epoch, batch, result):
        grads = {id(p): g for p, g in zip(trainer.network.parameters(), result.grads)}
        act = [float(s.float().mean()) for s in result.free.states[1:]]
        norms = [
            math.sqrt(sum(float(grads[id(p)].float().pow(2).sum()) for p in g if grads.get(id(p)) is not None))
            for g in trainer.network.layer_parameters()
        ]
        self.activation = [a + b for a, b in zip(self.activation or [0.0] * len(act), act)]
        self.grad_norm = [a + b for a, b in zip(self.grad_norm or [0.0] * len(norms), norms)]
        self.batches += 1

    def on_epoch_end(self, trainer, epoch, row):
        if self.activation is None or self.grad_norm is None or trainer.run_dir is None:
            return
        from .results import plot_diagnostics

        n = max(self.batches, 1)
        record = {
            "epoch": epoch,
            "mean_activation": [a / n for a in self.activation],
            "grad_norm": [g / n for g in self.grad_norm],
        }
        trainer.run_dir.append_jsonl("diagnostics.jsonl", record)
        plot_diagnostics(trainer.run_dir.path, trainer.run_dir / "diagnostics.png")

    def state_dict(self):
        return {"activation": self.activation, "grad_norm": self.grad_norm, "batches": self.batches}

    def load_state_dict(self, state):
        self.activation, self.grad_norm = state.get("activation"), state.get("grad_norm")
        self.batches = state.get("batches", 0)


class BatchFunction(Callback):
    """A plain function ``fn(trainer, epoch, batch)`` called after each batch."""

    def __init__(self, fn: Callable[[Trainer, int, int], None]) -> None:
        self.fn = fn

    def on_batch_end(self, trainer, epoch, batch, result):
        self.fn(trainer, epoch, batch)
