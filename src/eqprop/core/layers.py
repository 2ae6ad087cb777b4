"""Layers: a named state tensor shape plus its state space (activation / projection).

The fixed-point update of a layer is ``s_k <- sigma_k(dPhi/ds_k)`` (paper eq. 98): ``sigma_k`` is the
projection onto the layer's state space, e.g. the box [0, 1] for the hard sigmoid (Table 5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Activation", "Layer", "ACTIVATIONS", "register_activation", "get_activation"]


@dataclass(frozen=True)
class Activation:
    """A state space: ``project`` maps a pre-activation to the state, ``active`` is where d(project) = 1."""

    name: str
    project: Callable[[Tensor], Tensor]
    active: Callable[[Tensor], Tensor]


ACTIVATIONS: dict[str, Activation] = {}


def register_activation(
    name: str, project: Callable[[Tensor], Tensor], active: Callable[[Tensor], Tensor]
) -> Activation:
    """Register a state space under ``name`` so layers and configs can refer to it by name."""
    act = Activation(name, project, active)
    ACTIVATIONS[name] = act
    return act


def get_activation(name: str) -> Activation:
    """Look up a registered state space; an unknown name lists the valid ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid activations are {sorted(ACTIVATIONS)}") from None


register_activation("hard_sigmoid", lambda m: m.clamp(0.0, 1.0), lambda m: (m > 0) & (m < 1))
register_activation("identity", lambda m: m, lambda m: torch.ones_like(m, dtype=torch.bool))
register_activation("relu", torch.relu, lambda m: m > 0)


@dataclass(frozen=True)
class Layer:
    """A layer of the network: its name, per-sample state shape and state space.

    Layer 0 is the input (clamped to x, ``activation=None``); every other layer is free during relaxation.
    """

    name: str
    shape: tuple[int, ...]
    activation: str | None = "hard_sigmoid"

    def __post_init__(self) -> None:
        if not self.shape or any(int(d) <= 0 for d in self.shape):
            raise ValueError(f"layer {self.name!r}: shape must be a non-empty tuple of positive ints, got {self.shape}")
        if self.activation is not None:
            get_activation(self.activation)

    @property
    def sigma(self) -> Activation:
        if self.activation is None:
            raise ValueError(f"layer {self.name!r} is an input layer and has no activation")
        return get_activation(self.activation)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n
