"""Learning rules for predictive-coding networks: EP with the four finite-difference schemes (PC-PEP forward +beta,
PC-NEP backward -beta, PC-REP random sign, PC-CEP centered +-beta with O(beta^2) bias) and the backprop baseline.

The EP rules are the one :class:`~eqprop.rules.contrastive.Contrastive` rule run with the PCN's phases: the free
phase is the forward pass (E = 0 and dF/dtheta = 0 there, so a beta = 0 phase is not relaxed) and the nudged
phases run the ``mod-pgd`` solver.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.predictive_coding import PredictiveCodingNetwork
from .base import LearningAlgorithm, register_algorithm
from .contrastive import Contrastive

__all__ = ["PCBackprop", "PCEquilibriumPropagation", "pc_equilibrium_propagation", "PC_SCHEMES"]

PC_SCHEMES = {"PC-PEP": "positive", "PC-NEP": "negative", "PC-REP": "random", "PC-CEP": "centered"}


def pc_equilibrium_propagation(name: str):
    """The registry factory of a PC-EP rule: defaults beta = 0.05, K = 10 and the ``mod-pgd`` solver."""

    def factory(**kwargs: Any) -> Contrastive:
        kwargs.setdefault("beta", 0.05)
        if "phases" not in kwargs:
            kwargs.setdefault("nudged_iterations", 10)
            kwargs.setdefault("solver", "mod-pgd")
        return Contrastive(name, "ep", PC_SCHEMES[name], **kwargs)

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


for _name in PC_SCHEMES:
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
