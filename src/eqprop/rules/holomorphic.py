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

``fallback_tol``: a complex phase may fail to settle for some samples (|beta| near a singularity of s_beta, or
too few iterations). A sample whose complex phases still move a unit by more than ``fallback_tol`` in one more
iteration, or are not finite, falls back to its real phases: centered EP at +-|beta| for even N, positive EP at
|beta| (with the free state) for odd N. The other samples keep the N-point estimate; the batch mean is over all
samples. The authors' code also falls back to the real phases, on a residual test of its own. ``last_fallbacks``
and ``last_residual`` report the last step.
"""

from __future__ import annotations

import cmath
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core.nudging import Cost, EPNudge
from ..core.relaxation import RelaxResult, complex_dtype, get_solver, largest_change
from ..settings import Section, register_section, setting
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
        fallback_tol: float | None = None,
        **phase_options: Any,
    ) -> None:
        super().__init__(cost=cost, phases=phases, **phase_options)
        if int(points) != points or points < 2:
            raise ValueError(f"HEP needs points >= 2 nudged phases on the circle (N = 1 is P-EP), got {points}")
        if not beta > 0:
            raise ValueError(f"HEP needs a radius |beta| > 0, got {beta}")
        if int(periods) != periods or periods < 0:
            raise ValueError(f"HEP periods must be 0 (static phases) or >= 1 (the online variant), got {periods}")
        if fallback_tol is not None and not fallback_tol > 0:
            raise ValueError(f"HEP fallback_tol must be None (no fallback) or > 0, got {fallback_tol}")
        if fallback_tol is not None and periods:
            raise ValueError(
                "HEP fallback_tol applies to the static phases (periods=0); the online variant carries each phase's "
                "state into the next, so a sample cannot drop its complex phases alone"
            )
        self.beta, self.points, self.batch_phases = float(beta), int(points), bool(batch_phases)
        self.periods = int(periods)
        self.fallback_tol = None if fallback_tol is None else float(fallback_tol)
        self.last_fallbacks = 0  # samples of the last step that fell back to the real phases
        self.last_residual: Tensor | None = None  # per sample: the largest move of its complex phases' last check

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

    def _relax(
        self, model: Any, states: list[Tensor], y: Tensor, beta: float | complex | Tensor, iterations: int | None = None
    ) -> RelaxResult:
        """K iterations (or ``iterations``) from ``states`` at ``beta``: real ones by the configured nudged phase,
        complex ones with the messages solver on complex states in the parameters' precision."""
        nudge = EPNudge(self.cost, y, beta, getattr(model, "readout", None))
        if not isinstance(beta, (complex, Tensor)) and not states[-1].is_complex():
            return self.phases.nudged(model, states, nudge)
        settings = self.phases.settings
        if settings.dtype in (torch.float16, torch.bfloat16):
            settings = replace(settings, dtype=None)
        solver = get_solver(getattr(model, "complex_solver", "messages"), settings)  # a model may name its own
        pdtype = next(model.parameters()).dtype
        states = [states[0].to(pdtype)] + [s.to(complex_dtype(pdtype)) for s in states[1:]]
        with torch.no_grad():
            return solver(model, states, self.phases.nudged_iterations if iterations is None else iterations, nudge)

    def _residual(self, model: Any, states: list[Tensor], y: Tensor, beta: complex | Tensor) -> Tensor:
        """Per sample, the largest move of any unit in one more iteration from a complex phase's states (inf where
        a state is not finite): how far the phase is from its fixed point."""
        moved = self._relax(model, states, y, beta, iterations=1).states
        finite = torch.stack([torch.isfinite(s).flatten(1).all(1) for s in states[1:]]).all(0)
        return torch.where(finite, largest_change(moved[1:], states[1:]), torch.inf)

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
        self.last_fallbacks, self.last_residual = 0, None
        if self.complex_betas:
            terms, keep = self._complex_terms(model, y, free)
            for i, g in enumerate(terms):
                have = total[i]
                if g is not None:
                    total[i] = g if have is None else have + g
            if keep is not None and not bool(keep.all()):
                minus = s_minus if n % 2 == 0 else None
                return self._fall_back(model, y, list(free.states), s_plus, minus, total, ~keep)
        return [None if g is None else g / n for g in total]

    def step_counts(self) -> dict[str, float]:
        """With ``fallback_tol``: how many samples of the last step fell back (summed per epoch as
        ``hep_fallbacks`` in the run's metrics)."""
        return {} if self.fallback_tol is None else {"hep_fallbacks": self.last_fallbacks}

    def _fall_back(
        self,
        model: Any,
        y: Tensor,
        free: list[Tensor],
        s_plus: list[Tensor],
        s_minus: list[Tensor] | None,
        total: list[Tensor | None],
        dropped: Tensor,
    ) -> list[Tensor | None]:
        """The batch mean when the ``dropped`` samples use their real phases only. ``total`` holds every sample's
        real terms and the kept samples' complex terms, all to be divided by N. A dropped sample's estimate is
        instead centered EP, (R+ + R-) / 2 with R+- = dF/dtheta(s_{+-r}, +-r) / (+-r), for even N; and positive
        EP, R+ - dE/dtheta(s_0) / r, for odd N (its real phase alone would lack the free term that the circle's
        mean cancels)."""
        self.last_fallbacks = int(dropped.sum())
        n, r, batch, weights = self.points, self.beta, y.shape[0], dropped.to(y.dtype)
        pdtype = next(model.parameters()).dtype  # the real phases may have run in 16 bits

        def term(states: list[Tensor], beta: float) -> Tensor:
            return self._cauchy_term(model, [t.to(pdtype) for t in states], y, beta, weights)

        with torch.enable_grad():
            if s_minus is not None:
                objective = (0.5 - 1.0 / n) * (term(s_plus, r) + term(s_minus, -r))
            else:
                readout = getattr(model, "readout", None)
                energy = model.nudged_energy([t.to(pdtype) for t in free], EPNudge(self.cost, y, 0.0, readout))
                objective = (1.0 - 1.0 / n) * term(s_plus, r) - (energy * weights).sum() / r
            extra = torch.autograd.grad(objective / batch, list(model.parameters()), allow_unused=True)
        return [None if g is None else g / n + (0.0 if d is None else d) for g, d in zip(total, extra, strict=True)]

    def _complex_terms(self, model: Any, y: Tensor, free: RelaxResult) -> tuple[list[Tensor | None], Tensor | None]:
        """sum over the phases with 0 < arg beta_k < pi of 2 Re(dF/dtheta(s_k, beta_k) / beta_k) (batch mean);
        their conjugates contribute the conjugate terms. With ``fallback_tol``, also which samples keep them
        (the others' terms are left out)."""
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
        keep, weights = None, None
        if self.fallback_tol is not None:
            residual = torch.stack(
                [self._residual(model, s, target, beta).view(-1, batch) for s, beta, target in runs]
            ).amax((0, 1))
            keep, self.last_residual = residual <= self.fallback_tol, residual
            weights = keep.to(y.dtype)
            # a dropped sample's states may be inf or nan: replace them (by the free state) before the energy,
            # so that its zero weight gives exactly zero terms
            runs = [(self._kept(s, free.states, keep), beta, target) for s, beta, target in runs]
        params = list(model.parameters())
        with torch.enable_grad():
            objective = torch.stack(
                [self._cauchy_term(model, s, target, beta, weights) for s, beta, target in runs]
            ).sum()
            return list(torch.autograd.grad(objective * (2.0 / batch), params, allow_unused=True)), keep

    @staticmethod
    def _kept(states: list[Tensor], free: list[Tensor], keep: Tensor) -> list[Tensor]:
        """``states`` (one or more phases stacked along the batch) with each dropped sample's replaced by its
        free state."""
        reps = states[0].shape[0] // keep.shape[0]
        mask = keep.repeat(reps)
        out = [states[0]]
        for s, f in zip(states[1:], free[1:]):
            m = mask.view(-1, *([1] * (s.dim() - 1)))
            out.append(torch.where(m, s, f.repeat(reps, *([1] * (f.dim() - 1))).to(s.dtype)))
        return out

    def _cauchy_term(
        self,
        model: Any,
        states: list[Tensor],
        y: Tensor,
        beta: complex | float | Tensor,
        weights: Tensor | None = None,
    ) -> Tensor:
        """sum over the batch of Re(F(s, beta) / beta), F the nudged energy at ``states`` (each sample's term times
        its entry of ``weights``, repeated over stacked phases): its gradient in theta is a phase's term
        Re(dF/dtheta / beta_k) of Cauchy's mean (times the batch size)."""
        nudge = EPNudge(self.cost, y, beta, getattr(model, "readout", None))
        terms = (model.nudged_energy([s.detach() for s in states], nudge) / beta).real
        if weights is not None:
            terms = terms * weights.repeat(terms.shape[0] // weights.shape[0])
        return terms.sum()

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
        fallback = f", fallback_tol={self.fallback_tol}" if self.fallback_tol is not None else ""
        return (
            f"HEP(|beta|={self.beta}, N={self.points}{online}{fallback}, {self.phases.describe()}, "
            f"cost={self.cost.name})"
        )


@dataclass
class HEPSection(Section):
    """The ``hep`` section: holomorphic EP's number of phases, online periods and real-phase fallback."""

    name: ClassVar[str] = "hep"
    moved_from: ClassVar[tuple[str, ...]] = ("rule",)
    options: ClassVar[dict[str, str]] = {"points": "points", "periods": "periods", "fallback_tol": "fallback_tol"}
    points: int = setting(4, "HEP: N nudged phases at beta_k = |beta| exp(2 pi i k/N) (N = 2: centered EP)")
    periods: int = setting(0, "HEP: 0 static phases from the free state; P >= 1 the online variant, P turns of beta")
    fallback_tol: float | None = setting(
        None, "HEP: a sample whose complex phases still move a unit by more than this falls back to its real phases"
    )

    def validate(self) -> None:
        self.at_least(2, "points")
        self.at_least(0, "periods")
        self.positive("fallback_tol")


register_section(HEPSection, "algorithm=HEP")
register_algorithm("HEP", HolomorphicEP, options=("cost", "phases", "beta", "points", "periods", "fallback_tol"))
