"""Contrastive rules: EP (nudging, eq. 4), CpL (clamping, eq. 7) and CL (clamping to y, eq. 2).

One step (appendix D): the free phase, then two nudged phases from the free state with the scheme's nudging
values (beta_1, beta_2), then the contrast of dE/dtheta at the two nudged states
(:func:`~eqprop.rules.contrast.contrast`). The same rule trains every model family whose phases it is given:
Hopfield networks (the comparative study's seven rules) and predictive-coding networks (PC-EP); intermediate
learning signals (scalable-EP paper) add forces on hidden layers in the nudged phases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.nudging import AugmentedNudge, ClampNudge, Cost, EPNudge, Nudge
from ..core.relaxation import RelaxResult
from .base import RelaxingAlgorithm, register_algorithm
from .contrast import Scheme, contrast, nudged_energy_grads
from .phases import Phases

__all__ = ["Contrastive", "MODES"]

MODES = ("ep", "clamp")


class Contrastive(RelaxingAlgorithm):
    """A contrastive rule: ``mode="ep"`` nudges with E + beta C, ``mode="clamp"`` clamps the output to
    (1 - beta) o_* + beta y; ``scheme`` picks the nudging values (positive, negative, centered, random).

    ``signals`` (EP only) are intermediate learning signals, weighted by ``kappa`` (set per epoch by a kappa
    schedule)."""

    def __init__(
        self,
        name: str,
        mode: str,
        scheme: str,
        *,
        beta: float = 0.25,
        cost: str | Cost = "squared_error",
        phases: Phases | None = None,
        signals: Sequence[Any] = (),
        kappa: float = 1.0,
        seed: int | None = None,
        **phase_options: Any,
    ) -> None:
        super().__init__(cost=cost, phases=phases, **phase_options)
        if mode not in MODES:
            raise ValueError(f"mode must be 'ep' or 'clamp', got {mode!r}")
        if signals and mode != "ep":
            raise ValueError(f"{name}: intermediate learning signals need EP nudging (P-/N-/C-EP), not clamping")
        try:
            self.scheme = Scheme(scheme, beta, seed)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        self.name, self.mode = name, mode
        self.signals, self.kappa = list(signals), float(kappa)

    @property
    def beta(self) -> float:
        return self.scheme.beta

    @property
    def betas(self) -> tuple[float, float]:
        """The nudging values (beta_1, beta_2) of a fixed scheme."""
        return self.scheme.betas

    def next_betas(self) -> tuple[float, float]:
        """The nudging values of the next step (drawn for the random scheme)."""
        return self.scheme.next_betas()

    def nudge(
        self, beta: float, y: Tensor, free: RelaxResult, signal_targets: Sequence[Tensor] = (), readout: Any = None
    ) -> Nudge:
        if self.mode == "clamp":
            if readout is not None:
                raise ValueError(
                    f"{self.name} clamps the output layer, but this network reads its output through a readout "
                    "outside the dynamics; use an EP rule (PEP, NEP, CEP, HEP) or a network without readout"
                )
            return ClampNudge.coupled(free.states[-1], y, beta)
        if self.signals and self.kappa != 0.0:  # eq. 10: beta (L_EP + kappa sum_i L_Aug,i)
            return AugmentedNudge(EPNudge(self.cost, y, beta, readout), self.signals, signal_targets, self.kappa)
        return EPNudge(self.cost, y, beta, readout)

    def nudged_phase(
        self, model: Any, y: Tensor, free: RelaxResult, beta: float, signal_targets: Sequence[Tensor] = ()
    ) -> RelaxResult:
        """K iterations from the free state with nudging value ``beta`` (eq. 4 or eq. 7). At beta = 0 a model
        whose free phase is exact (``exact_free_phase``, e.g. a PCN's forward pass) is already there."""
        if beta == 0.0 and getattr(model, "exact_free_phase", False):  # no nudge, or clamped to the free output
            return free
        nudge = self.nudge(beta, y, free, signal_targets, getattr(model, "readout", None))
        return self.phases.nudged(model, free.states, nudge)

    def notes(self, model: Any) -> list[str]:
        """A PCN nudged for fewer mod-PGD iterations than it has layers: its nudged phase cannot settle."""
        need, k = getattr(model, "settling_iterations", None), self.phases.nudged_iterations
        if self.mode != "ep" or self.phases.solver != "mod-pgd" or need is None or k >= need:
            return []
        return [
            f"{self.name}: K = {k} nudged iterations, fewer than the model's {need} layers: the nudged phase does "
            f"not reach its fixed point, and the gradient estimate degrades as the weights grow in training; "
            f"K = {need} settles it (PCN paper section 5.2: the best K is the number of layers; "
            "docs/predictive_coding.md)"
        ]

    def gradients(self, model, x, y, free):
        b1, b2 = self.next_betas()
        targets = [sig.target(x, y) for sig in self.signals] if self.kappa != 0.0 else []  # no teacher pass when off
        s1 = self.nudged_phase(model, y, free, b1, targets).states
        s2 = self.nudged_phase(model, y, free, b2, targets).states
        direct = getattr(model, "energy_param_contrast", None)  # a model's fused form of the same contrast
        if callable(direct) and getattr(model, "readout", None) is None:
            grads = direct(s1, s2, b1, b2)
        else:
            g1, g2 = (nudged_energy_grads(model, self.cost, y, s, b) for s, b in ((s1, b1), (s2, b2)))
            grads = contrast(g1, g2, b1, b2)
        self._signal_grads(y, free, targets, (b1, s1), (b2, s2))
        return grads

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
            e1, e2 = (
                self.nudge(b, y, free, targets).hidden_energy([t.detach() for t in s]).mean()
                for b, s in ((b1, s1), (b2, s2))
            )
            g1 = torch.autograd.grad(e1, params, allow_unused=True)
            g2 = torch.autograd.grad(e2, params, allow_unused=True)
        for p, g in zip(params, contrast(g1, g2, b1, b2)):
            p.grad = None if g is None else g.detach()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.scheme.name == "random":  # the signs still to be drawn
            state["scheme_rng"] = self.scheme.rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "scheme_rng" in state:
            self.scheme.set_rng_state(state["scheme_rng"])

    def __repr__(self) -> str:
        b1_b2 = "random" if self.scheme.name == "random" else self.betas
        return f"{self.name}(betas={b1_b2}, {self.phases.describe()}, cost={self.cost.name})"


def contrastive_rule(name: str, mode: str, scheme: str, beta: float | None = None):
    """A registry factory for a contrastive rule (``beta`` fixes the nudging strength, as CL's clamp to y)."""

    def factory(**kwargs: Any) -> Contrastive:
        if beta is not None:
            kwargs["beta"] = beta
        return Contrastive(name, mode, scheme, **kwargs)

    factory.builds = Contrastive  # type: ignore[attr-defined]  # what get_algorithm reads the options from
    factory.fixed = ("name", "mode", "scheme", *(("beta",) if beta is not None else ()))  # type: ignore[attr-defined]
    return factory


_OPTIONS = ("cost", "phases", "beta", "seed")
register_algorithm("CL", contrastive_rule("CL", "clamp", "positive", beta=1.0))  # beta fixed: CL clamps to y
register_algorithm("PEP", contrastive_rule("PEP", "ep", "positive"), options=_OPTIONS)
register_algorithm("NEP", contrastive_rule("NEP", "ep", "negative"), options=_OPTIONS)
register_algorithm("CEP", contrastive_rule("CEP", "ep", "centered"), options=_OPTIONS)
register_algorithm("PCpL", contrastive_rule("PCpL", "clamp", "positive"), options=_OPTIONS)
register_algorithm("NCpL", contrastive_rule("NCpL", "clamp", "negative"), options=_OPTIONS)
register_algorithm("CCpL", contrastive_rule("CCpL", "clamp", "centered"), options=_OPTIONS)
# One nudged phase per step at +beta or -beta, the sign drawn per step (seeded, kept in checkpoints): P-EP's or
# N-EP's estimate (P-CpL's or N-CpL's), whose mean over the two signs is C-EP's (C-CpL's) exactly; two phases per
# step where the centered rules need three.
register_algorithm("REP", contrastive_rule("REP", "ep", "random"), options=_OPTIONS)
register_algorithm("RCpL", contrastive_rule("RCpL", "clamp", "random"), options=_OPTIONS)
