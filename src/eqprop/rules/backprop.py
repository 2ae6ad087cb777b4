"""The backprop baselines of the comparative study: truncated backprop (TBP), recurrent backprop (RBP, implicit
differentiation at the free state) and backprop through the whole free phase (BPTT)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.network import State
from ..core.nudging import cost_precision
from ..models.base import model_output
from .base import RelaxingAlgorithm, StepResult, register_algorithm, write_grads

__all__ = ["TruncatedBackprop", "RecurrentBackprop", "BackpropThroughTime", "implicit_gradient", "conjugate_gradient"]


class TruncatedBackprop(RelaxingAlgorithm):
    """TBP: backprop through K more iterations from the free state, not through the free phase. With
    ``init="persistent"`` the state after those K iterations starts the next step, as in the public code."""

    name = "TBP"

    def gradients(self, model, x, y, free):
        params = list(model.parameters())
        with torch.enable_grad():
            start = [s.detach() for s in free.states]
            unrolled = self.phases.unrolled(model, start, self.phases.nudged_iterations).states
            loss = self.cost(cost_precision(model_output(model, unrolled)), y).mean()
            grads = list(torch.autograd.grad(loss, params, allow_unused=True))
        self.phases.carry(model, unrolled)
        return grads


class BackpropThroughTime(RelaxingAlgorithm):
    """BPTT through the whole free phase of T iterations (the reference for gradient and memory studies)."""

    name = "BPTT"

    def step(self, model, x, labels):
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
        write_grads(model, grads)
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


class RecurrentBackprop(RelaxingAlgorithm):
    """RBP: implicit differentiation of C(o_*) at the free state s_* = sigma(dPhi/ds(s_*)).

    With D = diag(sigma'(dPhi/ds)) (for the hard sigmoid: 1 on unsaturated units, 0 elsewhere) and H the Hessian
    of Phi, ds_*/dtheta = (I - D H)^{-1} D d(dPhi/ds)/dtheta. Written with the symmetric positive definite
    A = I - D^{1/2} H D^{1/2} (at a strict minimum), the adjoint is mu = D^{1/2} A^{-1} D^{1/2} dC/ds, solved by
    conjugate gradient; then dC/dtheta = mu . d(dPhi/ds)/dtheta plus C's direct dependence (a readout).
    """

    name = "RBP"

    def __init__(self, *, cg_iterations: int = 200, cg_tol: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cg_iterations, self.cg_tol = cg_iterations, cg_tol
        self.last_cg_iterations = 0

    def gradients(self, network, x, y, free):
        grads, self.last_cg_iterations = implicit_gradient(
            network,
            free.states,
            lambda s: self.cost(model_output(network, s), y.to(s[-1].dtype)).mean(),
            self.cg_iterations,
            self.cg_tol,
        )
        return grads


def implicit_gradient(
    network: Any, states: State, loss: Callable[[State], Tensor], cg_iterations: int = 200, cg_tol: float = 1e-8
) -> tuple[list[Tensor | None], int]:
    """dL/dtheta of a loss L(s_*, theta) (a scalar; any layers; theta may enter directly, as a readout's weights
    do) through the fixed point s_* = sigma(dPhi/ds(s_*)) by implicit differentiation (RBP's adjoint solve, see
    :class:`RecurrentBackprop`); returns (grads, CG steps)."""
    params = list(network.parameters())
    dtype = params[0].dtype
    with torch.enable_grad():
        s = [t.detach().to(dtype) for t in states]
        vars_ = [t.clone().requires_grad_(True) for t in s[1:]]
        m = torch.autograd.grad(network.phi([s[0]] + vars_).sum(), vars_, create_graph=True)
        roots = [network.layers[k].sigma.slope(m[k - 1].detach()).clamp(min=0).sqrt() for k in range(1, len(s))]
        value = loss([s[0]] + vars_)
        dl = torch.autograd.grad(value, vars_, allow_unused=True, retain_graph=True)
        direct = torch.autograd.grad(value, params, allow_unused=True)
        rhs = [torch.zeros_like(v) if g is None else g * d for v, g, d in zip(vars_, dl, roots)]

        def apply_a(v: list[Tensor]) -> list[Tensor]:
            dv = [vi * di for vi, di in zip(v, roots)]
            hv = torch.autograd.grad(m, vars_, grad_outputs=dv, retain_graph=True, allow_unused=True)
            return [vi - di * (torch.zeros_like(vi) if h is None else h) for vi, di, h in zip(v, roots, hv)]

        z, used = conjugate_gradient(apply_a, rhs, cg_iterations, cg_tol)
        mu = [zi * di for zi, di in zip(z, roots)]
        through = torch.autograd.grad(m, params, grad_outputs=mu, allow_unused=True)
        grads = [a if b is None else b if a is None else a + b for a, b in zip(through, direct)]
        return list(grads), used


register_algorithm("TBP", TruncatedBackprop)
register_algorithm("RBP", RecurrentBackprop)
register_algorithm("BPTT", BackpropThroughTime)
