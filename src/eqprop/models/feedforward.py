"""A feedforward ReLU network: the "ReLU NN" baseline of the universal-DRN paper, trained by backprop (``BP``)
through the same Trainer, run directory and metrics as the energy-based models.

h_k = ReLU(h_{k-1} W_k + b_k) for the hidden layers, o = h_{L-1} W_L + b_L (linear output). Initialisation as the
papers' code: W_k ~ U(+-gain/sqrt(fan_in)), biases 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.relaxation import RelaxResult
from ..errors import ConfigError
from .base import layer_gains, register_model

__all__ = ["ReLUNetwork", "relu_mlp"]


class ReLUNetwork(nn.Module):
    """``sizes = [n_in, hidden..., n_out]``; states of a forward pass are ``[x, h_1, ..., o]``. Parameters, in order:
    W_1, b_1, ..., W_L, b_L with W_k of shape (fan_in, fan_out)."""

    exact_free_phase = True  # the forward pass is the prediction; there is nothing to relax

    def __init__(self, sizes: Sequence[int], gains: float | Sequence[float] = 1.0) -> None:
        super().__init__()
        sizes = [int(n) for n in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes must list at least 2 positive layer sizes (input, ..., output), got {sizes}")
        n = len(sizes) - 1
        gains = layer_gains(gains, n)
        self.sizes, self.gains, self.num_classes = sizes, gains, sizes[-1]
        for k in range(1, n + 1):
            self.register_parameter(f"w{k}", nn.Parameter(torch.empty(sizes[k - 1], sizes[k])))
            self.register_parameter(f"b{k}", nn.Parameter(torch.zeros(sizes[k])))
        self.reset_parameters()

    @property
    def depth(self) -> int:
        return len(self.sizes) - 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.sizes[0],)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for k in range(1, self.depth + 1):
            w = getattr(self, f"w{k}")
            bound = self.gains[k - 1] / math.sqrt(w.shape[0])
            w.uniform_(-bound, bound)
            getattr(self, f"b{k}").zero_()

    def layer_parameters(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, f"w{k}"), getattr(self, f"b{k}")] for k in range(1, self.depth + 1)]

    def forward_pass(self, x: Tensor) -> list[Tensor]:
        """[x, h_1, ..., o]."""
        states = [x.flatten(1)]
        for k in range(1, self.depth + 1):
            z = torch.addmm(getattr(self, f"b{k}"), states[-1], getattr(self, f"w{k}"))
            states.append(z if k == self.depth else torch.relu(z))
        return states

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_pass(x)[-1]

    def free_phase(self, x: Tensor, solver: Any = None, iterations: int = 0, init: str = "zeros") -> RelaxResult:
        """The prediction is the forward pass (no iterations)."""
        return RelaxResult(self.forward_pass(x), 0)

    def energy_param_grads(self, states: Sequence[Tensor]) -> list[Tensor]:
        raise TypeError("a feedforward ReLU network has no energy; train it with algorithm=BP")


def relu_mlp(sizes: Sequence[int] = (784, 512, 10), gains: float | Sequence[float] = 1.0) -> ReLUNetwork:
    """The universal-DRN paper's ReLU NN (1H: 784 -> 512 -> 10)."""
    return ReLUNetwork(sizes, gains)


def _build_relu_mlp(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> ReLUNetwork:
    try:
        return ReLUNetwork([math.prod(input_shape)] + list(cfg.hidden) + [num_classes], cfg.gains)
    except ValueError as exc:
        raise ConfigError(f"model=relu_mlp: {exc}") from None


register_model(
    "relu_mlp",
    _build_relu_mlp,
    "feedforward",
    flat_input=True,
    solver=None,
    description="feedforward ReLU network trained by backprop (hidden, gains)",
    defaults={
        "algorithm": "BP",
        "hidden": [256],
        "gains": [1.0],
        "normalization": "none",
        "cost": "half_squared_error",
        "lrs": [0.05],
        "momentum": 0.9,
        "weight_decay": 0.0,
        "lr_schedule": "exponential",
        "gamma": 0.99,
        "batch_size": 32,
        "epochs": 20,
    },
)
