"""Oracle: the comparative study's theorems and claims: the surrogate bounds (Theorem 2), C-EP -> RBP and the
bias orders (Theorem 3), Almeida-Pineda RBP as truncated implicit differentiation, block-coordinate descent of
the asynchronous schedule, the 16-bit contrast; the random-sign rules as the mean of the one-sided ones."""

import pytest
import torch

from eqprop import EPNudge, SquaredError, dchn, get_algorithm, one_hot, relax
from helpers import (
    CONVERGED,
    cosine,
    iterations_to,
    loglog_slope,
    max_diff,
    random_drn,
    rel_error,
    small_conv,
    small_mlp,
    total_energy_at,
)


@pytest.mark.parametrize("make", [small_mlp, small_conv])
def test_theorem2_surrogate_bounds(make):
    net, x, labels = make()
    y = one_hot(labels, 5, torch.float64)
    with torch.no_grad():
        free = relax(net, net.init_state(x), 400).states
        c = SquaredError()(free[-1], y)
        f0 = total_energy_at(net, x, y, 0.0, free)
        gaps = []
        for beta in (0.4, 0.2, 0.05):
            lower = (total_energy_at(net, x, y, beta, free) - f0) / beta
            upper = (total_energy_at(net, x, y, -beta, free) - f0) / -beta
            assert bool((lower <= c + 1e-10).all()) and bool((c <= upper + 1e-10).all())  # eq. (28)
            gaps.append(float((upper - lower).max()))
        assert gaps[0] > gaps[1] > gaps[2] > 0  # the bracket closes as beta -> 0 (eq. 27)


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
def test_almeida_pineda_rbp_is_backprop_through_k_synchronous_steps_and_converges_to_the_implicit_gradient(make):
    """The public code's RBP (``adjoint="almeida-pineda"``): at an exact fixed point, K steps of the recursion are
    backprop through K synchronous steps s <- sigma(dPhi/ds(s)) from it (unrolled here by autograd of Phi), and
    as K grows they converge to the CG adjoint's implicit gradient (the Neumann series of (I - D H)^{-1})."""
    net, x, labels = make()
    y = one_hot(labels, 5, torch.float64)
    cg = get_algorithm("RBP", cg_tol=1e-13, **CONVERGED)
    exact = cg.step(net, x, labels)
    assert 0 < cg.last_adjoint_steps < cg.cg_iterations  # CG stopped at its tolerance, not at the cap
    params = list(net.parameters())
    errors = []
    for k in (1, 3, 5, 20, 100):
        ap = get_algorithm("RBP", adjoint="almeida-pineda", nudged_iterations=k)
        grads = ap.gradients(net, x, y, exact.free)  # at the converged free state of the CG run
        errors.append(rel_error(grads, exact.grads))
        assert ap.last_adjoint_steps == k
        if k == 100:
            break
        with torch.enable_grad():
            s = [t.detach() for t in exact.free.states]
            for _ in range(k):
                s = [s[0]] + [net.layers[i].sigma.project(g) for i, g in enumerate(net.grad_phi(s, True), 1)]
            unrolled = torch.autograd.grad(SquaredError()(s[-1], y).mean(), params, allow_unused=True)
        unrolled = [torch.zeros_like(p) if g is None else g for p, g in zip(params, unrolled)]
        assert rel_error(grads, unrolled) < 1e-12, k
    assert errors[2] > 1e-2 and errors[2] > errors[3] > errors[4]  # the truncation is visible at K = 5 ...
    assert errors[4] < 1e-10  # ... and gone at K = 100 (measured: 7e-14 and 2e-14)


@pytest.mark.slow
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
    assert 1.8 < loglog_slope(betas, errs["CEP"]) < 2.2
    assert 0.85 < loglog_slope(betas, errs["PEP"]) < 1.15
    assert 0.85 < loglog_slope(betas, errs["NEP"]) < 1.15


def test_asynchronous_block_updates_never_increase_energy_on_dense_net():
    net, x, labels = small_mlp()
    y = one_hot(labels, 5, torch.float64)
    r = relax(net, net.init_state(x, "uniform"), 40, nudge=EPNudge(SquaredError(), y, 0.5), record=True)
    e = r.trajectory.energy
    assert all(b <= a + 1e-12 for a, b in zip(e, e[1:]))
    assert e[0] > e[-1]


@pytest.mark.slow
def test_asynchronous_converges_in_fewer_iterations_than_synchronous_on_a_dchn():
    torch.manual_seed(3)
    net = dchn(1, 10, channel_multiplier=1 / 16)  # 32x32 input, 4 conv layers, Table 5 gains 0.5
    x = torch.randn(16, 1, 32, 32)
    n_sync = iterations_to(net, x, "synchronous", 1e-4)
    n_async = iterations_to(net, x, "asynchronous", 1e-4)
    assert n_async < n_sync


def test_both_parity_orders_reach_the_same_fixed_point_but_differ_early():
    net, x, _ = small_mlp()
    even = relax(net, net.init_state(x), 300, first="even").states
    odd = relax(net, net.init_state(x), 300, first="odd").states
    assert max_diff(even, odd) < 1e-10
    assert (
        max_diff(
            relax(net, net.init_state(x), 2, first="even").states, relax(net, net.init_state(x), 2, first="odd").states
        )
        > 1e-3
    )


@pytest.mark.slow
def test_deviation_mode_keeps_the_contrast_that_16bit_states_lose():
    # From the same bf16 free state, nudged phases in deviation mode (fp32 states, bf16 convolutions of s - s0)
    # give the C-EP update of fp32 nudged phases; bf16 nudged phases lose the first layers' contrast.
    torch.manual_seed(0)
    net = dchn(3, 10, channel_multiplier=0.125)
    x, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    y = one_hot(labels, 10)
    free = relax(net, net.init_state(x), 60, dtype="bfloat16").states

    def update(**kw):
        s = [relax(net, free, 15, nudge=EPNudge(SquaredError(), y, b), **kw).states for b in (-0.25, 0.25)]
        assert all(
            t.dtype == (torch.bfloat16 if kw.get("dtype") == "bfloat16" and not kw.get("deviation") else torch.float32)
            for t in s[0]
        )
        g = [net.energy_param_grads(t) for t in s]
        return [(a - b) / 0.5 for a, b in zip(g[1], g[0])]

    full = update(dtype="float32")
    dev = update(dtype="bfloat16", deviation=True)
    same = update(dtype="bfloat16")
    assert min(cosine(a, b) for a, b in zip(dev, full)) > 0.999
    assert min(cosine(a, b) for a, b in zip(same, full)) < 0.9  # the test can tell the two apart


def _drn_case():
    net = random_drn()
    torch.manual_seed(1)
    x = torch.rand(6, 5, dtype=torch.float64)
    return net, x, torch.randint(0, 3, (6,))


@pytest.mark.parametrize("case", ["hopfield", "drn"])
@pytest.mark.parametrize(
    "rule, one_sided, centered", [("REP", ("PEP", "NEP"), "CEP"), ("RCpL", ("PCpL", "NCpL"), "CCpL")]
)
def test_random_sign_rules_draw_a_one_sided_estimate_whose_mean_is_the_centered_one(case, rule, one_sided, centered):
    """REP (RCpL) nudges once per step, at +beta or -beta by a drawn sign: each step's estimate is P-EP's or N-EP's
    (P-CpL's or N-CpL's), both signs come up, and the two estimates' mean is the centered rule's,
    (g(b) - g(-b)) / 2b, since both one-sided estimates subtract the same beta = 0 phase."""
    if case == "hopfield":
        net, x, labels = small_mlp()
        opts = dict(free_iterations=60, nudged_iterations=30)
    else:
        net, x, labels = _drn_case()
        opts = dict(free_iterations=20, nudged_iterations=20, solver="coordinate-descent", cost="half_squared_error")
    beta = 0.1
    ref = {name: get_algorithm(name, beta=beta, **opts).step(net, x, labels).grads for name in (*one_sided, centered)}
    random_rule = get_algorithm(rule, beta=beta, seed=3, **opts)
    drawn = []
    for _ in range(12):
        grads = random_rule.step(net, x, labels).grads
        match = [name for name in one_sided if max_diff(grads, ref[name]) < 1e-12]
        assert len(match) == 1, f"{rule}: a step's estimate is neither {one_sided[0]}'s nor {one_sided[1]}'s"
        drawn.append(match[0])
    assert set(drawn) == set(one_sided)  # both signs in 12 draws (seeded)
    mean = [(a + b) / 2 for a, b in zip(ref[one_sided[0]], ref[one_sided[1]])]
    assert max_diff(mean, ref[centered]) < 1e-12
    assert max_diff(ref[one_sided[0]], ref[centered]) > 1e-6  # the one-sided estimates differ: the check can fail
