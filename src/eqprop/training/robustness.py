"""How a trained deep resistive network's accuracy survives real devices (:mod:`eqprop.models.devices`): test error
against conductance bits, device variation, diode forward voltage and read noise; ``eqprop robustness RUN_DIR``."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch

from ..models.devices import quantize_conductances, read_noise, set_forward_voltage, vary_conductances
from ..models.resistive import DeepResistiveNetwork
from .trainer import Trainer, evaluate

__all__ = ["device_robustness", "plot_robustness"]


def _error(trainer: Trainer, network: Any, noise: float = 0.0, seed: int = 0) -> float:
    """Test error of ``network`` with the run's own inference (its free phase), outputs read with ``noise`` volts."""
    if noise == 0.0:
        res = evaluate(
            network, trainer.algorithm, trainer.data, trainer.device, flatten=trainer.flatten, dtype=trainer.dtype
        )
        return float(res["error"])
    images = trainer.data.normalized("test", flatten=trainer.flatten).tensors[0]
    labels = trainer.data.test_labels
    generator = torch.Generator().manual_seed(seed)
    wrong = 0
    network.eval()
    with torch.no_grad():
        for start in range(0, len(images), 512):
            x = images[start : start + 512].to(trainer.device, trainer.dtype)
            outputs = trainer.algorithm.free_phase(network, x).states[-1]
            wrong += int((read_noise(outputs, noise, generator).argmax(1).cpu() != labels[start : start + 512]).sum())
    return wrong / len(images)


def device_robustness(
    trainer: Trainer,
    bits: list[int],
    sigmas: list[float],
    forward_voltages: list[float],
    read_sigmas: list[float],
    draws: int = 5,
    log: Any = print,
) -> dict[str, Any]:
    """Test errors of the run's network: ideal; quantised to each of ``bits``; varied by each of ``sigmas``
    (``draws`` seeds each); with each diode forward voltage; with each read-noise sigma (``draws`` seeds)."""
    net = trainer.network
    if not isinstance(net, DeepResistiveNetwork):
        from ..errors import ConfigError

        raise ConfigError(f"robustness is measured for deep resistive networks (model=drn), got {type(net).__name__}")
    result: dict[str, Any] = {"ideal": _error(trainer, net)}
    log(f"ideal devices: test error {100 * result['ideal']:.2f}%")
    result["bits"] = {}
    for b in bits:
        result["bits"][b] = _error(trainer, quantize_conductances(net, b))
        log(f"{b}-bit conductances: {100 * result['bits'][b]:.2f}%")
    result["variation"] = {}
    for s in sigmas:
        errors = [_error(trainer, vary_conductances(net, s, seed)) for seed in range(draws)]
        result["variation"][s] = errors
        mean, spread = 100 * statistics.fmean(errors), 100 * _std(errors)
        log(f"variation sigma {100 * s:g}%: {mean:.2f}% +- {spread:.2f} ({draws} draws)")
    result["forward_voltage"] = {}
    for v in forward_voltages:
        result["forward_voltage"][v] = _error(trainer, set_forward_voltage(net, v))
        log(f"diode forward voltage {v:g} V: {100 * result['forward_voltage'][v]:.2f}%")
    result["read_noise"] = {}
    for s in read_sigmas:
        errors = [_error(trainer, net, s, seed) for seed in range(draws)]
        result["read_noise"][s] = errors
        log(f"read noise {s:g} V: {100 * statistics.fmean(errors):.2f}% +- {100 * _std(errors):.2f} ({draws} draws)")
    return result


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def plot_robustness(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Four panels of test error: against bits, variation sigma (mean and min-max over draws), forward voltage and
    read noise; the ideal network's error as a dashed line in each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = [
        ("bits", "conductance bits", False),
        ("variation", "device variation sigma (%)", True),
        ("forward_voltage", "diode forward voltage (V)", False),
        ("read_noise", "read noise sigma (V)", True),
    ]
    for ax, (key, label, drawn) in zip(axes, panels):
        items = sorted(result[key].items(), key=lambda kv: float(kv[0]))
        xs = [float(k) * (100 if key == "variation" else 1) for k, _ in items]
        if drawn:
            means = [100 * statistics.fmean(v) for _, v in items]
            ax.fill_between(xs, [100 * min(v) for _, v in items], [100 * max(v) for _, v in items], alpha=0.2)
            ax.plot(xs, means, marker="o", label="mean over draws (band: min-max)")
        else:
            ax.plot(xs, [100 * v for _, v in items], marker="o")
        ax.axhline(100 * result["ideal"], ls="--", color="0.4", label="ideal devices")
        ax.set(xlabel=label, ylabel="test error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return path
