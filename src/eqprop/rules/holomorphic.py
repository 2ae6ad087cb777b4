"""Holomorphic EP (Laborieux & Zenke, NeurIPS 2022): exact gradients from N nudged phases at a finite |beta|.

With complex nudging values on a circle, beta_k = |beta| e^{2 pi i k / N} (k = 0..N-1), and states relaxed to the
equilibria s_{beta_k} of the nudged energy F(s, beta) = E(s) + beta C(s) continued to complex states, the mean

    g_N = (1/N) sum_k dF/dtheta(s_{beta_k}, beta_k) / beta_k

is the N-point trapezoidal rule for Cauchy's integral (1/2 pi i) \\oint dF/dtheta(s_beta, beta) / beta^2 dbeta,
which equals d/dbeta dF/dtheta at beta = 0, the gradient of C(s_*) (EP's theorem). The error of the rule falls
geometrically with N (it aliases only the Taylor terms of order N, 2N, ... of beta -> dF/dtheta(s_beta)), so at a
finite, even large, |beta| the estimate becomes exact, unlike centered EP's O(beta^2) bias. N = 2 is centered EP.

What it assumes: the dynamics are holomorphic, so the complex states are an analytic continuation of the real
ones: holomorphic activations (``identity``, ``sigmoid``, ``tanh``, ``holo_hard_sigmoid``) and pooling
(``softmax``); parameters and inputs stay real. Then s_{conj beta} = conj(s_beta), and only the phases with
Im beta_k >= 0 are relaxed: the real ones (beta = |beta|, and -|beta| for even N), and the others, whose
contribution doubles to 2 Re(...), batched along the batch axis. The hard sigmoid and max-pooling are not
holomorphic: with them only N = 2 (all phases real: centered EP) is allowed; N > 2 is refused with the parts
to change.

The online variant (``periods`` = P >= 1) lets beta turn instead: from the free state, each of P periods runs
the N phases in turn, K iterations each, every phase starting from the state the previous one left, and the
estimate is the mean of Re(dF/dtheta(s, beta_k) / beta_k) over all N P phases. Once K iterations settle each
phase, this is the static estimate; with shorter phases the states lag the turning beta (a biased estimate that
needs no reset of the network between phases, as a physical system driven by an oscillating nudge would).
"""

from __future__ import annotations

import cmath
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ..core.nudging import Cost, EPNudge
from ..core.relaxation import RelaxResult, complex_dtype, get_solver
from .base import RelaxingAlgorithm, register_algorithm
from .contrast import contrast, nudged_energy_grads
from .phases import Phases

__all__ = ["HolomorphicEP", "circle"]


def circle(beta: float, points: int) -> list[complex]:
    """The N nudging values beta_k = |beta| e^{2 pi i k / N}, k = 0..N-1."""
    return [beta * cmath.exp(2j * cmath.pi * k / points) for k in range(points)]


class HolomorphicEP(RelaxingAlgorithm):
    """HEP: the free phase, then nudged phases at beta_k = |beta| e^{2 pi i k/N} from the free state (module
    docstring); ``points`` is N (>= 2), ``beta`` the radius |beta|. ``batch_phases`` relaxes the complex phases
    as one batch (B x their number) rather than one after another. ``periods`` > 0: the online variant."""

    name = "HEP"

    def __init__(
        self,
        *,
        beta: float = 0.5,
        points: int = 4,
        cost: str | Cost = "squared_error",
        phases: Phases | None = None,
        batch_phases: bool = True,
        periods: int = 0,
        **phase_options: Any,
    ) -> None:
        super().__init__(cost=cost, phases=phases, **phase_options)
        if int(points) != points or points < 2:
            raise ValueError(f"HEP needs points >= 2 nudged phases on the circle (N = 1 is P-EP), got {points}")
        if not beta > 0:
            raise ValueError(f"HEP needs a radius |beta| > 0, got {beta}")
        if int(periods) != periods or periods < 0:
            raise ValueError(f"HEP periods must be 0 (static phases) or >= 1 (the online variant), got {periods}")
        self.beta, self.points, self.batch_phases = float(beta), int(points), bool(batch_phases)
        self.periods = int(periods)

    @property
    def complex_betas(self) -> list[complex]:
        """The nudging values relaxed in complex arithmetic: those with 0 < arg beta < pi."""
        return circle(self.beta, self.points)[1 : (self.points + 1) // 2]

    def check_model(self, model: Any) -> None:
        """Refuse dynamics without a complex extension when complex phases are needed (N > 2)."""
        if self.points == 2:  # both phases real
            return
        bad = model.non_holomorphic() if hasattr(model, "non_holomorphic") else []
        if bad:
            raise ValueError(
                f"HEP with points={self.points} relaxes complex states, which needs holomorphic dynamics, but "
                f"{'; '.join(bad)}. Use a holomorphic activation (e.g. holo_hard_sigmoid, sigmoid, tanh) and "
                "pooling='softmax', or points=2 (centered EP, real phases only)"
            )

    def nudged_phase(self, model: Any, y: Tensor, free: RelaxResult, beta: float | complex | Tensor) -> RelaxResult:
        """K iterations from the free state at nudging value ``beta`` (complex: complex states; a tensor: one
        value per sample of a batch of stacked phases). Complex phases run with the messages solver in the
        parameters' precision even when the relaxation's ``dtype`` is 16-bit or its nudged phases run in
        deviation mode (neither has a complex form here)."""
        return self._relax(model, list(free.states), y, beta)

    def _relax(self, model: Any, states: list[Tensor], y: Tensor, beta: float | complex | Tensor) -> RelaxResult:
        """K iterations from ``states`` at ``beta``: real ones by the configured nudged phase, complex ones with
        the messages solver on complex states in the parameters' precision."""
        nudge = EPNudge(self.cost, y, beta, getattr(model, "readout", None))
        if not isinstance(beta, (complex, Tensor)) and not states[-1].is_complex():
            return self.phases.nudged(model, states, nudge)
        settings = self.phases.settings
        if settings.dtype in (torch.float16, torch.bfloat16):
            settings = replace(settings, dtype=None)
        solver = get_solver("messages", settings)
        pdtype = next(model.parameters()).dtype
        states = [states[0].to(pdtype)] + [s.to(complex_dtype(pdtype)) for s in states[1:]]
        with torch.no_grad():
            return solver(model, states, self.phases.nudged_iterations, nudge)

    def gradients(self, model, x, y, free):
        self.check_model(model)
        if self.periods:
            return self._online(model, y, free)
        n, r = self.points, self.beta
        s_plus = self.nudged_phase(model, y, free, r).states
        g_plus = nudged_energy_grads(model, self.cost, y, s_plus, r)
        if n % 2 == 0:  # beta_0 = r and beta_{N/2} = -r: twice the centered-EP contrast (N = 2: exactly C-EP)
            s_minus = self.nudged_phase(model, y, free, -r).states
            g_minus = nudged_energy_grads(model, self.cost, y, s_minus, -r)
            total = [None if g is None else 2.0 * g for g in contrast(g_minus, g_plus, -r, r)]
        else:
            total = [None if g is None else g / r for g in g_plus]
        if self.complex_betas:
            for i, g in enumerate(self._complex_terms(model, y, free)):
                have = total[i]
                if g is not None:
                    total[i] = g if have is None else have + g
        return [None if g is None else g / n for g in total]

    def _complex_terms(self, model: Any, y: Tensor, free: RelaxResult) -> list[Tensor | None]:
        """sum over the phases with 0 < arg beta_k < pi of 2 Re(dF/dtheta(s_k, beta_k) / beta_k) (batch mean);
        their conjugates contribute the conjugate terms."""
        betas, batch = self.complex_betas, free.states[0].shape[0]
        runs: list[tuple[list[Tensor], complex | Tensor, Tensor]]
        if self.batch_phases and len(betas) > 1:
            m = len(betas)
            stacked = RelaxResult([s.repeat(m, *([1] * (s.dim() - 1))) for s in free.states], free.iterations)
            ctype = complex_dtype(next(model.parameters()).dtype)
            per_sample = torch.tensor(betas, dtype=ctype, device=y.device).repeat_interleave(batch)
            runs = [(self.nudged_phase(model, y.repeat(m, 1), stacked, per_sample).states, per_sample, y.repeat(m, 1))]
        else:
            runs = [(self.nudged_phase(model, y, free, beta).states, beta, y) for beta in betas]
        params = list(model.parameters())
        with torch.enable_grad():
            objective = torch.stack([self._cauchy_term(model, s, target, beta) for s, beta, target in runs]).sum()
            return list(torch.autograd.grad(objective * (2.0 / batch), params, allow_unused=True))

    def _cauchy_term(self, model: Any, states: list[Tensor], y: Tensor, beta: complex | float | Tensor) -> Tensor:
        """sum over the batch of Re(F(s, beta) / beta), F the nudged energy at ``states``: its gradient in theta is
        a phase's term Re(dF/dtheta / beta_k) of Cauchy's mean (times the batch size)."""
        nudge = EPNudge(self.cost, y, beta, getattr(model, "readout", None))
        return (model.nudged_energy([s.detach() for s in states], nudge) / beta).real.sum()

    def _online(self, model: Any, y: Tensor, free: RelaxResult) -> list[Tensor | None]:
        """The online variant: ``periods`` turns of beta through the N points, each phase K iterations from the
        previous phase's state; the mean of Re(dF/dtheta(s, beta_k) / beta_k) over all the phases (batch mean).
        With N = 2 every phase is real; otherwise the states are complex throughout."""
        betas: list[float | complex] = list(circle(self.beta, self.points))
        if self.points == 2:
            betas = [self.beta, -self.beta]
        params = list(model.parameters())
        states, batch = list(free.states), y.shape[0]
        total: list[Tensor | None] = [None] * len(params)
        for _ in range(self.periods):
            for beta in betas:  # one backward per phase: memory stays that of one phase
                states = self._relax(model, states, y, beta).states
                with torch.enable_grad():
                    term = self._cauchy_term(model, states, y, beta) / batch
                    grads = torch.autograd.grad(term, params, allow_unused=True)
                total = [g if t is None else t if g is None else t + g for t, g in zip(total, grads)]
        scale = 1.0 / (self.points * self.periods)
        return [None if g is None else g * scale for g in total]

    def __repr__(self) -> str:
        online = f", online over {self.periods} periods" if self.periods else ""
        return f"HEP(|beta|={self.beta}, N={self.points}{online}, {self.phases.describe()}, cost={self.cost.name})"


register_algorithm("HEP", HolomorphicEP, options=("cost", "phases", "beta", "points", "periods"))
