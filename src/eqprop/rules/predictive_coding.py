"""Learning rules for predictive-coding networks (PCN paper, section 3): the two perturbation methods, each with
the four finite-difference schemes, and the backprop baseline.

- Nudging (eq. 4), EP: PC-PEP forward +beta, PC-NEP backward -beta, PC-REP random sign, PC-CEP centered +-beta
  (eq. 7, O(beta^2) bias); the one-sided ones need a single nudged state (eq. 11).
- Clamping (eq. 8): PC-PCpL, PC-NCpL, PC-RCpL, PC-CCpL hold the output at (1 - beta) h_L^0 + beta y and relax
  the hidden layers. Clamping defines no cost: its updates are not a gradient in general, even as beta -> 0.

All are the one :class:`~eqprop.rules.contrastive.Contrastive` rule run with the PCN's phases: the free phase is
the forward pass (E = 0 and dF/dtheta = 0 there, so a beta = 0 phase is not relaxed) and the perturbed phases run
the ``mod-pgd`` solver (eq. 20; ``solver=pgd`` for eq. 19).
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.predictive_coding import PredictiveCodingNetwork
from .base import LearningAlgorithm, register_algorithm
from .contrastive import Contrastive

__all__ = [
    "PCBackprop",
    "PCEquilibriumPropagation",
    "pc_equilibrium_propagation",
    "PC_SCHEMES",
    "PC_CLAMPED_SCHEMES",
]

PC_SCHEMES = {"PC-PEP": "positive", "PC-NEP": "negative", "PC-REP": "random", "PC-CEP": "centered"}
PC_CLAMPED_SCHEMES = {"PC-PCpL": "positive", "PC-NCpL": "negative", "PC-RCpL": "random", "PC-CCpL": "centered"}


def pc_equilibrium_propagation(name: str):
    """The registry factory of a PC rule (nudged or clamped): defaults beta = 0.05, K = 10, ``mod-pgd``."""
    mode, scheme = ("ep", PC_SCHEMES[name]) if name in PC_SCHEMES else ("clamp", PC_CLAMPED_SCHEMES[name])

    def factory(**kwargs: Any) -> Contrastive:
        kwargs.setdefault("beta", 0.05)
        if "phases" not in kwargs:
            kwargs.setdefault("nudged_iterations", 10)
            kwargs.setdefault("solver", "mod-pgd")
        return Contrastive(name, mode, scheme, **kwargs)

    factory.builds = Contrastive  # type: ignore[attr-defined]  # what get_algorithm reads the options from
    factory.fixed = ("name", "mode", "scheme")  # type: ignore[attr-defined]
    return factory


class PCBackprop(LearningAlgorithm):
    """The baseline: backpropagation of C(f_L(...f_1(x)), y) through the forward pass."""

    name = "PC-BP"

    def free_phase(self, model, x):
        return model.free_phase(x)

    def gradients(self, model, x, y, free):
        if not isinstance(model, PredictiveCodingNetwork):
            raise TypeError(f"{self.name} trains predictive-coding networks (model=pcn), got {type(model).__name__}")
        with torch.enable_grad():
            out = model.forward_pass(x)[-1]
            return list(torch.autograd.grad(self.cost(out, y).mean(), list(model.parameters())))


for _name in [*PC_SCHEMES, *PC_CLAMPED_SCHEMES]:
    register_algorithm(
        _name, pc_equilibrium_propagation(_name), families=("pcn",), options=("cost", "phases", "beta", "seed")
    )
register_algorithm("PC-BP", PCBackprop, families=("pcn",), options=("cost",))


def PCEquilibriumPropagation(scheme: str = "centered", **kwargs: Any) -> Contrastive:  # noqa: N802 (kept API name)
    """A PC-EP rule by scheme ("positive"/"forward", "negative"/"backward", "random", "centered")."""
    from .contrast import SCHEME_ALIASES

    scheme = SCHEME_ALIASES.get(scheme, scheme)
    names = {v: k for k, v in PC_SCHEMES.items()}
    if scheme not in names:
        raise ValueError(f"unknown scheme {scheme!r}; valid schemes are {sorted(names)}")
    return pc_equilibrium_propagation(names[scheme])(**kwargs)
