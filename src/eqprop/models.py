"""Ready-made networks: the deep convolutional Hopfield network (DCHN, Table 5) and fully connected nets."""

from __future__ import annotations

from typing import Sequence

from .interactions import Bias, ConvPool, Dense, Interaction
from .layers import Layer
from .network import EnergyNetwork

__all__ = ["dchn", "hopfield_mlp", "DCHN_CHANNELS"]

DCHN_CHANNELS = (128, 256, 512, 512)


def _gains(gains: float | Sequence[float], n: int, what: str) -> list[float]:
    if isinstance(gains, (int, float)):
        return [float(gains)] * n
    gains = [float(g) for g in gains]
    if len(gains) != n:
        raise ValueError(f"{what}: expected {n} gains (one per weight layer), got {len(gains)}")
    return gains


def dchn(in_channels: int = 3, num_classes: int = 10, input_size: int = 32,
         channels: Sequence[int] = DCHN_CHANNELS, channel_multiplier: float = 1.0,
         gains: float | Sequence[float] = 0.5, activation: str = "hard_sigmoid",
         output_activation: str = "identity") -> EnergyNetwork:
    """DCHN: conv3x3/pad1 + 2x2 max-pool interactions, then a dense interaction to the output (Table 5).

    Defaults give n_in x 32 x 32 -> 128x16x16 -> 256x8x8 -> 512x4x4 -> 512x2x2 -> n_out.
    ``channel_multiplier`` scales the widths (e.g. 0.125 for CPU work); ``input_size`` must be divisible
    by 2**len(channels). ``gains`` are the per-layer alpha of eq. (102).
    """
    widths = [max(1, int(round(c * channel_multiplier))) for c in channels]
    if input_size % (2 ** len(widths)) != 0:
        raise ValueError(f"input_size={input_size} must be divisible by 2**{len(widths)} "
                         f"(one 2x2 pooling per conv layer)")
    alphas = _gains(gains, len(widths) + 1, "dchn")
    layers = [Layer("s0", (in_channels, input_size, input_size), None)]
    inters: dict[str, Interaction] = {}
    size, c_in = input_size, in_channels
    for k, c in enumerate(widths, start=1):
        size //= 2
        layers.append(Layer(f"s{k}", (c, size, size), activation))
        inters[f"conv{k}"] = ConvPool(k - 1, k, c_in, c, gain=alphas[k - 1])
        inters[f"bias{k}"] = Bias(k, (c, size, size))
        c_in = c
    out = len(widths) + 1
    layers.append(Layer(f"s{out}", (num_classes,), output_activation))
    inters[f"dense{out}"] = Dense(out - 1, out, layers[out - 1].shape, (num_classes,), gain=alphas[-1])
    inters[f"bias{out}"] = Bias(out, (num_classes,))
    return EnergyNetwork(layers, inters)


def hopfield_mlp(sizes: Sequence[int] = (784, 500, 10), gains: float | Sequence[float] = 0.5,
                 activation: str = "hard_sigmoid", output_activation: str = "identity") -> EnergyNetwork:
    """A layered, fully connected Hopfield network, e.g. 784-500-10, with dense interactions and biases."""
    if len(sizes) < 2 or any(int(n) <= 0 for n in sizes):
        raise ValueError(f"sizes must list at least two positive layer sizes, got {list(sizes)}")
    alphas = _gains(gains, len(sizes) - 1, "hopfield_mlp")
    layers = [Layer("s0", (int(sizes[0]),), None)]
    inters: dict[str, Interaction] = {}
    for k in range(1, len(sizes)):
        act = output_activation if k == len(sizes) - 1 else activation
        layers.append(Layer(f"s{k}", (int(sizes[k]),), act))
        inters[f"dense{k}"] = Dense(k - 1, k, layers[k - 1].shape, layers[k].shape, gain=alphas[k - 1])
        inters[f"bias{k}"] = Bias(k, layers[k].shape)
    return EnergyNetwork(layers, inters)
