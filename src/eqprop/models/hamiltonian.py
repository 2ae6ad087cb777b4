"""Hamiltonian recurrent units (HRUs), their reversible integrator, and stacks of them (HSSMs).

An HRU is a state Phi = (phi, pi) (position, momentum) with a separable Hamiltonian
H(phi, pi, u_k) = T(pi) + V(phi, u_k; theta), T(pi) = 1/2 ||pi||^2, driven by one input u_k per step.
T and V are invariant under the momentum flip pi -> -pi, so the leapfrog map below is time-reversible:
flipping the momenta and running the same map on the reversed inputs retraces the trajectory
(the "echo" that Hamiltonian echo learning uses, see :mod:`eqprop.echo_learning` and docs/rhel.md).

A new unit type is one :class:`HamiltonianUnit` subclass defining ``potential`` (and, for speed, ``force``),
registered with ``@register_hru("name")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..settings import Section, check_choice, register_section, setting
from .base import image_input, register_model

__all__ = [
    "HamiltonianUnit",
    "LinearHRU",
    "NonlinearHRU",
    "HRU_TYPES",
    "register_hru",
    "get_hru",
    "leapfrog_step",
    "euler_step",
    "INTEGRATORS",
    "HamiltonianSSM",
    "sequence_from_images",
    "FF_ACTIVATIONS",
]


class HamiltonianUnit(nn.Module):
    """An HRU: H = 1/2 ||pi||^2 + V(phi, u); subclasses define the per-sample potential V."""

    def __init__(self, input_size: int, size: int) -> None:
        super().__init__()
        if input_size < 1 or size < 1:
            raise ValueError(f"an HRU needs input_size >= 1 and size >= 1, got {input_size} and {size}")
        self.input_size, self.size = int(input_size), int(size)

    def potential(self, phi: Tensor, u: Tensor) -> Tensor:
        """V(phi, u; theta) per sample, shape (B,)."""
        raise NotImplementedError

    def force(self, phi: Tensor, u: Tensor) -> Tensor:
        """dV/dphi (autograd by default; built-in units give it in closed form)."""
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            p = phi if phi.requires_grad else phi.detach().requires_grad_(True)
            (f,) = torch.autograd.grad(self.potential(p, u).sum(), p, create_graph=create)
        return f

    def weighted_grads(
        self, phi: Tensor, u: Tensor, weight: Tensor, want_u: bool = True
    ) -> tuple[list[Tensor | None], Tensor | None]:
        """d/dtheta and d/du (per sample) of sum_b weight_b V(phi_b, u_b): RHEL's contrast in one call
        (autograd by default; built-in units give it in closed form). Gradients in ``parameters()`` order."""
        params = list(self.parameters())
        with torch.enable_grad():
            u_var = u.detach().requires_grad_(want_u)
            total = (weight * self.potential(phi.detach(), u_var)).sum()
            grads = torch.autograd.grad(total, params + ([u_var] if want_u else []), allow_unused=True)
        return list(grads[: len(params)]), (grads[-1] if want_u else None)

    def hamiltonian(self, phi: Tensor, pi: Tensor, u: Tensor) -> Tensor:
        """H(phi, pi, u) per sample."""
        return 0.5 * pi.pow(2).sum(1) + self.potential(phi, u)

    def init_state(self, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """The initial state Phi_0 = (0, 0)."""
        z = like.new_zeros(batch, self.size)
        return z, z.clone()

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, size={self.size}"


HRU_TYPES: dict[str, type[HamiltonianUnit]] = {}


def register_hru(name: str) -> Callable[[type[HamiltonianUnit]], type[HamiltonianUnit]]:
    """Class decorator: make an HRU type available to :class:`HamiltonianSSM` and configs by name."""

    def deco(cls: type[HamiltonianUnit]) -> type[HamiltonianUnit]:
        HRU_TYPES[name] = cls
        return cls

    return deco


def get_hru(name: str) -> type[HamiltonianUnit]:
    try:
        return HRU_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown HRU type {name!r}; valid types are {sorted(HRU_TYPES)}") from None


@register_hru("linear")
class LinearHRU(HamiltonianUnit):
    """Linear HRU: V = 1/2 phi^T A phi - phi^T B u with A = diag(a) positive (a = exp(log_a)).

    Each unit is a harmonic oscillator of angular frequency sqrt(a_i) driven by (B u)_i; ``a`` is drawn
    uniformly in ``a_range`` (leapfrog is stable while dt * sqrt(a_i) < 2).
    """

    def __init__(self, input_size: int, size: int, a_range: tuple[float, float] = (0.1, 1.0)) -> None:
        super().__init__(input_size, size)
        self.log_a = nn.Parameter(torch.empty(size).uniform_(*a_range).log())
        self.B = nn.Parameter(torch.randn(size, input_size).div_(math.sqrt(input_size)))

    @property
    def a(self) -> Tensor:
        return self.log_a.exp()

    def potential(self, phi, u):
        return 0.5 * (self.a * phi.pow(2)).sum(1) - (phi * F.linear(u, self.B)).sum(1)

    def force(self, phi, u):
        return self.a * phi - F.linear(u, self.B)

    def weighted_grads(self, phi, u, weight, want_u=True):
        w = weight.unsqueeze(1)
        d_log_a = 0.5 * self.a * (w * phi.pow(2)).sum(0)  # dV/dlog_a = a phi^2 / 2
        d_B = -(w * phi).t() @ u  # dV/dB = -phi u^T
        return [d_log_a, d_B], (-(w * phi) @ self.B if want_u else None)


def _log_cosh(z: Tensor) -> Tensor:
    """log cosh z without overflow: |z| + log(1 + exp(-2|z|)) - log 2."""
    a = z.abs()
    return a + torch.log1p(torch.exp(-2.0 * a)) - math.log(2.0)


@register_hru("nonlinear")
class NonlinearHRU(HamiltonianUnit):
    """Nonlinear HRU: V = alpha/2 ||phi||^2 + sum_i log cosh(a_i phi_i + (B u + b)_i) / a_i, A = diag(a).

    The force is alpha phi + tanh(a phi + B u + b): a restoring spring plus a saturating, input-driven term.
    """

    def __init__(
        self, input_size: int, size: int, alpha: float = 1.0, a_range: tuple[float, float] = (0.5, 1.5)
    ) -> None:
        super().__init__(input_size, size)
        self.alpha = float(alpha)
        self.a = nn.Parameter(torch.empty(size).uniform_(*a_range))
        self.B = nn.Parameter(torch.randn(size, input_size).div_(math.sqrt(input_size)))
        self.b = nn.Parameter(torch.zeros(size))

    def potential(self, phi, u):
        z = self.a * phi + F.linear(u, self.B, self.b)
        return 0.5 * self.alpha * phi.pow(2).sum(1) + (_log_cosh(z) / self.a).sum(1)

    def force(self, phi, u):
        return self.alpha * phi + torch.tanh(self.a * phi + F.linear(u, self.B, self.b))

    def weighted_grads(self, phi, u, weight, want_u=True):
        z = self.a * phi + F.linear(u, self.B, self.b)
        t = torch.tanh(z) / self.a  # dV/dz_i = tanh(z_i) / a_i
        w = weight.unsqueeze(1)
        wt = w * t
        d_a = (w * (torch.tanh(z) * phi / self.a - _log_cosh(z) / self.a.pow(2))).sum(0)
        return [d_a, wt.t() @ u, wt.sum(0)], (wt @ self.B if want_u else None)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha}"


# ---- integrators -------------------------------------------------------------------------------------------
Step = Callable[[HamiltonianUnit, Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor, Tensor]]


def leapfrog_step(
    unit: HamiltonianUnit, phi: Tensor, pi: Tensor, u: Tensor, dt: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Drift-kick-drift: phi' = phi + dt/2 pi; pi' = pi - dt dV/dphi(phi', u); phi'' = phi' + dt/2 pi'.

    Returns (phi'', pi', phi') -- the last is the half-step position where the force (and RHEL's
    parameter gradient) is evaluated. The map is symplectic and exactly time-reversible.
    """
    half = phi + 0.5 * dt * pi
    pi = pi - dt * unit.force(half, u)
    return half + 0.5 * dt * pi, pi, half


def euler_step(unit: HamiltonianUnit, phi: Tensor, pi: Tensor, u: Tensor, dt: float) -> tuple[Tensor, Tensor, Tensor]:
    """Symplectic Euler with the force at the old position: NOT time-reversible (the flipped run does not
    retrace it), so Hamiltonian echo learning is biased with it. Kept as the negative control of the tests."""
    pi = pi - dt * unit.force(phi, u)
    return phi + dt * pi, pi, phi


INTEGRATORS: dict[str, Step] = {"leapfrog": leapfrog_step, "euler": euler_step}


def sequence_from_images(x: Tensor) -> Tensor:
    """Images (B, C, H, W) read row by row: a time-major sequence (H, B, C*W)."""
    if x.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    return x.permute(2, 0, 1, 3).reshape(h, b, c * w)


FF_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "relu": F.relu,
    "gelu": F.gelu,
    "identity": lambda t: t,
}


class HamiltonianSSM(nn.Module):
    """A Hamiltonian state-space model: HRUs stacked with feedforward maps and a linear readout.

    Unit 1 reads the input sequence u^1_k = x_k; unit i+1 reads u^{i+1}_k = act(W_i phi^i_{k+1} + c_i) (the
    position after step k of the unit below); the readout is o_k = W_o phi^M_{k+1} + c_o. Inputs are
    time-major sequences (T, B, d) or images (B, C, H, W), read row by row.
    """

    def __init__(
        self,
        input_size: int,
        sizes: Sequence[int],
        num_classes: int,
        hru: str = "nonlinear",
        dt: float = 0.1,
        ff_activation: str = "tanh",
        integrator: str = "leapfrog",
        **hru_kwargs,
    ) -> None:
        super().__init__()
        if not sizes:
            raise ValueError("an HSSM needs at least one HRU: sizes must be a non-empty list of unit sizes")
        if not (dt > 0 and math.isfinite(dt)):
            raise ValueError(f"the time step dt must be a positive number, got {dt}")
        if ff_activation not in FF_ACTIVATIONS:
            raise ValueError(f"unknown ff_activation {ff_activation!r}; valid ones are {sorted(FF_ACTIVATIONS)}")
        if integrator not in INTEGRATORS:
            raise ValueError(f"unknown integrator {integrator!r}; valid ones are {sorted(INTEGRATORS)}")
        cls = get_hru(hru)
        self.dt, self.num_classes, self.hru, self.integrator = float(dt), int(num_classes), hru, integrator
        self.ff_activation = ff_activation
        ins = [input_size] + list(sizes[:-1])
        # ModuleLists (registered submodules), typed as the sequences they are
        self.units = cast(
            "Sequence[HamiltonianUnit]", nn.ModuleList(cls(i, s, **hru_kwargs) for i, s in zip(ins, sizes))
        )
        self.ff = cast("Sequence[nn.Linear]", nn.ModuleList(nn.Linear(s, s) for s in sizes[:-1]))
        self.readout = nn.Linear(sizes[-1], num_classes)

    def layer_parameters(self) -> list[list[nn.Parameter]]:
        """Parameter groups for per-layer learning rates: unit 1; feedforward map i and unit i+1; the readout."""
        groups = [list(self.units[0].parameters())]
        for ff, unit in zip(self.ff, self.units[1:]):
            groups.append(list(ff.parameters()) + list(unit.parameters()))
        return groups + [list(self.readout.parameters())]

    @property
    def step_fn(self) -> Step:
        return INTEGRATORS[self.integrator]

    def as_sequence(self, x: Tensor) -> Tensor:
        seq = sequence_from_images(x) if x.dim() == 4 else x
        if seq.dim() != 3 or seq.shape[-1] != self.units[0].input_size:
            raise ValueError(
                f"expected a sequence (T, B, {self.units[0].input_size}) or images whose rows have "
                f"{self.units[0].input_size} values, got shape {tuple(x.shape)}"
            )
        return seq

    def feedforward(self, i: int, phis: Tensor) -> Tensor:
        """The input sequence of unit i+1 from the positions of unit i."""
        return FF_ACTIVATIONS[self.ff_activation](self.ff[i](phis))

    def run_unit(self, i: int, inputs: Tensor, record: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Integrate unit i over ``inputs`` (T, B, d) from rest; returns (phi_T, pi_T, positions (T, B, n) or None)."""
        unit = self.units[i]
        phi, pi = unit.init_state(inputs.shape[1], inputs)
        phis = []
        for u in inputs:
            phi, pi, _ = self.step_fn(unit, phi, pi, u, self.dt)
            if record:
                phis.append(phi)
        return phi, pi, torch.stack(phis) if record else None

    def trajectory(self, seq: Tensor) -> Iterator[tuple[int, list[tuple[Tensor, Tensor]]]]:
        """The forward pass of the stack, one step at a time: after step k, every unit's (phi, pi), bottom up
        (unit i+1 reads ff_i of unit i's new position). The one forward pass the readout, BPTT and both RHEL
        echoes run; the yielded list is updated in place at the next step."""
        states = [unit.init_state(seq.shape[1], seq) for unit in self.units]
        for k, u in enumerate(seq):
            for i, unit in enumerate(self.units):
                phi, pi, _ = self.step_fn(unit, *states[i], u, self.dt)
                states[i] = (phi, pi)
                if i + 1 < len(self.units):
                    u = self.feedforward(i, phi)
            yield k, states

    def forward(self, x: Tensor) -> Tensor:
        """Readouts at every step, shape (T, B, classes) (with autograd: the BPTT reference)."""
        return torch.stack([self.readout(states[-1][0]) for _, states in self.trajectory(self.as_sequence(x))])

    def extra_repr(self) -> str:
        return f"dt={self.dt}, integrator={self.integrator}, ff_activation={self.ff_activation}"


@dataclass
class HSSMSection(Section):
    """The ``hssm`` section: the Hamiltonian state-space model's unit type and leapfrog step (unit sizes are
    ``hidden``)."""

    name: ClassVar[str] = "hssm"
    moved_from: ClassVar[tuple[str, ...]] = ("model",)
    hru: str = setting("nonlinear", "hssm: the Hamiltonian recurrent unit type")
    dt: float = setting(0.1, "hssm: leapfrog time step")

    def validate(self) -> None:
        self.hru = check_choice("hru", self.hru, sorted(HRU_TYPES))
        self.positive("dt")


register_section(HSSMSection, "model=hssm")


def _build_hssm(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> HamiltonianSSM:
    c, _, width = image_input("hssm", input_shape)  # read row by row
    return HamiltonianSSM(c * width, cfg.hidden, num_classes, hru=cfg.hru, dt=cfg.dt)


register_model(
    "hssm",
    _build_hssm,
    "hssm",
    solver=None,
    description="Hamiltonian SSM reading images row by row (hidden: unit sizes, hru, dt)",
    defaults={"algorithm": "RHEL", "lrs": [0.01]},  # 0.05 diverged on digits in the first epoch
)
