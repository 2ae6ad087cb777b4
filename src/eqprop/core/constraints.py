"""Parameter constraints: the set a parameter must stay in (a resistor's conductance g >= 0), restored after every
optimiser step by projection.

A model declares its constraints with ``parameter_constraints()``, a list of (parameter, projection) pairs, where
a projection maps a tensor in place onto the allowed set. :func:`project_parameters` applies them;
:func:`constrain_optimizer` makes an optimiser apply them after each ``step()``, which is how the Trainer, every
rank of a data-parallel run (each takes the same step, then the same projection) and
:func:`~eqprop.training.optim.make_optimizer` honour them. A user's own loop calls either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["nonnegative", "box", "constraints_of", "project_parameters", "constrain_optimizer", "Projection"]

Projection = Callable[[Tensor], Any]  # maps a tensor onto the allowed set, in place


def nonnegative(p: Tensor) -> Tensor:
    """p <- max(p, 0): conductances of resistors."""
    return p.clamp_(min=0.0)


def box(low: float, high: float) -> Projection:
    """The projection onto [low, high]."""
    if not low <= high:
        raise ValueError(f"box constraint needs low <= high, got [{low}, {high}]")
    return lambda p: p.clamp_(min=low, max=high)


def constraints_of(model: Any) -> list[tuple[Tensor, Projection]]:
    """The (parameter, projection) pairs a model declares (none when it declares no ``parameter_constraints``)."""
    declare = getattr(model, "parameter_constraints", None)
    return list(declare()) if callable(declare) else []


@torch.no_grad()
def project_parameters(model: Any) -> int:
    """Project every constrained parameter of ``model`` onto its set; returns how many parameters were projected."""
    pairs = constraints_of(model)
    for p, project in pairs:
        project(p.data)
    return len(pairs)


def constrain_optimizer(optimizer: torch.optim.Optimizer, model: Any) -> bool:
    """Make ``optimizer.step()`` project ``model``'s constrained parameters after each update (once per optimiser;
    returns False when the model declares no constraint)."""
    if not constraints_of(model):
        return False
    if getattr(optimizer, "_eqprop_constrained", None) is model:
        return True

    def after_step(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        project_parameters(model)

    optimizer.register_step_post_hook(after_step)
    optimizer._eqprop_constrained = model  # type: ignore[attr-defined]
    return True
