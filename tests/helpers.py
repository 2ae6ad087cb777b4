"""Small float64 networks and comparison helpers shared by the tests."""

import math

import torch

from eqprop import dchn, hopfield_mlp


def small_mlp():
    net = hopfield_mlp((20, 16, 12, 5), gains=(1.0, 0.8, 0.8)).double()
    x = torch.rand(8, 20, dtype=torch.float64)
    return net, x, torch.randint(0, 5, (8,))


def small_conv():
    """A small DCHN whose hidden units mostly sit inside the box, so that max-pooling has no exact ties
    (zero biases leave many all-zero receptive fields whose pooled maxima tie and make Phi non-smooth)."""
    net = dchn(1, 5, input_size=8, channels=(6, 8), gains=(1.0, 1.0, 0.8)).double()
    with torch.no_grad():
        for k in (1, 2):
            net.interactions[f"bias{k}"].bias.uniform_(0.3, 0.6)
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    return net, x, torch.randint(0, 5, (8,))


def cosine(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


def rel_error(gs, refs):
    num = sum(float((a - b).pow(2).sum()) for a, b in zip(gs, refs))
    den = sum(float(b.pow(2).sum()) for b in refs)
    return math.sqrt(num / den)


def max_diff(xs, ys):
    return max(float((a - b).detach().abs().max()) for a, b in zip(xs, ys))
