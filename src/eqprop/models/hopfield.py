"""Ready-made networks: the deep convolutional Hopfield network (DCHN, Table 5) and fully connected nets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.interactions import Bias, ConvPool, Dense, Interaction
from ..core.kernels import set_fused_kernels
from ..core.layers import Layer
from ..core.network import EnergyNetwork
from ..core.readout import Readout
from ..errors import ConfigError
from ..settings import Section, register_section, setting
from .base import image_input, layer_gains, model_spec, register_model

__all__ = ["dchn", "hopfield_mlp", "DCHN_CHANNELS", "vgg_crnn", "VGG_ARCHS"]

DCHN_CHANNELS = (128, 256, 512, 512)


def dchn(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int = 32,
    channels: Sequence[int] = DCHN_CHANNELS,
    channel_multiplier: float = 1.0,
    gains: float | Sequence[float] = 0.5,
    activation: str = "hard_sigmoid",
    output_activation: str = "identity",
    pooling: str = "max",
    temperature: float = 1.0,
    paddings: Sequence[int] | None = None,
    readout: bool = False,
) -> EnergyNetwork:
    """DCHN: conv3x3 + 2x2 pooling interactions, then a dense interaction to the output (Table 5).

    Defaults give n_in x 32 x 32 -> 128x16x16 -> 256x8x8 -> 512x4x4 -> 512x2x2 -> n_out.
    ``channel_multiplier`` scales the widths (e.g. 0.125 for CPU work); ``paddings`` (default 1 per conv) must
    leave an even size before each pooling. ``gains`` are the per-layer alpha of eq. (102). ``pooling="softmax"``
    at ``temperature`` is the holomorphic pooling; ``readout=True`` replaces the dense output layer by a
    :class:`~eqprop.core.readout.Readout` of the last conv layer outside the dynamics (the holomorphic-EP
    paper's network: softmax pooling, paddings 1, 1, 1, 0, readout of 512x1x1).
    """
    widths = [max(1, int(round(c * channel_multiplier))) for c in channels]
    if paddings is None and input_size % (2 ** len(widths)) != 0:
        raise ValueError(
            f"input_size={input_size} must be divisible by 2**{len(widths)} (one 2x2 pooling per conv layer)"
        )
    pads = [1] * len(widths) if paddings is None else [int(p) for p in paddings]
    if len(pads) != len(widths) or min(pads, default=0) < 0:
        raise ValueError(f"paddings must give one value >= 0 per conv layer ({len(widths)}), got {list(pads)}")
    alphas = layer_gains(gains, len(widths) + 1, "dchn")
    layers = [Layer("s0", (in_channels, input_size, input_size), None)]
    inters: dict[str, Interaction] = {}
    size, c_in = input_size, in_channels
    for k, (c, pad) in enumerate(zip(widths, pads), start=1):
        conv = size + 2 * pad - 2
        if conv < 2 or conv % 2:
            raise ValueError(
                f"conv layer {k} sees a {size}x{size} input and gives {conv}x{conv} with padding {pad}: the 2x2 "
                f"pooling needs an even size >= 2 (input_size={input_size}, paddings={pads})"
            )
        size = conv // 2
        layers.append(Layer(f"s{k}", (c, size, size), activation))
        inters[f"conv{k}"] = ConvPool(
            k - 1, k, c_in, c, padding=pad, gain=alphas[k - 1], pooling=pooling, temperature=temperature
        )
        inters[f"bias{k}"] = Bias(k, (c, size, size))
        c_in = c
    if readout:
        return EnergyNetwork(layers, inters, Readout(layers[-1].shape, num_classes, gain=alphas[-1]))
    out = len(widths) + 1
    layers.append(Layer(f"s{out}", (num_classes,), output_activation))
    inters[f"dense{out}"] = Dense(out - 1, out, layers[out - 1].shape, (num_classes,), gain=alphas[-1])
    inters[f"bias{out}"] = Bias(out, (num_classes,))
    return EnergyNetwork(layers, inters)


def hopfield_mlp(
    sizes: Sequence[int] = (784, 500, 10),
    gains: float | Sequence[float] = 0.5,
    activation: str = "hard_sigmoid",
    output_activation: str = "identity",
    readout: bool = False,
) -> EnergyNetwork:
    """A layered, fully connected Hopfield network, e.g. 784-500-10, with dense interactions and biases.

    ``readout=True``: the last size is the number of classes of a :class:`~eqprop.core.readout.Readout` of the
    last hidden layer, outside the dynamics (784-500-10 then relaxes 784-500 and reads 10 logits)."""
    if len(sizes) < 2 + int(readout) or any(int(n) <= 0 for n in sizes):
        raise ValueError(
            f"sizes must list at least {2 + int(readout)} positive layer sizes (input, "
            f"{'hidden, classes' if readout else 'output'}), got {list(sizes)}"
        )
    alphas = layer_gains(gains, len(sizes) - 1, "hopfield_mlp")
    free = len(sizes) - 1 - int(readout)  # relaxed layers
    layers = [Layer("s0", (int(sizes[0]),), None)]
    inters: dict[str, Interaction] = {}
    for k in range(1, free + 1):
        act = output_activation if k == len(sizes) - 1 else activation
        layers.append(Layer(f"s{k}", (int(sizes[k]),), act))
        inters[f"dense{k}"] = Dense(k - 1, k, layers[k - 1].shape, layers[k].shape, gain=alphas[k - 1])
        inters[f"bias{k}"] = Bias(k, layers[k].shape)
    head = Readout(layers[-1].shape, int(sizes[-1]), gain=alphas[-1]) if readout else None
    return EnergyNetwork(layers, inters, head)


# Appendix C / Table 4 of the scalable-EP paper: conv3 widths per block (each block ends in a 2x2 max-pool)
# and the FC-512 layers before the output; VGG-5 is the four-conv baseline of Table 1. VGG-11 / VGG-13 are
# VGG-10 / VGG-12 with a second FC-512.
VGG_ARCHS: dict[str, tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]] = {
    "vgg5": (((128,), (256,), (512,), (512,)), ()),  # the prior works' VGG-5 of Table 1 (= Table 5's DCHN)
    "vgg7": (((64,), (128,), (256,), (512,), (512,)), (512,)),
    "vgg10": (((64,), (128,), (256, 256), (512, 512), (512, 512)), (512,)),
    "vgg11": (((64,), (128,), (256, 256), (512, 512), (512, 512)), (512, 512)),
    "vgg12": (((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)), (512,)),
    "vgg13": (((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)), (512, 512)),
}


def vgg_crnn(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int = 32,
    blocks: Sequence[Sequence[int]] = VGG_ARCHS["vgg7"][0],
    fc: Sequence[int] = (512,),
    gains: float | Sequence[float] = 1.0,
    activation: str = "hard_sigmoid",
    fc_activation: str = "hard_sigmoid",
    output_activation: str = "identity",
    channel_multiplier: float = 1.0,
    pooling: str = "max",
    temperature: float = 1.0,
    readout: bool = False,
) -> EnergyNetwork:
    """A VGG-style convergent RNN (scalable-EP paper, eq. 1 and Table 4): conv3x3/pad 1 layers grouped in blocks,
    the last conv of each block followed by a 2x2 max-pool inside the energy, then dense layers and the output.

    ``gains`` scale the Kaiming-uniform bound 1/sqrt(fan_in) per weight layer (the paper's "scaled by 0.5" is
    0.5). ``activation`` is the conv layers' state space (hard sigmoid, or ReLU for VGG-12-KD). The network's
    ``block_ends`` lists the layer index of the last conv layer of each block (where KD/LE signals attach).
    ``pooling``/``temperature`` as in :func:`dchn`; ``readout=True`` reads the classes from the last FC layer
    (or the last block) by a :class:`~eqprop.core.readout.Readout` outside the dynamics.
    """
    if not blocks or any(not b for b in blocks):
        raise ValueError(f"blocks must be a non-empty list of non-empty lists of conv widths, got {blocks}")
    if input_size % (2 ** len(blocks)) != 0:
        raise ValueError(f"input_size={input_size} must be divisible by 2**{len(blocks)} (one 2x2 pooling per block)")
    widths = [[max(1, int(round(c * channel_multiplier))) for c in b] for b in blocks]
    fc = [max(1, int(round(n * channel_multiplier))) for n in fc]
    n_weights = sum(len(b) for b in widths) + len(fc) + 1
    alphas = layer_gains(gains, n_weights, "vgg_crnn")
    layers = [Layer("s0", (in_channels, input_size, input_size), None)]
    inters: dict[str, Interaction] = {}
    block_ends: list[int] = []
    size, c_in, k = input_size, in_channels, 0
    for block in widths:
        for j, c in enumerate(block):
            k += 1
            last = j == len(block) - 1
            size = size // 2 if last else size
            layers.append(Layer(f"s{k}", (c, size, size), activation))
            inters[f"conv{k}"] = ConvPool(
                k - 1, k, c_in, c, pool=2 if last else 1, gain=alphas[k - 1], pooling=pooling, temperature=temperature
            )
            inters[f"bias{k}"] = Bias(k, (c, size, size))
            c_in = c
        block_ends.append(k)
    for n in list(fc) + ([] if readout else [num_classes]):
        k += 1
        act = output_activation if k == n_weights else fc_activation
        layers.append(Layer(f"s{k}", (n,), act))
        inters[f"dense{k}"] = Dense(k - 1, k, layers[k - 1].shape, (n,), gain=alphas[k - 1])
        inters[f"bias{k}"] = Bias(k, (n,))
    head = Readout(layers[-1].shape, num_classes, gain=alphas[-1]) if readout else None
    net = EnergyNetwork(layers, inters, head)
    net.block_ends = block_ends
    return net


# ---- config sections and registrations (config ``model=...``) -------------------------------------------------
@dataclass
class DCHNSection(Section):
    """The ``dchn`` section: what only the convolutional Hopfield net reads (its widths are ``channels``)."""

    name: ClassVar[str] = "dchn"
    moved_from: ClassVar[tuple[str, ...]] = ("model",)
    paddings: list[int] | None = setting(None, "dchn: padding per conv layer (null: 1 each)")

    def check_config(self, cfg: Any) -> None:
        channels = cfg.model.channels
        if self.paddings is not None and (len(self.paddings) != len(channels) or min(self.paddings) < 0):
            raise ConfigError(
                f"config key 'paddings' gives one padding >= 0 per conv layer: expected {len(channels)} "
                f"entries (one per channels entry), got {self.paddings}"
            )


@dataclass
class VGGSection(Section):
    """The ``vgg`` section: the conv widths per block of the scalable-EP paper's VGG CRNNs."""

    name: ClassVar[str] = "vgg"
    moved_from: ClassVar[tuple[str, ...]] = ("model",)
    blocks: list[list[int]] = setting([[64], [128], [256], [512], [512]], "vgg: conv widths per block (VGG-7)")

    def check_config(self, cfg: Any) -> None:
        if model_spec(cfg.model.kind).blocks and (not self.blocks or any(not b or min(b) < 1 for b in self.blocks)):
            raise ConfigError(f"config key 'blocks' must list non-empty lists of conv widths >= 1, got {self.blocks}")


register_section(DCHNSection, "model=dchn")
register_section(VGGSection, "model=vgg (and the KD teacher of signals=kd/kdw)")


def _build_dchn(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> EnergyNetwork:
    c, _, size = image_input("dchn", input_shape)
    net = dchn(
        c,
        num_classes,
        input_size=size,
        channels=cfg.channels,
        gains=cfg.gains,
        activation=cfg.activation,
        pooling=cfg.pooling,
        temperature=cfg.pool_temperature,
        paddings=cfg.paddings,
        readout=cfg.readout,
    )
    set_fused_kernels(net, cfg.fused_kernels)
    return net


def _build_mlp(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> EnergyNetwork:
    sizes = [math.prod(input_shape)] + list(cfg.hidden) + [num_classes]
    return hopfield_mlp(sizes, gains=cfg.gains, activation=cfg.activation, readout=cfg.readout)


def _build_vgg(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> EnergyNetwork:
    c, _, size = image_input("vgg", input_shape)
    if size % 2 ** len(cfg.blocks):
        raise ConfigError(
            f"model 'vgg': {len(cfg.blocks)} blocks pool the {size}x{size} input "
            f"{len(cfg.blocks)} times; the size must be divisible by {2 ** len(cfg.blocks)}"
        )
    net = vgg_crnn(
        c,
        num_classes,
        size,
        cfg.blocks,
        cfg.hidden,
        cfg.gains,
        cfg.activation,
        pooling=cfg.pooling,
        temperature=cfg.pool_temperature,
        readout=cfg.readout,
    )
    set_fused_kernels(net, cfg.fused_kernels)
    return net


register_model("dchn", _build_dchn, "hopfield", description="Table 5's convolutional Hopfield net (channels, gains)")
# what `eqprop train model=mlp` (or vgg) needs on the digits besides the shared defaults: one gain and one rate
# for every layer, whatever the depth (measured here: mlp 2.50% best test error in 5 epochs, 4 s; vgg 15.3% after
# 3 epochs, 24 s)
register_model(
    "mlp",
    _build_mlp,
    "hopfield",
    flat_input=True,
    description="a dense Hopfield net (hidden, gains)",
    defaults={"hidden": [256], "gains": [0.5], "lrs": [0.05]},
)
register_model(
    "vgg",
    _build_vgg,
    "hopfield",
    blocks=True,
    description="VGG CRNN of the scalable-EP paper (blocks, hidden)",
    defaults={"blocks": [[16], [32], [64]], "hidden": [128], "gains": [0.8], "lrs": [0.05]},
)
