"""The backprop baselines of the comparative study: truncated backprop (TBP), recurrent backprop (RBP, implicit
differentiation at the free state) and backprop through the whole free phase (BPTT)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core.network import State
from ..core.nudging import cost_precision
from ..core.relaxation import RelaxResult, relax
from ..models.base import model_output
from ..settings import Section, check_choice, register_section, setting
from .base import LearningAlgorithm, RelaxingAlgorithm, StepResult, register_algorithm, write_grads

__all__ = [
    "Backprop",
    "TruncatedBackprop",
    "RecurrentBackprop",
    "BackpropThroughTime",
    "implicit_gradient",
    "energy_implicit_gradient",
    "conjugate_gradient",
    "ADJOINTS",
]


class TruncatedBackprop(RelaxingAlgorithm):
    """TBP: backprop through K more iterations from the free state, not through the free phase. With
    ``init="persistent"`` the state after those K iterations starts the next step, as in the public code."""

    name = "TBP"

    def gradients(self, model, x, y, free):
        params = list(model.parameters())
        with torch.enable_grad():
            start = [s.detach() for s in free.states]
            unrolled = self.phases.unrolled(model, start, self.phases.nudged_iterations, "nudged").states
            loss = self.cost(cost_precision(model_output(model, unrolled)), y).mean()
            grads = list(torch.autograd.grad(loss, params, allow_unused=True))
        self.phases.carry(model, unrolled)
        return grads


class BackpropThroughTime(RelaxingAlgorithm):
    """BPTT through the whole free phase of T iterations (the reference for gradient and memory studies)."""

    name = "BPTT"

    def step(self, model, x, labels, accumulate=False):
        y = self.targets(model, labels)
        params = list(model.parameters())
        with torch.enable_grad():
            start = self.phases.initial_state(model, x)
            free = self.phases.unrolled(model, start, self.phases.free_iterations)
            o = cost_precision(model_output(model, free.states))
            loss = self.cost(o, y)
            grads = list(torch.autograd.grad(loss.mean(), params, allow_unused=True))
        free.states = [s.detach() for s in free.states]
        self.phases.carry(model, free.states)
        write_grads(model, grads, accumulate)
        return StepResult(loss.detach(), o.detach(), free, grads)

    def gradients(self, model, x, y, free):
        raise RuntimeError("BPTT computes its gradients inside step()")


def conjugate_gradient(
    apply_a: Callable[[list[Tensor]], list[Tensor]], b: list[Tensor], iterations: int = 200, tol: float = 1e-10
) -> tuple[list[Tensor], int]:
    """Solve A x = b for a symmetric positive definite operator on lists of tensors; returns (x, iterations)."""

    def dot(u: list[Tensor], v: list[Tensor]) -> Tensor:
        return sum((a * c).sum() for a, c in zip(u, v))  # type: ignore[return-value]

    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in r]
    rs = dot(r, r)
    b_norm = float(rs.sqrt())
    if b_norm == 0.0:
        return x, 0
    for i in range(1, iterations + 1):
        ap = apply_a(p)
        alpha = rs / dot(p, ap)
        x = [xi + alpha * pi for xi, pi in zip(x, p)]
        r = [ri - alpha * api for ri, api in zip(r, ap)]
        rs_new = dot(r, r)
        if float(rs_new.sqrt()) <= tol * b_norm:
            return x, i
        p = [ri + (rs_new / rs) * pi for ri, pi in zip(r, p)]
        rs = rs_new
    return x, iterations


ADJOINTS = ("cg", "almeida-pineda")  # RBP's adjoint solvers


def _check_adjoint(adjoint: str) -> None:
    if adjoint not in ADJOINTS:
        raise ValueError(f"unknown RBP adjoint {adjoint!r}; valid adjoints are {list(ADJOINTS)}")


class RecurrentBackprop(RelaxingAlgorithm):
    """RBP: implicit differentiation of C(o_*) at the free state s_* = sigma(dPhi/ds(s_*)).

    With D = diag(sigma'(dPhi/ds)) (for the hard sigmoid: 1 on unsaturated units, 0 elsewhere) and H the Hessian
    of Phi, ds_*/dtheta = (I - D H)^{-1} D d(dPhi/ds)/dtheta. Written with the symmetric positive definite
    A = I - D^{1/2} H D^{1/2} (at a strict minimum), the adjoint is mu = D^{1/2} A^{-1} D^{1/2} dC/ds, solved by
    conjugate gradient; then dC/dtheta = mu . d(dPhi/ds)/dtheta plus C's direct dependence (a readout).

    ``adjoint="almeida-pineda"``: the recurrent backprop of Almeida and Pineda as the comparative study's public
    code runs it, K steps of the adjoint recursion through one synchronous step F(s) = sigma(dPhi/ds(s)) at the
    free state, mu = sum_{t<K} D (H D)^t dC/ds: the series of (I - D H)^{-1} cut after K terms. With
    ``init="persistent"`` the state after that one step is what the next training step starts from, as there.
    """

    name = "RBP"

    def __init__(self, *, adjoint: str = "cg", cg_iterations: int = 200, cg_tol: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_adjoint(adjoint)
        self.adjoint, self.cg_iterations, self.cg_tol = adjoint, cg_iterations, cg_tol
        self.last_adjoint_steps = 0  # the last step's CG iterations (stopped at cg_tol), or its K recursion steps

    def gradients(self, network, x, y, free):
        recursion = self.adjoint == "almeida-pineda"
        grads, self.last_adjoint_steps = implicit_gradient(
            network,
            free.states,
            lambda s: self.cost(model_output(network, s), y.to(s[-1].dtype)).mean(),
            self.phases.nudged_iterations if recursion else self.cg_iterations,
            self.cg_tol,
            adjoint=self.adjoint,
        )
        if recursion and self.phases.init == "persistent":  # carry the synchronous step the recursion differentiates
            with torch.no_grad():
                step = relax(network, list(free.states), 1, schedule="synchronous", dtype=self.phases.settings.dtype)
            self.phases.carry(network, step.states)
        return grads

    def __repr__(self) -> str:
        adjoint = f", adjoint={self.adjoint}" if self.adjoint != "cg" else ""
        return f"{self.name}({self.phases.describe()}, cost={self.cost.name}{adjoint})"


def implicit_gradient(
    network: Any,
    states: State,
    loss: Callable[[State], Tensor],
    iterations: int = 200,
    cg_tol: float = 1e-8,
    *,
    adjoint: str = "cg",
) -> tuple[list[Tensor | None], int]:
    """dL/dtheta of a loss L(s_*, theta) (a scalar; any layers; theta may enter directly, as a readout's weights
    do) through the fixed point s_* = sigma(dPhi/ds(s_*)) by implicit differentiation (RBP's adjoint, see
    :class:`RecurrentBackprop`); returns (grads, adjoint steps): at most ``iterations`` of conjugate gradient, or with
    ``adjoint="almeida-pineda"`` exactly ``iterations`` steps of the Almeida-Pineda recursion."""
    _check_adjoint(adjoint)
    if not hasattr(network, "phi"):  # a model that writes down its energy and its active set (a DRN)
        if adjoint != "cg":
            raise ValueError(
                f"RBP's {adjoint!r} adjoint iterates the Hopfield fixed-point map s = sigma(dPhi/ds); "
                f"{type(network).__name__} is differentiated through its energy: use rbp_adjoint=cg"
            )
        return energy_implicit_gradient(network, states, loss, iterations, cg_tol)
    params = list(network.parameters())
    dtype = params[0].dtype
    with torch.enable_grad():
        s = [t.detach().to(dtype) for t in states]
        vars_ = [t.clone().requires_grad_(True) for t in s[1:]]
        m = torch.autograd.grad(network.phi([s[0]] + vars_).sum(), vars_, create_graph=True)
        slopes = [network.layers[k].sigma.slope(m[k - 1].detach()).clamp(min=0) for k in range(1, len(s))]
        value = loss([s[0]] + vars_)
        partial = torch.autograd.grad(value, vars_, allow_unused=True, retain_graph=True)
        direct = torch.autograd.grad(value, params, allow_unused=True)
        dl = [torch.zeros_like(v) if g is None else g for v, g in zip(vars_, partial)]

        def hessian(v: list[Tensor]) -> list[Tensor]:  # H v, H the Hessian of Phi in the free layers
            hv = torch.autograd.grad(m, vars_, grad_outputs=v, retain_graph=True, allow_unused=True)
            return [torch.zeros_like(vi) if h is None else h for vi, h in zip(v, hv)]

        if adjoint == "cg":
            roots = [d.sqrt() for d in slopes]

            def apply_a(v: list[Tensor]) -> list[Tensor]:
                hv = hessian([vi * di for vi, di in zip(v, roots)])
                return [vi - di * h for vi, di, h in zip(v, roots, hv)]

            z, used = conjugate_gradient(apply_a, [g * d for g, d in zip(dl, roots)], iterations, cg_tol)
            mu = [zi * di for zi, di in zip(z, roots)]
        else:  # v_0 = dL/ds, v_{t+1} = J^T v_t with J = D H the Jacobian of the synchronous step; mu = sum D v_t
            v, mu, used = dl, [torch.zeros_like(g) for g in dl], iterations
            for t in range(iterations):
                dv = [vi * di for vi, di in zip(v, slopes)]
                mu = [a + b for a, b in zip(mu, dv)]
                if t + 1 < iterations:
                    v = hessian(dv)
        through = torch.autograd.grad(m, params, grad_outputs=mu, allow_unused=True)
        grads = [a if b is None else b if a is None else a + b for a, b in zip(through, direct)]
        return list(grads), used


class Backprop(LearningAlgorithm):
    """BP: plain backprop of the mean cost through a feedforward model's forward pass (the papers' "ReLU NN"
    baseline)."""

    name = "BP"

    def free_phase(self, model: Any, x: Tensor) -> RelaxResult:
        with torch.no_grad():
            return model.free_phase(x)

    def step(self, model: Any, x: Tensor, labels: Tensor, accumulate: bool = False) -> StepResult:
        y = self.targets(model, labels)
        params = list(model.parameters())
        with torch.enable_grad():
            free = model.free_phase(x)
            o = cost_precision(model_output(model, free.states))
            loss = self.cost(o, y.to(o.dtype))
            grads = list(torch.autograd.grad(loss.mean(), params, allow_unused=True))
        free.states = [t.detach() for t in free.states]
        write_grads(model, grads, accumulate)
        return StepResult(loss.detach(), o.detach(), free, grads)

    def gradients(self, model, x, y, free):
        raise RuntimeError("BP computes its gradients inside step()")


def energy_implicit_gradient(
    model: Any, states: State, loss: Callable[[State], Tensor], iterations: int = 200, cg_tol: float = 1e-8
) -> tuple[list[Tensor | None], int]:
    """dL/dtheta through the minimiser s_* of a model's energy E(theta, s) on its active set: units at a bound
    (``model.free_units`` marks the others) stay there, and on the free units dE/ds_f = 0, so
    ds_f/dtheta = -H_ff^{-1} d^2E/ds_f dtheta with H_ff the (positive definite) Hessian of E in the free units. The
    adjoint lambda = H_ff^{-1} dL/ds_f is solved by conjugate gradient (Hessian-vector products by autograd), then
    dL/dtheta = -lambda . d^2E/ds dtheta plus L's direct dependence on theta. Returns (grads, CG iterations)."""
    params = list(model.parameters())
    dtype = params[0].dtype
    with torch.enable_grad():
        s = [t.detach().to(dtype) for t in states]
        vars_ = [t.clone().requires_grad_(True) for t in s[1:]]
        full = [s[0]] + vars_
        masks = [m.to(dtype) for m in model.free_units(full)]
        grad_e = torch.autograd.grad(model.energy(full).sum(), vars_, create_graph=True)
        value = loss(full)
        partial = torch.autograd.grad(value, vars_, allow_unused=True, retain_graph=True)
        direct = torch.autograd.grad(value, params, allow_unused=True, retain_graph=True)
        dl = [torch.zeros_like(v) if g is None else g * m for v, g, m in zip(vars_, partial, masks)]

        def apply_h(v: list[Tensor]) -> list[Tensor]:  # H_ff v (v lives on the free units)
            hv = torch.autograd.grad(grad_e, vars_, grad_outputs=v, retain_graph=True, allow_unused=True)
            return [torch.zeros_like(vi) if h is None else h * m for vi, h, m in zip(v, hv, masks)]

        lam, used = conjugate_gradient(apply_h, dl, iterations, cg_tol)
        through = torch.autograd.grad(grad_e, params, grad_outputs=[-t for t in lam], allow_unused=True)
        grads = [a if b is None else b if a is None else a + b for a, b in zip(through, direct)]
        return list(grads), used


@dataclass
class RBPSection(Section):
    """The ``rbp`` section: how recurrent backprop solves its adjoint system."""

    name: ClassVar[str] = "rbp"
    moved_from: ClassVar[tuple[str, ...]] = ("rule",)
    options: ClassVar[dict[str, str]] = {"rbp_adjoint": "adjoint"}
    rbp_adjoint: str = setting(
        "cg", "RBP: the adjoint by conjugate gradient, or K Almeida-Pineda steps (almeida-pineda: the public code's)"
    )

    def validate(self) -> None:
        self.rbp_adjoint = check_choice("rbp_adjoint", self.rbp_adjoint, list(ADJOINTS))


register_section(RBPSection, "algorithm=RBP")


register_algorithm("TBP", TruncatedBackprop)
register_algorithm("RBP", RecurrentBackprop, options=("cost", "phases", "adjoint"))
register_algorithm("BPTT", BackpropThroughTime)
register_algorithm("BP", Backprop, families=("feedforward",), options=("cost",))
