"""The EP toolkit shared by every contrastive rule (Hopfield, predictive coding, intermediate signals):
the nudging schemes and the contrast of two equilibria.

The estimate of dC/dtheta from two nudged equilibria s_{beta_1}, s_{beta_2} is
    g = (dE/dtheta(s_{beta_2}) - dE/dtheta(s_{beta_1})) / (beta_2 - beta_1),
eq. (3) for CL (beta = 0, 1 with clamping), eq. (5) for P-EP (0, beta) and N-EP (-beta, 0), eq. (6) for C-EP
(-beta, +beta), eqs. (8)-(9) for the CpL variants. The phases run in that order, the comparative study's public
code's, so the second is the state a persistent free-phase start carries to the next step. The random scheme
draws the sign of a one-sided estimate per step, which removes its first-order bias in expectation (the PCN
paper's "random" finite difference).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.nudging import Beta, Cost, EPNudge

__all__ = ["SCHEMES", "SCHEME_ALIASES", "Scheme", "contrast", "nudged_energy_grads"]

# the nudging values as multiples of beta, in the order the phases run; None: drawn per step
SCHEMES: dict[str, tuple[float, float] | None] = {
    "positive": (0.0, 1.0),
    "negative": (-1.0, 0.0),
    "centered": (-1.0, 1.0),
    "random": None,
}
# the names the two papers use for the same schemes
SCHEME_ALIASES = {"forward": "positive", "backward": "negative"}


class Scheme:
    """Nudging values (beta_1, beta_2) of a scheme at strength ``beta``; ``seed`` seeds the random scheme (None:
    a seed drawn from torch's global generator, so that ``torch.manual_seed`` fixes the signs too)."""

    def __init__(self, name: str, beta: float, seed: int | None = None) -> None:
        name = SCHEME_ALIASES.get(name, name)
        if name not in SCHEMES:
            raise ValueError(
                f"unknown scheme {name!r}; valid schemes are {sorted(SCHEMES)} (or {sorted(SCHEME_ALIASES)})"
            )
        self.name, self.beta = name, float(beta)
        if seed is None and name == "random":  # reproducible under torch.manual_seed, as the rest of a run is
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self._rng = random.Random(seed)
        if name != "random" and self.betas[0] == self.betas[1]:
            raise ValueError(f"the two nudging values must differ, got beta_1 = beta_2 = {self.betas[0]}")
        if name == "random" and self.beta == 0.0:
            raise ValueError("the two nudging values must differ: the random scheme needs beta != 0")

    @property
    def betas(self) -> tuple[float, float]:
        """The nudging values of a fixed scheme."""
        signs = SCHEMES[self.name]
        if signs is None:
            raise ValueError("the random scheme draws its nudging values per step: use next_betas()")
        return signs[0] * self.beta, signs[1] * self.beta

    def rng_state(self) -> Any:
        """The random scheme's generator state (what a checkpoint keeps to draw the same signs on resume)."""
        return self._rng.getstate()

    def set_rng_state(self, state: Any) -> None:
        self._rng.setstate(state)

    def next_betas(self) -> tuple[float, float]:
        """The nudging values of the next step (a fresh sign for the random scheme)."""
        if self.name == "random":
            return 0.0, self._rng.choice((1.0, -1.0)) * self.beta
        return self.betas


def contrast(
    g1: Sequence[Tensor | None], g2: Sequence[Tensor | None], beta_1: float, beta_2: float
) -> list[Tensor | None]:
    """(g2 - g1) / (beta_2 - beta_1) per tensor: the EP / CpL / CL estimate from dE/dtheta at two equilibria."""
    if beta_1 == beta_2:
        raise ValueError(f"the two nudging values must differ, got beta_1 = beta_2 = {beta_1}")
    return [None if a is None or b is None else (b - a) / (beta_2 - beta_1) for a, b in zip(g1, g2)]


def nudged_energy_grads(model: Any, cost: Cost, y: Tensor, states: list[Tensor], beta: Beta) -> list[Tensor]:
    """dF/dtheta at a nudged state, F = E + beta C (batch mean): beta C depends on theta only through a readout
    outside the dynamics, so without one this is dE/dtheta."""
    readout = getattr(model, "readout", None)
    if readout is None:
        return model.energy_param_grads(states)
    return model.energy_param_grads(states, EPNudge(cost, y, beta, readout))
