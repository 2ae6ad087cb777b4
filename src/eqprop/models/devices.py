"""What real devices do to a deep resistive network, applied inside eqprop's exact solver (the steady state stays
the exact minimiser of the circuit's energy, only the circuit changes):

- **a finite conductance range with few levels** (memristor- or transistor-like): :func:`quantize_conductances`
  clips each G_k to [0, g_max] and rounds it to 2^bits evenly spaced levels (level 0: no device), with g_max the
  layer's largest conductance unless given; :func:`quantization_constraint` is the same map as a parameter
  constraint, applied after every optimiser step when training with it;
- **device-to-device variation**: :func:`vary_conductances` multiplies every conductance by exp(sigma eps),
  eps ~ N(0, 1) drawn once per device (a log-normal spread of relative size about sigma), from a seeded generator;
- **diode forward voltage**: :func:`set_forward_voltage` moves every diode's bound by V_F (an excitatory unit's
  half-line becomes v >= -V_F, an inhibitory one's v <= V_F), which is where a real diode starts to conduct;
- **read noise**: :func:`read_noise` adds N(0, sigma^2) volts to the output voltages a measurement reads.

Each returns a changed copy (the trained network is not touched). ``eqprop robustness RUN_DIR`` evaluates a trained
DRN under each and draws its accuracy against the bits and against sigma.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from ..core.constraints import Projection
from ..errors import ConfigError
from .resistive import DeepResistiveNetwork

__all__ = [
    "quantize_conductances",
    "quantization_constraint",
    "vary_conductances",
    "set_forward_voltage",
    "read_noise",
]


def _check(net: object) -> DeepResistiveNetwork:
    if not isinstance(net, DeepResistiveNetwork):
        raise ConfigError(
            f"device non-idealities apply to deep resistive networks (model=drn), got {type(net).__name__}"
        )
    return net


def _quantize(g: Tensor, bits: int, g_max: float | None) -> Tensor:
    top = float(g.max()) if g_max is None else float(g_max)
    if top <= 0:
        return torch.zeros_like(g)
    step = top / (2**bits - 1)
    return torch.round(g.clamp(0.0, top) / step) * step


def quantize_conductances(net: DeepResistiveNetwork, bits: int, g_max: float | None = None) -> DeepResistiveNetwork:
    """A copy whose conductances are clipped to [0, g_max] (default: each layer's largest) and rounded to 2^bits
    evenly spaced levels (0 included: an off device)."""
    net = _check(net)
    if not (isinstance(bits, int) and bits >= 1):
        raise ConfigError(f"bits must be an integer >= 1 (2^bits conductance levels), got {bits!r}")
    if g_max is not None and not g_max > 0:
        raise ConfigError(f"g_max must be > 0, got {g_max}")
    out = copy.deepcopy(net)
    with torch.no_grad():
        for k in range(1, out.depth + 1):
            g = out.conductance(k)
            g.copy_(_quantize(g, bits, g_max))
    return out


def quantization_constraint(bits: int, g_max: float) -> Projection:
    """The quantisation as a parameter constraint (in place), for training a DRN whose devices have 2^bits levels in
    [0, g_max]: ``net.parameter_constraints`` can return it for the conductances. Plain SGD steps smaller than half a
    level are rounded away, so this trains only with large enough rates (or few bits' worth of precision)."""
    if not (isinstance(bits, int) and bits >= 1) or not g_max > 0:
        raise ConfigError(f"quantisation needs bits >= 1 and g_max > 0, got bits={bits!r}, g_max={g_max}")

    def project(g: Tensor) -> Tensor:
        return g.copy_(_quantize(g, bits, g_max))

    return project


def vary_conductances(net: DeepResistiveNetwork, sigma: float, seed: int = 0) -> DeepResistiveNetwork:
    """A copy with every conductance multiplied by exp(sigma eps), eps ~ N(0, 1) fixed per device (seeded)."""
    net = _check(net)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError(f"sigma (the relative device variation) must be >= 0, got {sigma}")
    out = copy.deepcopy(net)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k in range(1, out.depth + 1):
            g = out.conductance(k)
            noise = torch.randn(g.shape, generator=generator, dtype=torch.float64).to(g.dtype)
            g.mul_(torch.exp(sigma * noise))
    return out


def set_forward_voltage(net: DeepResistiveNetwork, forward_voltage: float) -> DeepResistiveNetwork:
    """A copy whose diodes conduct from ``forward_voltage`` volts on: excitatory units v >= -V_F, inhibitory
    v <= V_F (V_F = 0 is the ideal diode)."""
    net = _check(net)
    if not (math.isfinite(forward_voltage) and forward_voltage >= 0):
        raise ConfigError(f"the diode forward voltage must be >= 0 volts, got {forward_voltage}")
    out = copy.deepcopy(net)
    for k in range(1, out.depth):
        low, high = getattr(out, f"low{k}"), getattr(out, f"high{k}")
        low[torch.isfinite(low)] = -forward_voltage
        high[torch.isfinite(high)] = forward_voltage
    return out


def read_noise(outputs: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """The output voltages as a noisy measurement reads them: + N(0, sigma^2) volts."""
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError(f"the read-noise sigma must be >= 0 volts, got {sigma}")
    noise = torch.randn(outputs.shape, generator=generator, dtype=torch.float64).to(outputs.device, outputs.dtype)
    return outputs + sigma * noise
