"""Oracle: central finite differences. RBP against the converged cost, and the EP estimates at finite beta
against the surrogate losses of Theorem 5 (comparative study)."""

import numpy as np
import pytest
import torch

from eqprop import SquaredError, get_algorithm, one_hot, relax
from helpers import CONVERGED, central_difference, small_conv, small_mlp, total_energy_at


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,beta", [("PEP", 0.2), ("NEP", 0.2), ("CEP", 0.2)])
def test_theorem5_ep_update_is_exact_gradient_of_surrogate(algorithm, beta):
    """At finite beta, the EP estimate equals dL/dtheta of L_beta (eq. 21) or L_{-beta;+beta} (eq. 22)."""
    net, x, labels = small_mlp()
    y = one_hot(labels, 5, torch.float64)
    est = get_algorithm(algorithm, beta=beta, **CONVERGED).step(net, x, labels).grads
    b1, b2 = {"PEP": (0.0, beta), "NEP": (0.0, -beta), "CEP": (-beta, beta)}[algorithm]

    def surrogate():
        with torch.no_grad():
            free = relax(net, net.init_state(x), 400).states
            return float(
                (total_energy_at(net, x, y, b2, free) - total_energy_at(net, x, y, b1, free)).mean() / (b2 - b1)
            )

    rng = np.random.default_rng(0)
    for p, g in zip(net.parameters(), est):
        for flat in rng.choice(p.numel(), size=3, replace=False):
            idx = np.unravel_index(flat, p.shape)
            fd = central_difference(p, idx, surrogate)
            assert abs(fd - float(g[idx])) < 1e-6 + 1e-4 * abs(fd)


@pytest.mark.slow
@pytest.mark.parametrize("make", [small_mlp, small_conv])
def test_rbp_matches_finite_differences_of_the_cost(make):
    """RBP is the oracle of the C-EP and signal tests, so it is pinned itself: against central differences of
    the converged cost, on entries whose gradient is not zero (saturated units give exact zeros, which a wrong
    RBP would match too)."""
    net, x, labels = make()
    y = one_hot(labels, 5, torch.float64)
    rbp = get_algorithm("RBP", cg_tol=1e-12, **CONVERGED).step(net, x, labels).grads

    def cost():
        with torch.no_grad():
            o = relax(net, net.init_state(x), 400).states[-1]
            return float(SquaredError()(o, y).mean())

    rng = np.random.default_rng(0)
    checked = 0
    for p, g in zip(net.parameters(), rbp):
        live = (g.abs() > 1e-3 * float(g.abs().max())).flatten().nonzero().flatten().numpy()
        assert len(live) > 0, "every parameter tensor has entries with a non-zero gradient"
        for flat in rng.choice(live, size=min(3, len(live)), replace=False):
            idx = np.unravel_index(flat, p.shape)
            fd = central_difference(p, idx, cost)
            assert abs(fd - float(g[idx])) < 1e-8 + 1e-4 * abs(fd), f"entry {idx}: RBP {float(g[idx])}, FD {fd}"
            checked += 1
    assert checked >= 2 * len(rbp)
