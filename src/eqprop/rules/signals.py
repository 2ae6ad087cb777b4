"""Intermediate learning signals for deep CRNNs (scalable-EP paper, section 3.2, eqs. 7-10 and 14).

In the nudged phases the primitive function becomes Phi_Aug = Phi - beta (L_EP + kappa sum_i L_Aug,i) (eq. 10),
so a signalled layer i relaxes by s_i <- sigma(dPhi/ds_i - beta kappa dL_Aug,i/ds_i). With centered EP the
estimate then approaches d(L_EP + kappa sum_i L_Aug,i)/dtheta at the free state (Theorem 3.2, eq. 12).

- :class:`LocalError` (LE, eq. 7): a fixed random readout B_i s_i compared with the label at temperature tau.
- :class:`KnowledgeDistillation` (KD, eq. 8): the layer's state compared with a teacher's features at tau.
- :class:`WeightedKnowledgeDistillation` (KDW, eq. 13): KD through a learned linear map (appendix G).
- :class:`~eqprop.core.nudging.AugmentedNudge` (core): EP nudging at the output plus the signals' forces.
- :func:`kappa_schedule`: constant, linear, exponential and cosine schedules of kappa (eq. 14).

A new signal is an :class:`IntermediateSignal` subclass with ``loss`` (and, for speed, ``grad``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..core.nudging import AugmentedNudge
from ..settings import Section, check_choice, setting

__all__ = [
    "soft_target_loss",
    "IntermediateSignal",
    "LocalError",
    "KnowledgeDistillation",
    "WeightedKnowledgeDistillation",
    "AugmentedNudge",
    "kappa_schedule",
    "KAPPA_SCHEDULES",
]


def soft_target_loss(logits: Tensor, target_logits: Tensor, tau: float, target_is_distribution: bool = False) -> Tensor:
    """Per-sample soft-target loss tau^2 * CE(p, softmax(z/tau)) over flattened features with p = softmax(t/tau)
    (Hinton et al.'s distillation loss; the tau^2 keeps gradient magnitudes comparable across tau), or p = t
    itself when ``target_is_distribution`` (e.g. one-hot labels)."""
    z, t = logits.flatten(1), target_logits.flatten(1).to(logits.dtype)
    p = t if target_is_distribution else torch.softmax(t / tau, dim=1)
    return -(tau**2) * (p * torch.log_softmax(z / tau, dim=1)).sum(1)


def _soft_target_grad(
    logits: Tensor, target_logits: Tensor, tau: float, target_is_distribution: bool = False
) -> Tensor:
    """d soft_target_loss / d logits = tau (softmax(z/tau) - p)."""
    z, t = logits.flatten(1), target_logits.flatten(1).to(logits.dtype)
    p = t if target_is_distribution else torch.softmax(t / tau, dim=1)
    return (tau * (torch.softmax(z / tau, dim=1) - p)).view_as(logits)


class IntermediateSignal(nn.Module):
    """L_Aug at one layer: ``loss(s, target)`` per sample, ``grad`` its derivative in s (autograd default).
    A signal's own parameters (KDW's map) are learned by the same EP contrast as the network's."""

    def __init__(self, layer: int, tau: float = 4.0) -> None:
        super().__init__()
        if layer < 1:
            raise ValueError(f"a signal needs a free layer index >= 1, got {layer}")
        if not tau > 0:
            raise ValueError(f"the temperature tau must be > 0, got {tau}")
        self.layer, self.tau = int(layer), float(tau)

    def target(self, x: Tensor, y: Tensor) -> Tensor:
        """The pseudo-target of this batch (input x, one-hot labels y)."""
        raise NotImplementedError

    def loss(self, s: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def grad(self, s: Tensor, target: Tensor) -> Tensor:
        with torch.enable_grad():
            v = s.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.loss(v, target).sum(), v)
        return g


class LocalError(IntermediateSignal):
    """LE (eq. 7): L = soft_target(B s / tau, y / tau) with a fixed random readout B (classes x layer size)
    and the one-hot label y as pseudo-target. With ``soft_labels=False`` the target distribution is y itself
    instead of softmax(y / tau): at tau = 4, softmax(y / tau) is nearly uniform (0.13 vs 0.10 for 10 classes),
    so the paper's form mostly pulls the readout towards zero."""

    def __init__(
        self,
        layer: int,
        layer_shape: Sequence[int],
        num_classes: int,
        tau: float = 4.0,
        generator: torch.Generator | None = None,
        soft_labels: bool = True,
    ) -> None:
        super().__init__(layer, tau)
        self.soft_labels = bool(soft_labels)
        fan_in = math.prod(layer_shape)
        bound = 1.0 / math.sqrt(fan_in)  # Kaiming-uniform-like scale for a fixed readout
        self.register_buffer("readout", (torch.rand(num_classes, fan_in, generator=generator) * 2 - 1) * bound)

    readout: Tensor

    def target(self, x, y):
        return y

    def logits(self, s: Tensor) -> Tensor:
        return s.flatten(1) @ self.readout.to(s.dtype).t()

    def loss(self, s, target):
        return soft_target_loss(self.logits(s), target, self.tau, not self.soft_labels)

    def grad(self, s, target):
        g = _soft_target_grad(self.logits(s), target, self.tau, not self.soft_labels)
        return (g @ self.readout.to(s.dtype)).view_as(s)


class KnowledgeDistillation(IntermediateSignal):
    """KD (eq. 8): L = soft_target(s / tau, t / tau) between the layer's state and a teacher's features of the
    same shape (the teacher's output at the end of the matching conv block). ``teacher(x)`` returns those
    features for a batch (e.g. a forward hook on a backprop-trained network)."""

    def __init__(self, layer: int, teacher: Callable[[Tensor], Tensor], tau: float = 4.0) -> None:
        super().__init__(layer, tau)
        self._teacher = (teacher,)  # a tuple: a teacher nn.Module is not a submodule (its weights stay its own)

    def target(self, x, y):
        with torch.no_grad():
            return self._teacher[0](x)

    def loss(self, s, target):
        if target.shape != s.shape:
            raise ValueError(
                f"KD at layer {self.layer}: teacher features {tuple(target.shape)} do not match the "
                f"layer's state {tuple(s.shape)}"
            )
        return soft_target_loss(s, target, self.tau)

    def grad(self, s, target):
        return _soft_target_grad(s, target, self.tau)


class WeightedKnowledgeDistillation(KnowledgeDistillation):
    """KDW (eq. 13): L = soft_target(w_map s / tau, t / tau) with a learned linear map w_map, initialised to the
    identity. On image-shaped layers w_map mixes channels at each position (a 1x1 convolution, C x C weights);
    on vector layers it is a dense n x n matrix. Its update is the EP contrast of appendix G (eq. 20)."""

    def __init__(
        self, layer: int, layer_shape: Sequence[int], teacher: Callable[[Tensor], Tensor], tau: float = 4.0
    ) -> None:
        super().__init__(layer, teacher, tau)
        self.w_map = nn.Parameter(torch.eye(layer_shape[0]))
        self.spatial = len(layer_shape) == 3

    def mapped(self, s: Tensor) -> Tensor:
        w = self.w_map.to(s.dtype)
        return torch.einsum("oc,bchw->bohw", w, s) if self.spatial else s @ w.t()

    def loss(self, s, target):
        return super().loss(self.mapped(s), target)

    def grad(self, s, target):
        g = _soft_target_grad(self.mapped(s), target, self.tau)
        w = self.w_map.to(s.dtype)
        return torch.einsum("oc,bohw->bchw", w, g) if self.spatial else g @ w


# ---- kappa schedules (eq. 14) --------------------------------------------------------------------------------
KAPPA_SCHEDULES = ("constant", "linear", "exponential", "cosine")


def kappa_schedule(
    kind: str, epoch: int, total: int, kappa_init: float, kappa_min: float = 0.0, gamma: float = 0.1
) -> float:
    """kappa at ``epoch`` (0-based) of ``total`` (eq. 14): constant; linear kappa_init (1 - E/E_total);
    exponential kappa_init exp(-gamma E); cosine kappa_min + (kappa_init - kappa_min)(1 + cos(pi E/E_total))/2."""
    if kind not in KAPPA_SCHEDULES:
        raise ValueError(f"unknown kappa schedule {kind!r}; valid ones are {list(KAPPA_SCHEDULES)}")
    if total < 1 or epoch < 0:
        raise ValueError(f"need total >= 1 and epoch >= 0, got epoch={epoch}, total={total}")
    if kind == "constant":
        return kappa_init
    if kind == "linear":
        return kappa_init - kappa_init * epoch / total
    if kind == "exponential":
        return kappa_init * math.exp(-gamma * epoch)
    return kappa_min + 0.5 * (kappa_init - kappa_min) * (1.0 + math.cos(math.pi * epoch / total))


# ---- config section ----------------------------------------------------------------------------------------
SIGNAL_KINDS = ("none", "le", "kd", "kdw")


@dataclass
class SignalsSection(Section):
    """The ``signals`` section: intermediate learning signals of the scalable-EP paper (with P-/N-/C-EP)."""

    name: ClassVar[str] = "signals"
    kind: str = setting("none", "none, le (local error), kd (knowledge distillation), kdw (KD with learned maps)")
    signal_layers: list[int] | None = setting(None, "signalled layers; null: LE on block ends 2.., KD on all ends")
    kappa: float = setting(0.5, "signal strength kappa_init (eq. 9)")
    kappa_min: float = setting(0.0, "the cosine schedule's final kappa")
    kappa_schedule: str = setting("cosine", "constant, linear, exponential or cosine (eq. 14)")
    kappa_gamma: float = setting(0.02, "the exponential schedule's decay")
    tau: float = setting(4.0, "soft-target temperature")
    le_soft_labels: bool = setting(True, "LE target softmax(y / tau) as in eq. 7; false: the one-hot label")
    teacher: str | None = setting(None, "KD teacher weights (teacher.pt of an earlier run); null: train one", path=True)
    teacher_epochs: int = setting(10, "epochs of the KD teacher's backprop training")

    def validate(self) -> None:
        self.kind = check_choice("signals", self.kind, list(SIGNAL_KINDS))
        self.kappa_schedule = check_choice("kappa_schedule", self.kappa_schedule, list(KAPPA_SCHEDULES))
        self.at_least(0, "kappa", "kappa_min", "kappa_gamma")
        self.at_least(1, "teacher_epochs")
        self.positive("tau")
