"""Layers: a named state tensor shape plus its state space (activation / projection).

The fixed-point update of a layer is ``s_k <- sigma_k(dPhi/ds_k)`` (paper eq. 98): ``sigma_k`` is the
projection onto the layer's state space, e.g. the box [0, 1] for the hard sigmoid (Table 5).

Holomorphic EP relaxes with complex states, so it needs activations that are holomorphic (complex
differentiable) near the real axis: ``identity``, ``sigmoid``, ``tanh`` and the holomorphic-EP paper's smooth
hard sigmoid ``holo_hard_sigmoid``. The hard sigmoid and ReLU are piecewise linear and have no such extension.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Activation",
    "Layer",
    "ACTIVATIONS",
    "register_activation",
    "get_activation",
    "holomorphic_activations",
    "holo_hard_sigmoid",
]


@dataclass(frozen=True)
class Activation:
    """A state space: ``project`` maps a pre-activation to the state; ``slope`` is d(project)/dm (the 0/1 mask
    of the unsaturated units for a projection onto a box); ``holomorphic``: ``project`` is complex differentiable
    near the real axis and accepts complex tensors (what holomorphic EP needs); ``projection``: ``project`` is the
    Euclidean projection onto a convex set (a box), so a separable quadratic energy is minimised in closed form."""

    name: str
    project: Callable[[Tensor], Tensor]
    slope: Callable[[Tensor], Tensor]
    holomorphic: bool = False
    projection: bool = False


ACTIVATIONS: dict[str, Activation] = {}


def register_activation(
    name: str,
    project: Callable[[Tensor], Tensor],
    slope: Callable[[Tensor], Tensor],
    holomorphic: bool = False,
    projection: bool = False,
) -> Activation:
    """Register a state space under ``name`` so layers and configs can refer to it by name."""
    act = Activation(name, project, slope, holomorphic, projection)
    ACTIVATIONS[name] = act
    return act


def holomorphic_activations() -> list[str]:
    """The registered activations holomorphic EP can relax (complex states)."""
    return [name for name, act in ACTIVATIONS.items() if act.holomorphic]


def get_activation(name: str) -> Activation:
    """Look up a registered state space; an unknown name lists the valid ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid activations are {sorted(ACTIVATIONS)}") from None


def holo_hard_sigmoid(m: Tensor) -> Tensor:
    """(m/2) sigmoid(m) + (1 - m/2) sigmoid(m - 2): a holomorphic approximation of clamp(m/2, 0, 1), the
    activation of the holomorphic-EP paper's CIFAR and ImageNet32 networks (its code's ``my_holotanh``, a = 1)."""
    return 0.5 * m * torch.sigmoid(m) + (1.0 - 0.5 * m) * torch.sigmoid(m - 2.0)


def _holo_hard_sigmoid_slope(m: Tensor) -> Tensor:
    s0, s2 = torch.sigmoid(m), torch.sigmoid(m - 2.0)
    return 0.5 * s0 + 0.5 * m * s0 * (1 - s0) - 0.5 * s2 + (1.0 - 0.5 * m) * s2 * (1 - s2)


def _ones(m: Tensor) -> Tensor:
    return torch.ones_like(m)


register_activation(
    "hard_sigmoid", lambda m: m.clamp(0.0, 1.0), lambda m: ((m > 0) & (m < 1)).to(m.dtype), projection=True
)
register_activation("identity", lambda m: m, _ones, holomorphic=True, projection=True)
register_activation("relu", torch.relu, lambda m: (m > 0).to(m.dtype), projection=True)
register_activation("sigmoid", torch.sigmoid, lambda m: torch.sigmoid(m) * (1 - torch.sigmoid(m)), holomorphic=True)
register_activation("tanh", torch.tanh, lambda m: 1 - torch.tanh(m) ** 2, holomorphic=True)
register_activation("holo_hard_sigmoid", holo_hard_sigmoid, _holo_hard_sigmoid_slope, holomorphic=True)


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
