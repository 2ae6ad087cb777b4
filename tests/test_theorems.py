"""The EP theorems of the comparative study (appendix A) and agreement with implicit differentiation."""

import numpy as np
import pytest
import torch

from eqprop import EPNudge, SquaredError, get_algorithm, one_hot, relax
from helpers import cosine, rel_error, small_conv, small_mlp

CONVERGED = dict(free_iterations=400, nudged_iterations=400)


def _central_difference(p, idx, fn, h=1e-6):
    """(fn(theta + h e_idx) - fn(theta - h e_idx)) / 2h for one entry of parameter ``p``, restored after."""
    with torch.no_grad():
        old = p[idx].item()
        p[idx] = old + h
        up = fn()
        p[idx] = old - h
        down = fn()
        p[idx] = old
    return (up - down) / (2 * h)


def _F(net, x, y, beta, free_states, cost=None):
    """F(beta) = min_s E + beta C (eq. 20), by relaxation from the free state; per-sample values."""
    cost = cost or SquaredError()
    s = relax(net, free_states, 400, nudge=EPNudge(cost, y, beta)).states if beta else free_states
    return net.energy(s) + beta * cost(s[-1], y)


@pytest.mark.parametrize("make", [small_mlp, small_conv])
def test_theorem2_surrogate_bounds(make):
    net, x, labels = make()
    y = one_hot(labels, 5, torch.float64)
    with torch.no_grad():
        free = relax(net, net.init_state(x), 400).states
        c = SquaredError()(free[-1], y)
        f0 = _F(net, x, y, 0.0, free)
        gaps = []
        for beta in (0.4, 0.2, 0.05):
            lower = (_F(net, x, y, beta, free) - f0) / beta
            upper = (_F(net, x, y, -beta, free) - f0) / -beta
            assert bool((lower <= c + 1e-10).all()) and bool((c <= upper + 1e-10).all())  # eq. (28)
            gaps.append(float((upper - lower).max()))
        assert gaps[0] > gaps[1] > gaps[2] > 0  # the bracket closes as beta -> 0 (eq. 27)


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
            return float((_F(net, x, y, b2, free) - _F(net, x, y, b1, free)).mean() / (b2 - b1))

    rng = np.random.default_rng(0)
    for p, g in zip(net.parameters(), est):
        for flat in rng.choice(p.numel(), size=3, replace=False):
            idx = np.unravel_index(flat, p.shape)
            fd = _central_difference(p, idx, surrogate)
            assert abs(fd - float(g[idx])) < 1e-6 + 1e-4 * abs(fd)


@pytest.mark.parametrize("make", [small_mlp, small_conv])
def test_cep_matches_recurrent_backprop(make):
    net, x, labels = make()
    rbp = get_algorithm("RBP", **CONVERGED).step(net, x, labels).grads
    cep = get_algorithm("CEP", beta=1e-3, **CONVERGED).step(net, x, labels).grads
    for a, b in zip(cep, rbp):
        assert cosine(a, b) >= 0.999
    assert rel_error(cep, rbp) < 1e-4
    # BPTT through a long free phase converges to the implicit gradient too
    bptt = get_algorithm("BPTT", free_iterations=400).step(net, x, labels).grads
    for a, b in zip(bptt, rbp):
        assert cosine(a, b) >= 0.999
    # and a short BPTT does not (the check can fail)
    short = get_algorithm("BPTT", free_iterations=2).step(net, x, labels).grads
    assert rel_error(short, rbp) > 1e-2


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
            fd = _central_difference(p, idx, cost)
            assert abs(fd - float(g[idx])) < 1e-8 + 1e-4 * abs(fd), f"entry {idx}: RBP {float(g[idx])}, FD {fd}"
            checked += 1
    assert checked >= 2 * len(rbp)


def _slope(betas, errors):
    return float(np.polyfit(np.log(betas), np.log(errors), 1)[0])


@pytest.mark.parametrize("make", [small_mlp, small_conv])
def test_theorem3_bias_orders(make):
    """C-EP's error against RBP falls like beta^2, P-/N-EP's like beta (eqs. 13, 15)."""
    net, x, labels = make()
    rbp = get_algorithm("RBP", cg_tol=1e-13, **CONVERGED).step(net, x, labels).grads
    betas = [4e-3, 2e-3, 1e-3, 5e-4]
    errs = {
        name: [rel_error(get_algorithm(name, beta=b, **CONVERGED).step(net, x, labels).grads, rbp) for b in betas]
        for name in ("CEP", "PEP", "NEP")
    }
    assert 1.8 < _slope(betas, errs["CEP"]) < 2.2
    assert 0.85 < _slope(betas, errs["PEP"]) < 1.15
    assert 0.85 < _slope(betas, errs["NEP"]) < 1.15


def test_truncated_backprop_engines_agree():
    net, x, labels = small_conv()
    kw = dict(free_iterations=50, nudged_iterations=5)
    fast = get_algorithm("TBP", **kw).step(net, x, labels).grads
    ref = get_algorithm("TBP", engine="autograd", **kw).step(net, x, labels).grads
    assert rel_error(fast, ref) < 1e-10
