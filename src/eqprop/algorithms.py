"""Learning algorithms: the seven energy-based rules (CL, P/N/C-EP, P/N/C-CpL) and the TBP, RBP, BPTT baselines.

One training step (appendix D): a free phase of T iterations from the initial state; then, for the
contrastive rules, two phases of K iterations from the free state with nudging values beta_1 and beta_2;
then one parameter update. Every algorithm writes an estimate of dC/dtheta (the descent direction,
so ``optimizer.step()`` performs theta <- theta - eta * estimate) into ``p.grad``.

The contrastive estimate is  g = (dE/dtheta(s_{beta_2}) - dE/dtheta(s_{beta_1})) / (beta_2 - beta_1),
which is eq. (3) for CL (beta = 0, 1 with clamping), eq. (5) for P-/N-EP (0, +-beta), eq. (6) for C-EP
(-beta, +beta), and eqs. (8)-(9) for the CpL variants. Register new rules with :func:`register_algorithm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .intermediate_signals import AugmentedNudge, IntermediateSignal
from .network import EnergyNetwork, State
from .nudging import ClampNudge, Cost, EPNudge, Nudge, get_cost, one_hot
from .registry import canonical_name
from .relaxation import RelaxResult, relax, relax_graphed

__all__ = ["LearningAlgorithm", "Contrastive", "TruncatedBackprop", "RecurrentBackprop", "BackpropThroughTime",
           "StepResult", "NUDGED_PRECISIONS", "ALGORITHMS", "ALGORITHM_MODELS", "register_algorithm", "get_algorithm", "algorithm_names",
           "algorithm_models", "implicit_gradient",
           "conjugate_gradient"]


@dataclass
class StepResult:
    """What a training step measured at the free state."""

    loss: Tensor  # per-sample cost C(o_*, y)
    output: Tensor  # free output o_*
    free: RelaxResult
    grads: list[Tensor | None]


# Precision of the contrastive rules' nudged phases: "same" as the free phase (``dtype``); "full": in the
# parameters' precision; "deviation": states in the parameters' precision, convolutions of the deviation from
# the free state in ``dtype`` (relaxation's deviation mode), which keeps the C-EP contrast at 16-bit speed.
NUDGED_PRECISIONS = ("same", "full", "deviation")


class LearningAlgorithm:
    """Shared settings of all algorithms: costs, iteration counts, schedule, precision."""

    name = "algorithm"

    def __init__(self, *, beta: float = 0.25, free_iterations: int = 60, nudged_iterations: int = 15,
                 cost: str | Cost = "squared_error", schedule: str = "asynchronous", first: str = "even",
                 dtype: torch.dtype | str | None = None, tol: float | None = None, init: str = "zeros",
                 engine: str = "messages", cuda_graphs: bool = False, channels_last: bool = False,
                 nudged_precision: str = "same", refine_iterations: int = 0) -> None:
        if free_iterations < 1 or nudged_iterations < 1:
            raise ValueError(f"iteration counts must be >= 1, got T={free_iterations}, K={nudged_iterations}")
        self.beta = float(beta)
        self.free_iterations = int(free_iterations)
        self.nudged_iterations = int(nudged_iterations)
        self.cost = get_cost(cost) if isinstance(cost, str) else cost
        self.schedule, self.first, self.dtype, self.tol = schedule, first, dtype, tol
        self.init, self.engine = init, engine
        self.cuda_graphs, self.channels_last = cuda_graphs, channels_last
        if nudged_precision not in NUDGED_PRECISIONS:
            raise ValueError(f"unknown nudged_precision {nudged_precision!r}; valid values are {list(NUDGED_PRECISIONS)}")
        self.nudged_precision = nudged_precision
        if refine_iterations < 0:
            raise ValueError(f"refine_iterations must be >= 0, got {refine_iterations}")
        # deviation-mode iterations (full-precision states and input, ``dtype`` convolutions of the change) that
        # refine a 16-bit free state to the full-precision equilibrium the contrast is taken around
        self.refine_iterations = int(refine_iterations)

    def __repr__(self) -> str:
        return (f"{self.name}(beta={self.beta}, T={self.free_iterations}, K={self.nudged_iterations}, "
                f"cost={self.cost.name}, schedule={self.schedule}, dtype={self.dtype})")

    # ---- phases ----------------------------------------------------------------------------------------
    def relax(self, network: EnergyNetwork, states: State, iterations: int, nudge: Nudge | None = None,
              nudged: bool = False, refine: bool = False) -> RelaxResult:
        """One phase (a nudged one follows ``nudged_precision``, a refinement runs in deviation mode);
        replayed as a CUDA graph when ``cuda_graphs`` is set and the phase allows it."""
        dtype, deviation = self.dtype, refine
        if nudged and self.nudged_precision == "full":
            dtype = next(network.parameters()).dtype
        elif nudged and self.nudged_precision == "deviation":
            deviation = True
        if (self.cuda_graphs and states[0].is_cuda and self.tol is None and self.engine == "messages"
                and not torch.is_grad_enabled() and not (nudge is not None and nudge.hidden_layers)):
            return relax_graphed(network, states, iterations, nudge=nudge, schedule=self.schedule, first=self.first,
                                 dtype=dtype, channels_last=self.channels_last, deviation=deviation)
        return relax(network, states, iterations, nudge=nudge, schedule=self.schedule, first=self.first,
                     tol=self.tol, dtype=dtype, engine=self.engine, channels_last=self.channels_last,
                     deviation=deviation)

    def free_phase(self, network: EnergyNetwork, x: Tensor) -> RelaxResult:
        """Relax from the initial state with no nudging for T iterations (inference), then refine."""
        with torch.no_grad():
            free = self.relax(network, network.init_state(x, self.init), self.free_iterations)
            if not self.refine_iterations:
                return free
            refined = self.relax(network, [x] + list(free.states[1:]), self.refine_iterations, refine=True)
            return RelaxResult(refined.states, free.iterations + refined.iterations, free.trajectory)

    def targets(self, network: EnergyNetwork, labels: Tensor) -> Tensor:
        return one_hot(labels, network.layers[-1].size).to(labels.device)

    # ---- step ------------------------------------------------------------------------------------------
    def gradients(self, network: EnergyNetwork, x: Tensor, y: Tensor, free: RelaxResult) -> list[Tensor | None]:
        """Estimate dC/dtheta given the free phase; ``y`` is the one-hot target."""
        raise NotImplementedError

    def step(self, network: EnergyNetwork, x: Tensor, labels: Tensor) -> StepResult:
        """Free phase + gradient estimate, written into ``p.grad`` of every parameter."""
        y = self.targets(network, labels)
        free = self.free_phase(network, x)
        grads = self.gradients(network, x, y, free)
        write_grads(network, grads)
        o = free.states[-1].float()
        return StepResult(self.cost(o, y).detach(), o.detach(), free, grads)


def write_grads(network: EnergyNetwork, grads: list[Tensor | None]) -> None:
    for p, g in zip(network.parameters(), grads):
        p.grad = None if g is None else g.detach().to(p.dtype)


class Contrastive(LearningAlgorithm):
    """A contrastive rule: EP nudging (``mode='ep'``) or output clamping (``mode='clamp'``, CpL/CL).

    ``signs`` gives (beta_1, beta_2) as multiples of ``beta``; CL uses ``fixed_betas=(0, 1)``.
    """

    def __init__(self, name: str, mode: str, signs: tuple[float, float] | None = None,
                 fixed_betas: tuple[float, float] | None = None, signals: Sequence[IntermediateSignal] = (),
                 kappa: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in ("ep", "clamp"):
            raise ValueError(f"mode must be 'ep' or 'clamp', got {mode!r}")
        if signals and mode != "ep":
            raise ValueError(f"{name}: intermediate learning signals need EP nudging (P-/N-/C-EP), not clamping")
        self.name, self.mode, self.signs, self.fixed_betas = name, mode, signs, fixed_betas
        self.signals, self.kappa = list(signals), float(kappa)  # kappa: set per epoch by a kappa schedule
        b1, b2 = self.betas
        if b1 == b2:
            raise ValueError(f"{name}: the two nudging values must differ, got beta_1 = beta_2 = {b1}")

    @property
    def betas(self) -> tuple[float, float]:
        if self.fixed_betas is not None:
            return self.fixed_betas
        assert self.signs is not None
        return self.signs[0] * self.beta, self.signs[1] * self.beta

    def nudge(self, beta: float, y: Tensor, free: RelaxResult, signal_targets: Sequence[Tensor] = ()) -> Nudge:
        if self.mode == "clamp":
            return ClampNudge.coupled(free.states[-1], y, beta)
        if self.signals and self.kappa != 0.0:  # eq. 10: beta (L_EP + kappa sum_i L_Aug,i)
            return AugmentedNudge(EPNudge(self.cost, y, beta), self.signals, signal_targets, self.kappa)
        return EPNudge(self.cost, y, beta)

    def nudged_phase(self, network: EnergyNetwork, y: Tensor, free: RelaxResult, beta: float,
                     signal_targets: Sequence[Tensor] = ()) -> RelaxResult:
        """K iterations from the free state with nudging value ``beta`` (eq. 4 or eq. 7)."""
        with torch.no_grad():
            return self.relax(network, list(free.states), self.nudged_iterations,
                              self.nudge(beta, y, free, signal_targets), nudged=True)

    def gradients(self, network, x, y, free):
        b1, b2 = self.betas
        targets = [sig.target(x, y) for sig in self.signals] if self.kappa != 0.0 else []  # no teacher pass when off
        s1 = self.nudged_phase(network, y, free, b1, targets).states
        s2 = self.nudged_phase(network, y, free, b2, targets).states
        g1 = network.energy_param_grads(s1)
        g2 = network.energy_param_grads(s2)
        self._signal_grads(y, free, targets, (b1, s1), (b2, s2))
        return [None if a is None else (a - b) / (b2 - b1) for a, b in zip(g2, g1)]

    def _signal_grads(self, y: Tensor, free: RelaxResult, targets: Sequence[Tensor], *phases) -> None:
        """The same contrast for the signals' own parameters (KDW's map, appendix G): the nudged energy's
        term beta kappa L_Aug is differentiated at each nudged state; written into their ``.grad``."""
        params = [p for sig in self.signals for p in sig.parameters()]
        if not params:
            return
        if self.kappa == 0.0:  # the signals are off: no term, no gradient
            for p in params:
                p.grad = torch.zeros_like(p)
            return
        (b1, s1), (b2, s2) = phases
        with torch.enable_grad():
            e1, e2 = (self.nudge(b, y, free, targets).hidden_energy([t.detach() for t in s]).mean()
                      for b, s in ((b1, s1), (b2, s2)))
            g1 = torch.autograd.grad(e1, params, allow_unused=True)
            g2 = torch.autograd.grad(e2, params, allow_unused=True)
        for p, a, b in zip(params, g2, g1):
            p.grad = None if a is None or b is None else ((a - b) / (b2 - b1)).detach()


class TruncatedBackprop(LearningAlgorithm):
    """TBP: backprop through the last K iterations from the free state, not through the free phase."""

    name = "TBP"

    def gradients(self, network, x, y, free):
        params = list(network.parameters())
        with torch.enable_grad():
            start = [s.detach() for s in free.states]
            out = self.relax(network, start, self.nudged_iterations).states[-1]
            loss = self.cost(out.float(), y).mean()
            return list(torch.autograd.grad(loss, params, allow_unused=True))


class BackpropThroughTime(LearningAlgorithm):
    """BPTT through the whole free phase of T iterations (the reference for gradient and memory studies)."""

    name = "BPTT"

    def step(self, network, x, labels):
        y = self.targets(network, labels)
        params = list(network.parameters())
        with torch.enable_grad():
            free = self.relax(network, network.init_state(x, self.init), self.free_iterations)
            o = free.states[-1].float()
            loss = self.cost(o, y)
            grads = list(torch.autograd.grad(loss.mean(), params, allow_unused=True))
        free.states = [s.detach() for s in free.states]
        write_grads(network, grads)
        return StepResult(loss.detach(), o.detach(), free, grads)

    def gradients(self, network, x, y, free):
        raise RuntimeError("BPTT computes its gradients inside step()")


def conjugate_gradient(apply_a: Callable[[list[Tensor]], list[Tensor]], b: list[Tensor], iterations: int = 200,
                       tol: float = 1e-10) -> tuple[list[Tensor], int]:
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


class RecurrentBackprop(LearningAlgorithm):
    """RBP: implicit differentiation of C(o_*) at the free state s_* = sigma(dPhi/ds(s_*)).

    With D = diag(sigma'(dPhi/ds)) (1 on unsaturated units) and H the Hessian of Phi, the adjoint
    mu solves (I - D H D) mu = D dC/ds on the unsaturated units (symmetric positive definite at a strict
    minimum), solved by conjugate gradient; then dC/dtheta = mu . d(dPhi/ds)/dtheta.
    """

    name = "RBP"

    def __init__(self, *, cg_iterations: int = 200, cg_tol: float = 1e-8, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cg_iterations, self.cg_tol = cg_iterations, cg_tol
        self.last_cg_iterations = 0

    def gradients(self, network, x, y, free):
        grads, self.last_cg_iterations = implicit_gradient(
            network, free.states, lambda s: self.cost(s[-1], y.to(s[-1].dtype)).mean(), self.cg_iterations,
            self.cg_tol)
        return grads


def implicit_gradient(network: EnergyNetwork, states: State, loss: Callable[[State], Tensor],
                      cg_iterations: int = 200, cg_tol: float = 1e-8) -> tuple[list[Tensor | None], int]:
    """dL/dtheta of a loss L(s_*) (a scalar; any layers) through the fixed point s_* = sigma(dPhi/ds(s_*)) by
    implicit differentiation (RBP's adjoint solve, see :class:`RecurrentBackprop`); returns (grads, CG steps)."""
    params = list(network.parameters())
    dtype = params[0].dtype
    with torch.enable_grad():
        s = [t.detach().to(dtype) for t in states]
        vars_ = [t.clone().requires_grad_(True) for t in s[1:]]
        m = torch.autograd.grad(network.phi([s[0]] + vars_).sum(), vars_, create_graph=True)
        masks = [network.layers[k].sigma.active(m[k - 1].detach()).to(dtype) for k in range(1, len(s))]
        dl = torch.autograd.grad(loss([s[0]] + vars_), vars_, allow_unused=True)
        rhs = [torch.zeros_like(v) if g is None else g * d for v, g, d in zip(vars_, dl, masks)]

        def apply_a(v: list[Tensor]) -> list[Tensor]:
            dv = [vi * di for vi, di in zip(v, masks)]
            hv = torch.autograd.grad(m, vars_, grad_outputs=dv, retain_graph=True, allow_unused=True)
            return [vi - di * (torch.zeros_like(vi) if h is None else h) for vi, di, h in zip(v, masks, hv)]

        mu, used = conjugate_gradient(apply_a, rhs, cg_iterations, cg_tol)
        return list(torch.autograd.grad(m, params, grad_outputs=mu, allow_unused=True)), used


# ---- registry ----------------------------------------------------------------------------------------------
ALGORITHMS: dict[str, Callable[..., LearningAlgorithm]] = {}
ALGORITHM_MODELS: dict[str, tuple[str, ...]] = {}  # the model families (config ``model``) each rule trains


def register_algorithm(name: str, factory: Callable[..., LearningAlgorithm],
                       models: tuple[str, ...] = ("dchn", "mlp", "vgg")) -> None:
    """Register a learning algorithm factory under ``name`` (looked up case-insensitively, '-' ignored),
    with the config ``model`` values it can train."""
    ALGORITHMS[name] = factory
    ALGORITHM_MODELS[name] = tuple(models)


def _contrastive(name: str, mode: str, signs=None, fixed=None) -> Callable[..., LearningAlgorithm]:
    return lambda **kw: Contrastive(name, mode, signs=signs, fixed_betas=fixed, **kw)


register_algorithm("CL", _contrastive("CL", "clamp", fixed=(0.0, 1.0)))
register_algorithm("PEP", _contrastive("PEP", "ep", signs=(0.0, 1.0)))
register_algorithm("NEP", _contrastive("NEP", "ep", signs=(0.0, -1.0)))
register_algorithm("CEP", _contrastive("CEP", "ep", signs=(-1.0, 1.0)))
register_algorithm("PCpL", _contrastive("PCpL", "clamp", signs=(0.0, 1.0)))
register_algorithm("NCpL", _contrastive("NCpL", "clamp", signs=(0.0, -1.0)))
register_algorithm("CCpL", _contrastive("CCpL", "clamp", signs=(-1.0, 1.0)))
register_algorithm("TBP", TruncatedBackprop)
register_algorithm("RBP", RecurrentBackprop)
register_algorithm("BPTT", BackpropThroughTime)


def algorithm_names() -> list[str]:
    return list(ALGORITHMS)


def get_algorithm(name: str, **kwargs) -> LearningAlgorithm:
    """Build an algorithm by name ("CEP", "C-EP", "ncpl", "TBP", ...); an unknown name lists the valid ones."""
    canonical = canonical_name(name, ALGORITHMS)
    if canonical is None:
        raise ValueError(f"unknown algorithm {name!r}; valid algorithms are {algorithm_names()}")
    return ALGORITHMS[canonical](**kwargs)


def algorithm_models(name: str) -> tuple[str, ...]:
    """The config ``model`` values an algorithm trains."""
    return ALGORITHM_MODELS[canonical_name(name, ALGORITHMS) or name]
