"""Optimiser and scheduler: SGD with momentum, weight decay, per-layer learning rates (Table 5, "lr conv-weight k &
bias k"; biases separately where asked), and a per-epoch schedule: cosine annealing (T_max, eta_min) or the
resistive-network papers' exponential decay."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.constraints import constrain_optimizer
from ..errors import ConfigError
from ..models.base import LayeredModel
from ..settings import Section, check_choice, setting

__all__ = ["make_optimizer", "make_scheduler", "layer_rates", "OptimSection", "LR_SCHEDULES"]


def make_optimizer(
    network: LayeredModel,
    lrs: float | Sequence[float],
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    decoupled: bool = False,
    bias_lrs: float | Sequence[float] | None = None,
) -> torch.optim.SGD:
    """SGD with one parameter group per entry of ``network.layer_parameters()`` (for an energy network:
    layer k = 1..L, the weights into layer k and its bias). ``decoupled``: the weight decay shrinks the
    parameters, theta <- (1 - lr wd) theta, before each step instead of entering the momentum as wd theta
    (the holomorphic-EP code's SGD). ``bias_lrs``: the rates of each layer's biases (its 1-D parameters), which
    then form groups of their own after the weights' groups (the fast-DRN code's DRN-3H); None: the layer's rate.
    A model that declares ``parameter_constraints`` (a DRN's g >= 0) has them restored after every step."""
    groups = network.layer_parameters()
    lrs = layer_rates(lrs, len(groups))
    if bias_lrs is None:
        param_groups = [{"params": g, "lr": lr} for g, lr in zip(groups, lrs) if g]
    else:
        blrs = layer_rates(bias_lrs, len(groups))
        weights = [{"params": [p for p in g if p.dim() != 1], "lr": lr} for g, lr in zip(groups, lrs)]
        biases = [{"params": [p for p in g if p.dim() == 1], "lr": lr} for g, lr in zip(groups, blrs)]
        param_groups = [group for group in weights + biases if group["params"]]
    coupled = 0.0 if decoupled else weight_decay
    fused = all(_fusable(p) for group in groups for p in group) or None
    opt = torch.optim.SGD(
        param_groups, lr=lrs[0], momentum=momentum, weight_decay=coupled, nesterov=nesterov, fused=fused
    )
    constrain_optimizer(opt, network)
    if decoupled and weight_decay:

        def shrink(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
            with torch.no_grad():
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        p.mul_(1.0 - group["lr"] * weight_decay)

        opt.register_step_pre_hook(shrink)
    return opt


def _fusable(p: torch.Tensor) -> bool:
    """PyTorch's fused SGD (one kernel per step for momentum, decay and update: each parameter's memory is passed
    over once, not three times; benchmarks/optimizer_step.py) takes real floating dense tensors on the CPU or a
    CUDA device."""
    floating = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    return p.dtype in floating and p.device.type in ("cpu", "cuda") and p.layout == torch.strided


def layer_rates(lrs: float | Sequence[float], groups: int) -> list[float]:
    """One learning rate per layer group: a single value (or one-element list) applies to every group."""
    rates = [float(lrs)] if isinstance(lrs, (int, float)) else [float(lr) for lr in lrs]
    if len(rates) == 1:
        rates = rates * groups
    if len(rates) != groups:
        raise ValueError(
            f"expected {groups} learning rates (lrs), one per layer group of this network (a "
            f"Hopfield net: each non-input layer; an HSSM: each unit, then the readout), got {len(rates)}"
        )
    if any(lr < 0 for lr in rates):
        raise ValueError(f"learning rates must be >= 0, got {rates}")
    return rates


LR_SCHEDULES = ("cosine", "exponential", "constant")


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    t_max: int,
    eta_min: float = 2e-6,
    eta_min_ratio: float | None = None,
    kind: str = "cosine",
    gamma: float = 0.99,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning-rate schedule. ``cosine``: annealing over ``t_max`` epochs of every group's rate down
    to ``eta_min``, or, with ``eta_min_ratio`` = r, of each group's rate lr_g down to r lr_g (the holomorphic-EP
    code's schedule): lr_g(t) = lr_g (r + (1 - r) (1 + cos(pi t / t_max)) / 2). ``exponential``: lr_g gamma^t (the
    resistive-network papers: gamma = 0.99). ``constant``: lr_g."""
    if kind not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {kind!r}; valid schedules are {list(LR_SCHEDULES)}")
    if kind == "exponential":
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {gamma}")
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)
    t_max = max(1, int(t_max))
    if eta_min_ratio is None:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=eta_min)
    r = float(eta_min_ratio)
    if not 0 <= r <= 1:
        raise ValueError(f"eta_min_ratio must lie in [0, 1], got {r}")

    def factor(t: int) -> float:
        return r + (1 - r) * (1 + math.cos(math.pi * min(t, t_max) / t_max)) / 2

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class OptimSection(Section):
    """The ``optim`` section: SGD with momentum, per-layer rates, weight decay, cosine annealing (Table 5)."""

    name: ClassVar[str] = "optim"
    lrs: list[float] = setting([0.1, 0.06, 0.04, 0.02], "learning rate per layer group (one value: every group)")
    momentum: float = setting(0.9, "SGD momentum")
    nesterov: bool = setting(False, "Nesterov momentum")
    weight_decay: float = setting(3e-4, "L2 weight decay")
    decoupled_weight_decay: bool = setting(False, "shrink theta by (1 - lr wd) per step, outside the momentum")
    epochs: int = setting(20, "training epochs (also the cosine schedule's T_max)")
    batch_size: int = setting(64, "mini-batch size")
    eta_min: float = setting(2e-6, "final learning rate of the cosine schedule")
    eta_min_ratio: float | None = setting(None, "end each group's cosine at this fraction of its rate; null: eta_min")
    lr_schedule: str = setting("cosine", "per-epoch learning rates: cosine, exponential (x gamma) or constant")
    gamma: float = setting(0.99, "lr_schedule=exponential: the factor per epoch")
    bias_lrs: list[float] | None = setting(
        None, "learning rate of each layer's biases (one value: every layer); null: the layer's rate (lrs)"
    )

    def validate(self) -> None:
        self.lr_schedule = check_choice("lr_schedule", self.lr_schedule, list(LR_SCHEDULES))
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"config key 'gamma' must lie in (0, 1], got {self.gamma}")
        if self.bias_lrs is not None and (not self.bias_lrs or min(self.bias_lrs) < 0):
            raise ConfigError(f"config key 'bias_lrs' must be null or list learning rates >= 0, got {self.bias_lrs}")
        self.at_least(1, "epochs", "batch_size")
        self.at_least(0, "momentum", "weight_decay", "eta_min")
        if self.eta_min_ratio is not None and not 0 <= self.eta_min_ratio <= 1:
            raise ConfigError(f"config key 'eta_min_ratio' must be null or lie in [0, 1], got {self.eta_min_ratio}")
        if not self.lrs or min(self.lrs) < 0:
            raise ConfigError(f"config key 'lrs' must list learning rates >= 0, got {self.lrs}")
