"""A readout outside the dynamics: logits = W s_L + b read from the last layer's state (holomorphic-EP paper).

The readout is not a term of Phi: the free phase never sees it. Its cost C(W s_L + b, y) enters only the nudged
energy E + beta C, so the nudging force on the last layer is -beta W^T dC/dlogits, and EP's estimate for W and b is
the contrast of beta dC/dtheta (the cost depends on them directly). Used with the softmax cross-entropy this is
the readout of the holomorphic-EP paper and of much other EP work.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .interactions import real_linear, scaled_uniform_

__all__ = ["Readout"]


class Readout(nn.Module):
    """logits = W flatten(s_L) + b; ``weight`` has shape (classes, units of s_L) like nn.Linear."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, gain: float = 1.0) -> None:
        super().__init__()
        self.in_shape, self.num_classes = tuple(in_shape), int(num_classes)
        self.weight = nn.Parameter(torch.empty(self.num_classes, math.prod(self.in_shape)))
        self.bias = nn.Parameter(torch.zeros(self.num_classes))
        self.reset_parameters(gain)

    def reset_parameters(self, gain: float) -> None:
        """U(-c, c), c = gain / sqrt(fan_in) (eq. 102's init); zero bias."""
        scaled_uniform_(self.weight, gain, self.weight.shape[1])
        with torch.no_grad():
            self.bias.zero_()

    def forward(self, s: Tensor) -> Tensor:
        """The logits of the last layer's state ``s`` (complex states give complex logits)."""
        return real_linear(lambda t: t.flatten(1) @ self.weight.t().to(t.dtype), s) + self.bias.to(s.real.dtype)

    def transpose(self, g: Tensor) -> Tensor:
        """W^T g reshaped like the last layer: carries dC/dlogits back to the state (the nudging force)."""
        return real_linear(lambda t: t @ self.weight.to(t.dtype), g).view(g.shape[0], *self.in_shape)
