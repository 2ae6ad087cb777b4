"""Costs and nudging: how the second-phase states are obtained from the free state.

- EP nudging adds beta * C(o, y) to the energy (paper eq. 4);
- CpL clamps the output to (1 - beta) o_* + beta y and relaxes the hidden layers (eq. 7);
- CL clamps the output to y, i.e. CpL with beta = 1 (eq. 2).

Holomorphic EP nudges with complex beta (a Python complex, or one value per sample as a tensor when phases are
batched); the costs' formulas are holomorphic in the output and in beta, so the same code serves. With a
:class:`~eqprop.core.readout.Readout` the cost reads the logits W o + b instead of the output state o.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .layers import Activation

__all__ = [
    "Cost",
    "SquaredError",
    "HalfSquaredError",
    "CrossEntropy",
    "COSTS",
    "NUDGED_OUTPUTS",
    "get_cost",
    "Nudge",
    "EPNudge",
    "ClampNudge",
    "one_hot",
    "cost_precision",
    "AugmentedNudge",
]


Beta = float | complex | Tensor  # a nudging value; a tensor holds one value per sample (batched complex phases)


def per_sample(beta: Beta, t: Tensor) -> Beta:
    """``beta`` shaped to broadcast against ``t`` (batch first): a 1-D tensor of per-sample values gets
    singleton axes; numbers are returned as they are."""
    if isinstance(beta, Tensor) and beta.dim() == 1:
        return beta.view(-1, *([1] * (t.dim() - 1)))
    return beta


def log_softmax(o: Tensor) -> Tensor:
    """log softmax over the units of each sample; complex outputs use the holomorphic formula o - logsumexp(o)
    (shifted by the largest real part, which cancels)."""
    o = o.flatten(1)
    if not o.is_complex():
        return torch.log_softmax(o, dim=1)
    shift = o.real.amax(1, keepdim=True).detach()
    return o - shift - torch.log(torch.exp(o - shift).sum(1, keepdim=True))


def softmax(o: Tensor) -> Tensor:
    """softmax over the units of each sample (holomorphic for complex outputs, as :func:`log_softmax`)."""
    return torch.exp(log_softmax(o))


def cost_precision(o: Tensor) -> Tensor:
    """The output in the precision a cost is computed in: a 16-bit output in float32; float32, float64 and
    complex outputs as they are (a float64 model keeps its gradients exact to float64)."""
    return o.float() if o.dtype in (torch.float16, torch.bfloat16) else o


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot code of integer labels (the target y of the squared error)."""
    if labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D tensor of class indices, got shape {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}], got range [{int(labels.min())}, {int(labels.max())}]"
        )
    return F.one_hot(labels.long(), num_classes).to(dtype)


NUDGED_OUTPUTS = ("exact", "iterate")


class Cost:
    """A cost C(o, y) per sample, with its gradient dC/do; ``y`` is a one-hot target.

    ``nudged_output`` says how a nudged phase updates the output: ``"exact"`` jumps to the exact minimiser of the
    nudged energy over o where the cost has a closed form (the squared errors), ``"iterate"`` takes the
    fixed-point step o <- sigma(dPhi/do - beta dC/do) (the comparative study's public code). Both have the same
    fixed points; the paths, and sometimes the fixed point reached, differ."""

    name = "cost"
    curvature: float | None = None  # c where C = c/2 ||o - y||^2 (the squared errors); None for other costs

    def __init__(self, nudged_output: str = "exact") -> None:
        if nudged_output not in NUDGED_OUTPUTS:
            raise ValueError(f"unknown nudged_output {nudged_output!r}; valid values are {list(NUDGED_OUTPUTS)}")
        self.nudged_output_mode = nudged_output

    @property
    def exact_output(self) -> bool:
        """Whether nudged phases jump to the exact output minimiser (where the cost has one)."""
        return self.nudged_output_mode == "exact"

    def check_iterate(self, beta: Beta) -> None:
        """The iterated output o <- m - beta dC/do is a contraction only while |beta| * curvature < 1."""
        if self.exact_output or self.curvature is None or not isinstance(beta, (int, float)):
            return
        if abs(beta) * self.curvature >= 1.0:
            raise ValueError(
                f"nudged_output='iterate' with the {self.name} needs |beta| < {1.0 / self.curvature:g} (the step "
                f"o <- m - beta dC/do diverges otherwise), got beta={beta}; use nudged_output='exact'"
            )

    def __call__(self, o: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def grad(self, o: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def nudged_output(self, m: Tensor, o: Tensor, y: Tensor, beta: Beta, sigma: Activation) -> Tensor:
        """Output update under the nudged energy E + beta*C. For C = c/2 ||o - y||^2 in exact mode on a projecting
        state space: the output's energy 1/2 o^2 - m o + beta c/2 (o - y)^2 is a separable 1-D quadratic with
        curvature 1 + c beta, so its exact minimiser is sigma((m + c beta y) / (1 + c beta)). Otherwise the step
        sigma(dPhi/do - beta dC/do), whose fixed point is the same."""
        if self.curvature is not None and self.exact_output and sigma.projection:
            c = self.curvature
            if isinstance(beta, (int, float)) and 1.0 + c * beta <= 0.0:
                raise ValueError(
                    f"beta={beta} makes E + beta*C unbounded below in o; the {self.name} nudging needs "
                    f"beta > {-1.0 / c:g}"
                )
            b = per_sample(beta, o)
            return sigma.project((m + c * b * y) / (1.0 + c * b))
        self.check_iterate(beta)
        return sigma.project(m - per_sample(beta, o) * self.grad(o, y))


class SquaredError(Cost):
    """C(o, y) = ||o - y||^2, the cost of the comparative study (section 3)."""

    name = "squared_error"
    curvature = 2.0

    def __call__(self, o: Tensor, y: Tensor) -> Tensor:
        return (o - y).flatten(1).pow(2).sum(1)

    def grad(self, o: Tensor, y: Tensor) -> Tensor:
        return 2.0 * (o - y)


class HalfSquaredError(Cost):
    """C(o, y) = 1/2 ||o - y||^2: the "MSE" of the PCN configs (the PCN paper does not state its normalisation;
    1/2, the convention of eq. 10's energy, is our reading) and the cost of the comparative study's public code."""

    name = "half_squared_error"
    curvature = 1.0

    def __call__(self, o: Tensor, y: Tensor) -> Tensor:
        return 0.5 * (o - y).flatten(1).pow(2).sum(1)

    def grad(self, o: Tensor, y: Tensor) -> Tensor:
        return o - y


class CrossEntropy(Cost):
    """C(o, y) = -sum_j y_j log softmax(o)_j: the output state o is read out through a softmax."""

    name = "cross_entropy"

    def __call__(self, o: Tensor, y: Tensor) -> Tensor:
        return -(y.flatten(1) * log_softmax(o)).sum(1)

    def grad(self, o: Tensor, y: Tensor) -> Tensor:
        return (softmax(o) - y.flatten(1)).view_as(o)


COSTS: dict[str, Callable[..., Cost]] = {
    "squared_error": SquaredError,
    "half_squared_error": HalfSquaredError,
    "cross_entropy": CrossEntropy,
}


def get_cost(name: str, nudged_output: str = "exact") -> Cost:
    """A cost by name (``nudged_output``: see :class:`Cost`); an unknown name lists the valid ones."""
    if name not in COSTS:
        raise ValueError(f"unknown cost {name!r}; valid costs are {sorted(COSTS)}")
    return COSTS[name](nudged_output)


class Nudge:
    """What a nudged phase changes: the output update and the extra energy term; a nudge may also push
    hidden layers (``hidden_layers``, ``layer_force``), as intermediate learning signals do."""

    clamps_output = False
    hidden_layers: frozenset = frozenset()

    def layer_force(self, k: int, s: Tensor) -> Tensor:
        """d(extra energy)/ds_k for a hidden layer k in ``hidden_layers``; subtracted from dPhi/ds_k."""
        raise NotImplementedError(f"{type(self).__name__} does not act on hidden layers")

    def hidden_energy(self, states: list[Tensor]) -> Tensor:
        """Per-sample extra energy from the hidden layers (0 unless ``hidden_layers``)."""
        return torch.zeros(states[-1].shape[0], dtype=states[-1].dtype, device=states[-1].device)

    def output_update(self, m: Tensor | None, o: Tensor, sigma: Activation) -> Tensor:
        raise NotImplementedError

    def capture_key(self) -> tuple:
        """What a captured (CUDA-graph) phase bakes in: phases with equal keys can share one graph."""
        raise NotImplementedError(f"{type(self).__name__} does not support captured phases")

    @property
    def tensor(self) -> Tensor:
        """The per-step data a captured phase copies in before each replay (target or clamp value)."""
        raise NotImplementedError(f"{type(self).__name__} does not support captured phases")

    def with_tensor(self, tensor: Tensor) -> Nudge:
        """The same nudge reading ``tensor`` instead (the static buffer of a captured phase)."""
        raise NotImplementedError(f"{type(self).__name__} does not support captured phases")

    def extra_energy(self, o: Tensor) -> Tensor:
        """Per-sample term added to E in this phase (beta * C for EP, 0 for clamping)."""
        return torch.zeros(o.shape[0], dtype=o.dtype, device=o.device)


@dataclass
class EPNudge(Nudge):
    """EP nudging: minimise E + beta * C(o, y) (eq. 4); with a ``readout``, E + beta * C(W o + b, y)."""

    cost: Cost
    y: Tensor
    beta: Beta
    readout: Any = None  # a Readout (core/readout.py) or None: the cost reads the output state itself

    def output_update(self, m: Tensor | None, o: Tensor, sigma: Activation) -> Tensor:
        if m is None:
            raise ValueError("EP nudging updates the output from its incoming message; got none")
        if isinstance(self.beta, (int, float)) and self.beta == 0.0:
            return sigma.project(m)
        if self.readout is not None:  # the force -beta W^T dC/dlogits on the last layer
            logits = self.readout(o)
            force = self.readout.transpose(self.cost.grad(logits, self.y.to(logits.real.dtype)))
            return sigma.project(m - per_sample(self.beta, o) * force)
        return self.cost.nudged_output(m, o, self.y.to(m.real.dtype), self.beta, sigma)

    def extra_energy(self, o: Tensor) -> Tensor:
        out = o if self.readout is None else self.readout(o)
        return self.beta * self.cost(out, self.y.to(out.real.dtype))

    def capture_key(self) -> tuple:
        if isinstance(self.beta, Tensor):
            raise ValueError("a phase with per-sample nudging values cannot be captured as a CUDA graph")
        return ("ep", self.beta, type(self.cost).__name__, self.cost.exact_output, self.readout is not None)

    @property
    def tensor(self) -> Tensor:
        return self.y

    def with_tensor(self, tensor: Tensor) -> EPNudge:
        return EPNudge(self.cost, tensor, self.beta, self.readout)


@dataclass
class ClampNudge(Nudge):
    """Clamp the output to ``target`` and relax the hidden layers only (CpL eq. 7, CL eq. 2)."""

    target: Tensor
    clamps_output = True

    def output_update(self, m: Tensor | None, o: Tensor, sigma: Activation) -> Tensor:
        return self.target.to(o.dtype)

    def capture_key(self) -> tuple:
        return ("clamp",)

    @property
    def tensor(self) -> Tensor:
        return self.target

    def with_tensor(self, tensor: Tensor) -> ClampNudge:
        return ClampNudge(tensor)

    @staticmethod
    def coupled(o_free: Tensor, y: Tensor, beta: float) -> ClampNudge:
        """CpL target (1 - beta) o_* + beta y; beta = 1 gives contrastive learning's clamp to y."""
        return ClampNudge((1.0 - beta) * o_free + beta * y.to(o_free.dtype))


@dataclass
class AugmentedNudge(Nudge):
    """EP nudging of the output plus, on each signalled layer, the force beta * kappa * dL_Aug/ds (eq. 10 of the
    scalable-EP paper); the signals are :class:`~eqprop.rules.signals.IntermediateSignal` objects or any with the
    same ``layer``, ``loss`` and ``grad``."""

    base: EPNudge
    signals: Sequence[Any]  # objects with .layer, .loss(s, t), .grad(s, t)
    targets: Sequence[Tensor]  # one per signal: labels (LE) or teacher features (KD)
    kappa: float
    hidden_layers: frozenset = field(init=False)

    def __post_init__(self) -> None:
        if len(self.signals) != len(self.targets):
            raise ValueError(f"one target per signal: {len(self.signals)} signals, {len(self.targets)} targets")
        self.hidden_layers = frozenset(s.layer for s in self.signals)

    def output_update(self, m: Tensor | None, o: Tensor, sigma: Activation) -> Tensor:
        return self.base.output_update(m, o, sigma)

    def extra_energy(self, o: Tensor) -> Tensor:
        return self.base.extra_energy(o)

    def layer_force(self, k: int, s: Tensor) -> Tensor:
        force = torch.zeros_like(s)
        for sig, target in zip(self.signals, self.targets):
            if sig.layer == k:
                force = force + sig.grad(s, target)
        return (self.base.beta * self.kappa) * force

    def hidden_energy(self, states: Sequence[Tensor]) -> Tensor:
        e = torch.zeros(states[0].shape[0], dtype=states[-1].dtype, device=states[-1].device)
        for sig, target in zip(self.signals, self.targets):
            e = e + sig.loss(states[sig.layer], target)
        return (self.base.beta * self.kappa) * e
