"""FitzHugh-Nagumo (FHN) networks: equilibrium propagation on skew-gradient (saddle-point) dynamics.

One unit has a fast voltage v and a slow recovery w,

    dv/dt = v - v^3/3 - w + I,        dw/dt = eps (v + a - b w),

which is skew-gradient: with H(v, w) = -v^2/2 + v^4/12 - I v + v w + a w - b w^2/2 it reads dv/dt = -dH/dv and
dw/dt = +eps dH/dw. A layered network adds couplings to H: the input x and the layers v_1..v_L are joined by
dense weights, -sum_k v_k^T W_k^T v_{k-1} (with v_0 = x), optionally by residual (skip) weights between layers k-2
and k, -sum_k v_k^T S_k^T v_{k-2}, and optionally by diffusion along each hidden layer's chain of units,
+D/2 sum_i (v_i - v_{i+1})^2 (the sign that makes dv/dt gain D (v_{i-1} + v_{i+1} - 2 v_i), a discrete Laplacian).
The output is v_L.

Equilibria are the critical points of H. H is concave in w (-b w^2/2, b > 0), so w*(v) = (v + a)/b maximises it,
and the equilibria are exactly the critical points of the reduced energy

    F(v) = max_w H(v, w) = H(v, w*(v)) = sum_units [-v^2/2 + v^4/12 - I v + (v + a)^2/(2b)] - couplings,

which is what :meth:`FHNNetwork.energy` returns. By the envelope theorem dF/dtheta = dH/dtheta at w*(v), so EP's
contrast of dF/dtheta between nudged equilibria is the contrast of dH/dtheta, and EP's gradient formula holds: it
uses only stationarity and an invertible Hessian at the equilibrium (implicit function theorem), not a minimum.
Stability. The Jacobian of the dynamics at an equilibrium is J = [[-A, -1], [eps, -eps b]] with A = d^2H/dv^2 =
diag(v^2 - 1) + D Lap - couplings. A saddle of H (A positive definite: a minimum in v; H is always a maximum in w)
is asymptotically stable for every eps > 0 (with P = diag(eps, 1), P J + J^T P = diag(-2 eps A, -2 eps b) is
negative definite). With one a, b, eps for every unit, J splits along A's eigenvectors into 2x2 blocks
[[-lambda, -1], [eps, -eps b]], so the equilibrium is stable exactly when every eigenvalue lambda of A exceeds
-min(eps b, 1/b). A minimum of F has lambda >= -1/b (F's Hessian is A + 1/b), so for eps >= 1/b^2 every strict
minimum of F is a stable equilibrium; below that, a minimum of F with some lambda in (-1/b, -eps b] (units on the
middle branch |v| < 1 of their cubic) loses stability and the network oscillates (the classic single unit,
a = 0.7, b = 0.8, eps = 0.08, I = 0.5, has a limit cycle). EP's formula then describes a point the physical
network does not sit at. :meth:`FHNNetwork.stability` gives J's largest real eigenvalue part per sample,
:meth:`FHNNetwork.saddle_margin` A's smallest eigenvalue, and the dynamics solver reports samples that do not
settle. The default eps = 2 (>= 1/b^2 for b = 0.8) keeps every equilibrium the exact solver finds stable.

Two solvers find the same equilibrium:

- ``fhn-dynamics`` integrates the dynamics (explicit in v, implicit in the linear w-equation, step ``dt``) from
  w = w*(v_0); each sample's final residual max(|dv/dt|, |v + a - b w|) is recorded, and samples above
  ``settle_tol`` are reported (as oscillating when the peaks of their residual stopped shrinking), by a warning
  or an error (``unsettled``).
- ``fhn-exact`` is block coordinate descent on F. With every other layer fixed, one unit's dF/dv = 0 is the
  cubic v^3/3 + c v = r with c = 1/b - 1 + D deg (plus c_C beta for a nudged output) and r its input, which for
  c > 0 has exactly one real root, 2 sqrt(c) sinh(asinh(3 r / (2 c^{3/2})) / 3): each update is the exact
  minimiser and F never rises. Layers of one parity do not interact (the asynchronous schedule updates them
  together); with diffusion, the even and the odd units of a layer are updated in turn; with skips (k and k-2
  share a parity) the asynchronous schedule becomes a forward sweep.

The layer-wise recurrence. A forward sweep of exact updates is, for a residual network,
v_k = R_{c_k}(W_k^T v_{k-1} + S_k^T v_{k-2} + W_{k+1} v_{k+1} + S_{k+2} v_{k+2} + I_k - a_k / b_k), with R_c the
inverse of v -> v^3/3 + c v (odd, monotone, linear for small inputs, a cube root for large ones). In the
feed-forward limit (the terms from layers above neglected) it is an explicit residual recurrence through R_c.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from ..core.constraints import Projection
from ..core.interactions import real_linear
from ..core.nudging import ClampNudge, EPNudge, Nudge
from ..core.relaxation import (
    RelaxResult,
    Solver,
    SolverStats,
    Trajectory,
    block_descent,
    complex_dtype,
    even_odd_groups,
    register_solver,
)
from ..errors import ConfigError, Problems
from ..logs import get_logger
from ..settings import Section, check_choice, register_section, setting
from .base import layer_gains, register_model

__all__ = [
    "FHNNetwork",
    "FHNDynamicsSolver",
    "FHNExactSolver",
    "SettleReport",
    "UnsettledError",
    "cubic_root",
    "fhn",
    "FHNSection",
]

_logger = get_logger(__name__)
B_MIN = 0.05  # a trainable b is kept >= this: w stays a maximum of H and w* = (v + a)/b bounded


class UnsettledError(RuntimeError):
    """A phase of the dynamics solver ended with samples that had not reached an equilibrium."""


@dataclass
class SettleReport:
    """The last dynamics phase: each sample's final residual, whether it settled (residual <= ``settle_tol``) and
    whether an unsettled sample oscillates (the peaks of its residual over the last eighth of the steps are more than
    half those of the eighth before: a cycle, not a decay)."""

    residual: Tensor
    settled: Tensor
    oscillating: Tensor

    def describe(self) -> str:
        n, bad = len(self.settled), int((~self.settled).sum())
        osc = int(self.oscillating.sum())
        return (
            f"{bad} of {n} samples did not settle ({osc} oscillating: a limit cycle or a slow spiral; the others "
            f"still converging), largest residual {float(self.residual.max()):.3g}"
        )


def _mm(x: Tensor, w: Tensor) -> Tensor:
    """x @ w for real weights and real or complex states (complex: the real and imaginary parts in one product)."""
    return real_linear(lambda t: t @ w, x)


def cubic_root(c: Tensor, r: Tensor) -> Tensor:
    """The real root of v^3/3 + c v = r for c > 0 (unique): 2 sqrt(c) sinh(asinh(3 r / (2 c^{3/2})) / 3)."""
    root = c.sqrt()
    return 2 * root * torch.sinh(torch.asinh(1.5 * r / (c * root)) / 3)


class FHNNetwork(nn.Module):
    """A layered FitzHugh-Nagumo network (module docstring): ``sizes = [n_in, h_1, ..., n_out]``.

    States are ``[x, v_1, ..., v_L]`` (the recovery variables are w*(v) at an equilibrium, and internal to the
    dynamics solver). Parameters per layer k: ``w{k}`` (n_{k-1}, n_k), the bias current ``i{k}`` (n_k),
    ``s{k}`` (n_{k-2}, n_k) with ``skips`` for k >= 2, and ``a{k}``, ``b{k}`` (n_k) when ``train_ab``; ``eps`` only
    sets the speed of the recovery (it does not move an equilibrium) and is never trained."""

    exact_free_phase = False

    def __init__(
        self,
        sizes: Sequence[int],
        gains: float | Sequence[float] = 0.5,
        a: float = 0.7,
        b: float = 0.8,
        eps: float = 2.0,
        diffusion: float = 0.0,
        skips: bool = False,
        train_ab: bool = False,
        dt: float = 0.1,
        settle_tol: float = 1e-6,
        unsettled: str = "warn",
    ) -> None:
        super().__init__()
        sizes = [int(n) for n in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes must list at least 2 positive layer sizes (input, ..., output), got {sizes}")
        for name, value in (("b", b), ("eps", eps), ("dt", dt), ("settle_tol", settle_tol)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"FHN {name} must be a finite number > 0, got {value}")
        if not (math.isfinite(a) and math.isfinite(diffusion) and diffusion >= 0):
            raise ValueError(f"FHN a must be finite and the diffusion D >= 0, got a={a}, D={diffusion}")
        if unsettled not in ("warn", "raise"):
            raise ValueError(f"unsettled must be 'warn' or 'raise', got {unsettled!r}")
        n_weights = len(sizes) - 1
        gains = layer_gains(gains, n_weights)
        self.sizes, self.gains, self.num_classes = sizes, gains, sizes[-1]
        self.diffusion, self.skips, self.train_ab = float(diffusion), bool(skips), bool(train_ab)
        self.dt, self.settle_tol, self.unsettled = float(dt), float(settle_tol), unsettled
        self.last_report: SettleReport | None = None
        self._warned = 0
        for k in range(1, len(sizes)):
            self.register_parameter(f"w{k}", nn.Parameter(torch.empty(sizes[k - 1], sizes[k])))
            self.register_parameter(f"i{k}", nn.Parameter(torch.zeros(sizes[k])))
            if self.skips and k >= 2:
                self.register_parameter(f"s{k}", nn.Parameter(torch.empty(sizes[k - 2], sizes[k])))
            for name, value in (("a", a), ("b", b)):
                tensor = torch.full((sizes[k],), float(value))
                if self.train_ab:
                    self.register_parameter(f"{name}{k}", nn.Parameter(tensor))
                else:
                    self.register_buffer(f"{name}{k}", tensor)
            self.register_buffer(f"eps{k}", torch.full((sizes[k],), float(eps)))
        self.reset_parameters()

    # ---- structure -------------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.sizes) - 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.sizes[0],)

    @property
    def output_index(self) -> int:
        return self.depth

    def p(self, name: str, k: int) -> Tensor:
        """Layer k's tensor ``name`` (w, i, s, a, b, eps)."""
        return cast(Tensor, getattr(self, f"{name}{k}"))

    def layer_parameters(self) -> list[list[nn.Parameter]]:
        names = ["w", "i", "s", "a", "b"]
        return [
            [getattr(self, f"{n}{k}") for n in names if isinstance(getattr(self, f"{n}{k}", None), nn.Parameter)]
            for k in range(1, self.depth + 1)
        ]

    def parameter_constraints(self) -> list[tuple[Tensor, Projection]]:
        """A trainable b stays >= B_MIN (w a maximum of H)."""
        if not self.train_ab:
            return []
        return [(self.p("b", k), lambda t: t.clamp_(min=B_MIN)) for k in range(1, self.depth + 1)]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """W_k, S_k ~ U(+-gain_k / sqrt(fan_in)) (S at half the gain); bias currents I = a/b, so that an uncoupled
        unit rests at v = 0, the centre of its cubic (where its response 1/c to an input current is steepest)."""
        for k in range(1, self.depth + 1):
            bound = self.gains[k - 1] / math.sqrt(self.sizes[k - 1])
            self.p("w", k).uniform_(-bound, bound)
            # in place, a/b: a division has a Python meta kernel that imports torch._dynamo (count_parameters)
            self.p("i", k).copy_(self.p("a", k)).div_(self.p("b", k))
            if self.skips and k >= 2:
                self.p("s", k).uniform_(-bound / 2, bound / 2)

    # holomorphic EP relaxes its complex phases with this solver: the energy is a polynomial in v, and the exact
    # solver's unit update continues to complex states as the root of the same cubic reached by Newton's method
    complex_solver = "fhn-exact"

    def non_holomorphic(self) -> list[str]:
        """Nothing: F is a polynomial in v, so its complex continuation is holomorphic (HEP applies)."""
        return []

    def nudged_energy(self, states: Sequence[Tensor], nudge: Any = None) -> Tensor:
        """F + beta C per sample (F alone without a ``nudge``); complex states give its holomorphic continuation."""
        e = self.energy(states)
        return e if nudge is None else e + nudge.extra_energy(states[-1])

    def diffuses(self, k: int) -> bool:
        """Whether layer k has diffusion along its chain of units (hidden layers, D > 0, more than one unit)."""
        return self.diffusion > 0 and k < self.depth and self.sizes[k] > 1

    def degree(self, k: int, like: Tensor) -> Tensor:
        """Each unit's number of chain neighbours in layer k (2 inside, 1 at the ends)."""
        deg = torch.full((self.sizes[k],), 2.0, dtype=like.dtype, device=like.device)
        deg[0] = deg[-1] = 1.0
        return deg

    @staticmethod
    def neighbours(v: Tensor) -> Tensor:
        """The sum of each unit's chain neighbours' voltages."""
        out = torch.zeros_like(v)
        out[:, 1:] += v[:, :-1]
        out[:, :-1] += v[:, 1:]
        return out

    # ---- energies ----------------------------------------------------------------------------------------------
    def input_current(self, states: Sequence[Tensor], k: int) -> Tensor:
        """What layer k receives from the other layers (minus dCouplings/dv_k): W_k^T v_{k-1} + W_{k+1} v_{k+1},
        with skips S_k^T v_{k-2} + S_{k+2} v_{k+2} (v_0 = x)."""
        L = self.depth
        cur = _mm(states[k - 1], self.p("w", k))
        if k < L:
            cur = cur + _mm(states[k + 1], self.p("w", k + 1).t())
        if self.skips:
            if k >= 2:
                cur = cur + _mm(states[k - 2], self.p("s", k))
            if k + 2 <= L:
                cur = cur + _mm(states[k + 2], self.p("s", k + 2).t())
        return cur

    def couplings(self, states: Sequence[Tensor]) -> Tensor:
        """Per sample: sum_k v_k . W_k^T v_{k-1} (+ the skips) - D/2 sum_i (v_i - v_{i+1})^2 (the part of -H that
        joins units)."""
        total = torch.zeros(states[0].shape[0], dtype=states[1].dtype, device=states[1].device)
        for k in range(1, self.depth + 1):
            total = total + (_mm(states[k - 1], self.p("w", k)) * states[k]).sum(1)
            if self.skips and k >= 2:
                total = total + (_mm(states[k - 2], self.p("s", k)) * states[k]).sum(1)
            if self.diffuses(k):
                total = total - 0.5 * self.diffusion * (states[k][:, 1:] - states[k][:, :-1]).pow(2).sum(1)
        return total

    def hamiltonian(self, states: Sequence[Tensor], recovery: Sequence[Tensor]) -> Tensor:
        """H(v, w) per sample (``recovery`` = [w_1, ..., w_L])."""
        total = -self.couplings(states)
        for k in range(1, self.depth + 1):
            v, w, a, b = states[k], recovery[k - 1], self.p("a", k), self.p("b", k)
            unit = -v * v / 2 + v.pow(4) / 12 - self.p("i", k) * v + v * w + a * w - b * w * w / 2
            total = total + unit.sum(1)
        return total

    def recovery(self, states: Sequence[Tensor]) -> list[Tensor]:
        """w*(v) = (v + a)/b per layer: the recovery variables at an equilibrium (H's maximum in w)."""
        return [(states[k] + self.p("a", k)) / self.p("b", k) for k in range(1, self.depth + 1)]

    def energy(self, states: Sequence[Tensor]) -> Tensor:
        """The reduced energy F(v) = H(v, w*(v)) per sample, whose critical points are the network's equilibria."""
        total = -self.couplings(states)
        for k in range(1, self.depth + 1):
            v, a, b = states[k], self.p("a", k), self.p("b", k)
            unit = -v * v / 2 + v.pow(4) / 12 - self.p("i", k) * v + (v + a).pow(2) / (2 * b)
            total = total + unit.sum(1)
        return total

    def energy_grad(self, states: Sequence[Tensor], k: int) -> Tensor:
        """dF/dv_k (per unit): -v + v^3/3 - I + (v + a)/b + D (deg v - neighbours) - input current."""
        v, a, b = states[k], self.p("a", k), self.p("b", k)
        g = -v + v.pow(3) / 3 - self.p("i", k) + (v + a) / b - self.input_current(states, k)
        if self.diffuses(k):
            g = g + self.diffusion * (self.degree(k, v) * v - self.neighbours(v))
        return g

    def energy_param_grads(self, states: Sequence[Tensor]) -> list[Tensor]:
        """dF/dtheta (batch mean) at fixed states, in parameter order (= dH/dtheta at w*(v))."""
        params = list(self.parameters())
        with torch.enable_grad():
            fixed = [t.detach() for t in states]
            grads = torch.autograd.grad(self.energy(fixed).mean(), params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    def free_units(self, states: Sequence[Tensor]) -> list[Tensor]:
        """Every unit is free (no bounds): RBP's active set is the whole network."""
        return [torch.ones_like(states[k]) for k in range(1, self.depth + 1)]

    def v_hessian(self, states: Sequence[Tensor]) -> Tensor:
        """A = d^2H/dv^2 per sample, a (B, n, n) matrix over all units of v_1..v_L in order."""
        L, B = self.depth, states[0].shape[0]
        offsets = [0]
        for k in range(1, L + 1):
            offsets.append(offsets[-1] + self.sizes[k])
        dtype, device = states[1].dtype, states[1].device
        A = torch.zeros(B, offsets[-1], offsets[-1], dtype=dtype, device=device)
        for k in range(1, L + 1):
            lo, hi = offsets[k - 1], offsets[k]
            diag = states[k] ** 2 - 1
            if self.diffuses(k):
                diag = diag + self.diffusion * self.degree(k, states[k])
                idx = torch.arange(lo, hi - 1, device=device)
                A[:, idx, idx + 1] -= self.diffusion
                A[:, idx + 1, idx] -= self.diffusion
            A[:, torch.arange(lo, hi), torch.arange(lo, hi)] += diag
            for j, name in ((k - 1, "w"), (k - 2, "s")):
                if j >= 1 and (name == "w" or self.skips):
                    block = self.p(name, k).to(dtype)  # (n_j, n_k)
                    A[:, offsets[j - 1] : offsets[j], lo:hi] -= block
                    A[:, lo:hi, offsets[j - 1] : offsets[j]] -= block.t()
        return A

    @torch.no_grad()
    def saddle_margin(self, states: Sequence[Tensor]) -> Tensor:
        """Per sample, the smallest eigenvalue of the v-Hessian A of H at ``states``: > 0 means a saddle of H
        (minimum in v; H is always a maximum in w), asymptotically stable for every eps."""
        return torch.linalg.eigvalsh(self.v_hessian(states)).min(-1).values

    @torch.no_grad()
    def stability(self, states: Sequence[Tensor]) -> Tensor:
        """Per sample, the largest real part of the eigenvalues of the dynamics' Jacobian at ``states`` (an
        equilibrium), J = [[-A, -1], [eps, -eps b]]: < 0 means asymptotically stable, > 0 unstable (a unit that
        oscillates or runs away)."""
        A = self.v_hessian(states)
        n = A.shape[-1]
        eps = torch.cat([self.p("eps", k) for k in range(1, self.depth + 1)]).to(A.dtype)
        b = torch.cat([self.p("b", k) for k in range(1, self.depth + 1)]).to(A.dtype)
        J = torch.zeros(A.shape[0], 2 * n, 2 * n, dtype=A.dtype, device=A.device)
        J[:, :n, :n] = -A
        J[:, :n, n:] = -torch.eye(n, dtype=A.dtype, device=A.device)
        J[:, n:, :n] = torch.diag(eps)
        J[:, n:, n:] = torch.diag(-eps * b)
        return torch.linalg.eigvals(J).real.amax(-1)

    # ---- phases ------------------------------------------------------------------------------------------------
    def init_state(self, x: Tensor, init: str = "zeros") -> list[Tensor]:
        """[x, 0, ..., 0]: every voltage at 0 (recovery at w*(0) = a/b)."""
        if init != "zeros":
            raise ValueError(f"an FHN network's relaxation starts from zeros; init={init!r} is not available")
        x = x.flatten(1)
        dtype = self.p("w", 1).dtype
        return [x.to(dtype)] + [x.new_zeros(x.shape[0], n, dtype=dtype) for n in self.sizes[1:]]

    def free_phase(self, x: Tensor, solver: Any, iterations: int, init: str = "zeros") -> RelaxResult:
        return solver(self, self.init_state(x, init), iterations)

    def forward(self, x: Tensor, iterations: int = 100) -> Tensor:
        """The output voltages at the free equilibrium (``iterations`` sweeps of the exact solver)."""
        with torch.no_grad():
            return FHNExactSolver()(self, self.init_state(x), iterations).states[-1]

    def report(self, report: SettleReport) -> None:
        """Keep the dynamics solver's report of a phase and warn (or raise, ``unsettled="raise"``) when samples did
        not settle; warnings are repeated at most every 100 phases."""
        self.last_report = report
        if bool(report.settled.all()):
            return
        message = (
            f"FHN dynamics: {report.describe()} after the phase's steps (settle_tol={self.settle_tol:g}); their "
            "gradient estimate is not EP's. More iterations, a smaller dt, or parameters whose equilibria are "
            "stable (units off the middle branch |v| < 1) help"
        )
        if self.unsettled == "raise":
            raise UnsettledError(message)
        if self._warned % 100 == 0:
            _logger.warning(message)
        self._warned += 1


def _nudge_terms(nudge: Nudge | None, exact: bool) -> tuple[Any, Tensor | None, Tensor | None, Any]:
    """(c beta, c beta y, clamp target, cost) of a nudge on the output. The exact solver also takes complex and
    per-sample betas (holomorphic EP's phases): c beta is then a complex number or a (B, 1) tensor."""
    if nudge is None:
        return 0.0, None, None, None
    if isinstance(nudge, ClampNudge):
        return 0.0, None, nudge.target, None
    if not isinstance(nudge, EPNudge) or nudge.hidden_layers or nudge.readout is not None:
        raise ValueError("an FHN network is nudged on its output voltages by EP (EPNudge) or clamped (ClampNudge)")
    beta = nudge.beta
    if not exact and (isinstance(beta, complex) or isinstance(beta, Tensor)):
        raise ValueError("the FHN dynamics are integrated for a real beta (complex phases: solver=fhn-exact)")
    c = nudge.cost.curvature
    if c is None:
        if exact:
            raise ValueError(
                f"the {nudge.cost.name} is not quadratic in the output; the exact FHN solver needs "
                "cost=squared_error or half_squared_error (or use solver=fhn-dynamics)"
            )
        return 0.0, None, None, nudge.cost
    cb: Any = c * (beta[:, None] if isinstance(beta, Tensor) else beta)
    return cb, cb * nudge.y, None, None


def _complex_root(c: Tensor, r: Tensor, start: Tensor, steps: int = 30) -> Tensor:
    """The root of v^3/3 + c v = r reached by Newton's method from ``start`` (complex c, r): near a real phase's
    state, the holomorphic continuation of :func:`cubic_root`."""
    v = start
    for _ in range(steps):
        v = v - (v**3 / 3 + c * v - r) / (v * v + c)
    return v


def _check(network: Any, iterations: int, name: str) -> None:
    if not isinstance(network, FHNNetwork):
        raise ValueError(f"the {name} solver relaxes FitzHugh-Nagumo networks, got {type(network).__name__}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")


@register_solver("fhn-exact")
class FHNExactSolver(Solver):
    """Exact block coordinate descent on the reduced energy F (module docstring): each update solves its units'
    cubics. ``tol`` stops a phase once no voltage moves more than ``tol``; ``record`` keeps F (+ the nudging
    term) per iteration."""

    def __call__(
        self, network: Any, states: list[Tensor], iterations: int, nudge: Nudge | None = None, record: bool = False
    ) -> RelaxResult:
        _check(network, iterations, "fhn-exact")
        s, L = self.settings, network.depth
        dtype = network.p("w", 1).dtype
        cb, cby, clamp, _ = _nudge_terms(nudge, exact=True)
        complex_phase = isinstance(cb, complex) or (isinstance(cb, Tensor) and cb.is_complex())
        complex_phase = complex_phase or any(t.is_complex() for t in states[1:])
        sdtype = complex_dtype(dtype) if complex_phase else dtype
        states = [states[0].flatten(1).to(dtype)] + [t.to(sdtype) for t in states[1:]]
        if clamp is not None:
            states[L] = clamp.to(sdtype).expand_as(states[L])
        curv = []
        for k in range(1, L + 1):
            c = 1.0 / network.p("b", k) - 1.0
            if network.diffuses(k):
                c = c + network.diffusion * network.degree(k, c)
            if k == L:
                c = c + cb
            if complex_phase:
                curv.append(c)
                continue
            if bool((c <= 0).any()):
                raise ValueError(
                    f"the exact FHN solver needs each unit's reduced energy convex, 1/b - 1 + D deg"
                    f"{' + c beta' if k == L and cb else ''} > 0; layer {k} has {float(c.min()):.4g} (b >= 1 without "
                    "enough diffusion, or a negative beta too large): use solver=fhn-dynamics, b < 1, or a smaller "
                    "beta"
                )
            curv.append(c)
        free = list(range(1, L + 1 if clamp is None else L))
        schedule = "forward" if network.skips and s.schedule == "asynchronous" else s.schedule
        groups = even_odd_groups(free, schedule, s.first)

        def root(c: Tensor, r: Tensor, start: Tensor) -> Tensor:
            c = c.expand_as(r) if isinstance(c, Tensor) else torch.full_like(r, c)
            return _complex_root(c, r, start) if complex_phase else cubic_root(c, r)

        def solve(k: int) -> Tensor:
            c = curv[k - 1]
            r = network.p("i", k) - network.p("a", k) / network.p("b", k) + network.input_current(states, k)
            if k == L and cby is not None:
                r = r + cby.to(sdtype)
            if not network.diffuses(k):
                return root(c, r, states[k])
            v = states[k]
            for parity in (0, 1):  # red-black: a unit's chain neighbours have the other parity
                new = root(c, r + network.diffusion * network.neighbours(v), v)
                mask = torch.zeros(v.shape[1], dtype=torch.bool, device=v.device)
                mask[parity::2] = True
                v = torch.where(mask, new, v)
            return v

        def energy(states: list[Tensor]) -> Tensor:
            e = network.energy(states)
            if cby is not None:
                e = e + nudge.extra_energy(states[L])  # type: ignore[union-attr]
            return e

        return block_descent(states, free, groups, solve, iterations, s.tol, energy if record else None)


@register_solver("fhn-dynamics")
class FHNDynamicsSolver(Solver):
    """The FHN dynamics integrated for ``iterations`` steps of ``network.dt`` (semi-implicit Euler: explicit in
    v, exact in the linear w-equation), from the given voltages and w = w*(v); every layer is updated at once (the
    physical network has no schedule). Each sample's final residual is checked against ``network.settle_tol``
    and reported (:meth:`FHNNetwork.report`); ``tol`` stops the phase once every sample is below it."""

    def __call__(
        self, network: Any, states: list[Tensor], iterations: int, nudge: Nudge | None = None, record: bool = False
    ) -> RelaxResult:
        _check(network, iterations, "fhn-dynamics")
        L, dt = network.depth, network.dt
        dtype = network.p("w", 1).dtype
        cb, cby, clamp, cost = _nudge_terms(nudge, exact=False)
        states = [states[0].flatten(1).to(dtype)] + [t.to(dtype) for t in states[1:]]
        if clamp is not None:
            states[L] = clamp.to(dtype).expand_as(states[L])
        free = list(range(1, L + 1 if clamp is None else L))
        w = network.recovery(states)
        tol = self.settings.tol
        traj = Trajectory() if record else None
        history: list[Tensor] = []
        used = 0
        residual = torch.zeros(states[0].shape[0], dtype=dtype, device=states[0].device)
        for _ in range(iterations):
            drift = {}
            for k in free:
                v = states[k]
                dv = v - v.pow(3) / 3 - w[k - 1] + network.p("i", k) + network.input_current(states, k)
                if network.diffuses(k):
                    dv = dv - network.diffusion * (network.degree(k, v) * v - network.neighbours(v))
                if k == L and cb:
                    dv = dv - cb * v + cast(Tensor, cby).to(dtype)
                elif k == L and cost is not None:
                    with torch.enable_grad():
                        o = v.detach().requires_grad_(True)
                        (force,) = torch.autograd.grad(cost(o, nudge.y.to(dtype)).sum(), o)  # type: ignore[union-attr]
                    dv = dv - float(nudge.beta) * force  # type: ignore[union-attr]
                drift[k] = dv
            for k in free:
                states[k] = states[k] + dt * drift[k]
                eps, a, b = network.p("eps", k), network.p("a", k), network.p("b", k)
                w[k - 1] = (w[k - 1] + dt * eps * (states[k] + a)) / (1 + dt * eps * b)
            used += 1
            with torch.no_grad():
                parts = [drift[k].abs().amax(1) for k in free]
                parts += [(states[k] + network.p("a", k) - network.p("b", k) * w[k - 1]).abs().amax(1) for k in free]
                residual = torch.stack(parts).amax(0) if parts else residual
                history.append(residual)
                if traj is not None:
                    traj.residual.append(float(residual.mean()))
                    traj.sample_residual.append(residual.clone())
            if tol is not None and float(residual.max()) < tol:
                break
        eighth = max(1, len(history) // 8)
        late = torch.stack(history[-eighth:]).amax(0) if history else residual
        early = torch.stack(history[-2 * eighth : -eighth]).amax(0) if len(history) >= 2 * eighth else late
        settled = residual <= network.settle_tol
        oscillating = ~settled & (late > 0.5 * early)  # its residual's peaks no longer shrink: a cycle, not a decay
        if iterations > 0:
            network.report(SettleReport(residual.detach(), settled, oscillating))
        stats = SolverStats(torch.full_like(residual, used, dtype=torch.int64), residual.detach().float())
        return RelaxResult(states, used, traj, stats)


def fhn(sizes: Sequence[int], **settings: Any) -> FHNNetwork:
    """An FHN network with ``sizes = [n_in, hidden..., n_out]`` (see :class:`FHNNetwork` for the settings)."""
    return FHNNetwork(sizes, **settings)


# ---- config: the family's own settings and its registration --------------------------------------------------------
@dataclass
class FHNSection(Section):
    """The ``fhn`` section: what only FitzHugh-Nagumo networks read (sizes from ``hidden``, init gains from
    ``gains``)."""

    name: ClassVar[str] = "fhn"
    fhn_a: float = setting(0.7, "fhn: a of every unit's recovery dw/dt = eps (v + a - b w)")
    fhn_b: float = setting(0.8, "fhn: b > 0 of the recovery (the exact solver needs 1/b - 1 + D deg > 0)")
    fhn_eps: float = setting(
        2.0, "fhn: eps > 0, the recovery's rate (moves no equilibrium; >= 1/b^2 keeps every minimum of F stable)"
    )
    diffusion: float = setting(0.0, "fhn: D >= 0, diffusion along each hidden layer's chain of units")
    residual: bool = setting(False, "fhn: skip couplings S_k between layers k-2 and k (a residual topology)")
    train_ab: bool = setting(False, "fhn: train every unit's a and b (b kept >= 0.05) besides W, S and the biases")
    fhn_dt: float = setting(0.1, "fhn: the time step of solver=fhn-dynamics")
    settle_tol: float = setting(1e-6, "fhn: the residual below which fhn-dynamics counts a sample as settled")
    unsettled: str = setting("warn", "fhn: what fhn-dynamics does with samples that did not settle: warn, raise")

    def validate(self) -> None:
        problems = Problems()
        with problems.check():
            self.positive("fhn_b", "fhn_eps", "fhn_dt", "settle_tol")
        with problems.check():
            self.at_least(0.0, "diffusion")
        with problems.check():
            self.unsettled = check_choice("unsettled", self.unsettled, ["warn", "raise"])
        problems.raise_any()


register_section(FHNSection, "model family fitzhugh_nagumo (model=fhn)")


def _build_fhn(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> FHNNetwork:
    sizes = [math.prod(input_shape)] + list(cfg.hidden) + [num_classes]
    f = cfg.fhn
    try:
        return FHNNetwork(
            sizes,
            cfg.gains,
            a=f.fhn_a,
            b=f.fhn_b,
            eps=f.fhn_eps,
            diffusion=f.diffusion,
            skips=f.residual,
            train_ab=f.train_ab,
            dt=f.fhn_dt,
            settle_tol=f.settle_tol,
            unsettled=f.unsettled,
        )
    except ValueError as exc:
        raise ConfigError(f"model=fhn: {exc}") from None


FHN_RULES = ("CL", "PEP", "NEP", "CEP", "REP", "PCpL", "NCpL", "CCpL", "RCpL", "TBP", "RBP", "BPTT", "HEP")
FHN_DEFAULTS: dict[str, Any] = {
    "hidden": [64],
    "gains": [1.0],
    "algorithm": "CEP",
    "beta": 0.1,  # C-EP's -beta keeps each output unit's reduced energy convex: 1/b - 1 - beta > 0 (b = 0.8)
    "cost": "half_squared_error",
    "free_iterations": 20,
    "nudged_iterations": 10,
    "schedule": "asynchronous",
    "lrs": [0.005],
    "momentum": 0.9,
    "batch_size": 32,
    "epochs": 10,
}

register_model(
    "fhn",
    _build_fhn,
    "fitzhugh_nagumo",
    flat_input=True,
    solver="fhn-exact",
    description="FitzHugh-Nagumo network: skew-gradient voltage/recovery units (hidden, gains, fhn_a/b/eps)",
    defaults=FHN_DEFAULTS,
    algorithms=FHN_RULES,
    persistent_init=True,
)
