"""Oracle: the PCN paper's claims: PC-EP -> backprop at O(beta^2) (centered) and O(beta) (one-sided)."""

import math

import pytest
import torch
from torch.nn.functional import one_hot

from eqprop import get_algorithm
from eqprop.core.nudging import get_cost
from eqprop.models.predictive_coding import PC_LAYERS, PredictiveCodingNetwork
from helpers import rel_error, skip_pcn, small_pcn


@pytest.mark.parametrize("cost, tol", [("squared_error", 1e-5), ("cross_entropy", 1e-6)])
def test_centered_ep_matches_backprop_at_second_order(cost, tol):
    net, x, labels = small_pcn()
    bp = get_algorithm("PC-BP", cost=cost).step(net, x, labels).grads
    errs = {}
    for beta in (1e-3, 1e-4):
        g = get_algorithm("PC-CEP", beta=beta, nudged_iterations=40, cost=cost).step(net, x, labels).grads
        errs[beta] = rel_error(g, bp)
    assert errs[1e-3] < tol
    assert 1.85 < math.log10(errs[1e-3] / errs[1e-4]) < 2.15  # slope 2: O(beta^2)


@pytest.mark.parametrize("name", ["PC-PEP", "PC-NEP"])
def test_one_sided_ep_is_first_order(name):
    net, x, labels = small_pcn(2)
    bp = get_algorithm("PC-BP").step(net, x, labels).grads
    errs = [
        rel_error(get_algorithm(name, beta=b, nudged_iterations=40).step(net, x, labels).grads, bp)
        for b in (1e-3, 1e-4)
    ]
    assert errs[0] < 1e-2 and 0.9 < math.log10(errs[0] / errs[1]) < 1.1  # slope 1: O(beta)


@pytest.mark.parametrize("fan", ["fan_in", "fan_out"])
@pytest.mark.parametrize("cost", ["squared_error", "cross_entropy"])
def test_skip_connections_centered_ep_matches_backprop_at_second_order(cost, fan):
    # VGG10Skip's structure in small: strided 1x1 skips into a conv and a conv+pool layer, one layer both a skip's
    # target and another's source
    net, x, labels = skip_pcn(1, fan)
    bp = get_algorithm("PC-BP", cost=cost).step(net, x, labels).grads
    assert len(bp) == len(list(net.parameters())) == 2 * 10 + 2  # 10 conv/linear (w, b), 2 skip weights
    errs = {
        b: rel_error(get_algorithm("PC-CEP", beta=b, nudged_iterations=20, cost=cost).step(net, x, labels).grads, bp)
        for b in (1e-3, 1e-4)
    }
    assert errs[1e-3] < 1e-5  # measured 6.7e-6 (squared error), 1.3e-7 (cross-entropy)
    assert 1.9 < math.log10(errs[1e-3] / errs[1e-4]) < 2.1  # slope 2 (measured 2.000); 1 or 3 fail
    assert min(float(g.abs().max()) for g in bp[-2:]) > 1e-4  # the skip weights get a gradient: the check can fail


def test_random_scheme_draws_both_signs():
    alg = get_algorithm("PC-REP", beta=0.1, seed=0)
    signs = {alg.next_betas()[1] > 0 for _ in range(20)}
    assert signs == {True, False}


# ---- the nudged-phase dynamics of appendix A.2 ---------------------------------------------------------------
@pytest.mark.parametrize("make", [small_pcn, skip_pcn])
def test_pgd_is_first_order_where_mod_pgd_is_second_order(make):
    """PGD (eq. 19) lets a unit whose bottom-up pre-activation is negative turn on under a positive top-down
    signal; at +beta and -beta different units do, so its centered estimate keeps an O(beta) bias. mod-PGD (eq. 20)
    keeps such units off and is O(beta^2) (measured slopes 1.000 and 2.000)."""
    net, x, labels = make(1)
    bp = get_algorithm("PC-BP").step(net, x, labels).grads
    errs = {
        solver: [
            rel_error(
                get_algorithm("PC-CEP", beta=b, nudged_iterations=30, solver=solver).step(net, x, labels).grads, bp
            )
            for b in (1e-3, 1e-4)
        ]
        for solver in ("mod-pgd", "pgd")
    }
    assert 1.9 < math.log10(errs["mod-pgd"][0] / errs["mod-pgd"][1]) < 2.1
    assert 0.9 < math.log10(errs["pgd"][0] / errs["pgd"][1]) < 1.1
    assert errs["pgd"][1] > 100 * errs["mod-pgd"][1]


# ---- clamping (eq. 8): what the paper says of it --------------------------------------------------------------
@pytest.mark.parametrize("name", ["PC-PCpL", "PC-NCpL", "PC-CCpL", "PC-RCpL"])
def test_clamped_phases_hold_the_output_at_eq_8(name):
    net, x, labels = skip_pcn(1)
    alg = get_algorithm(name, beta=0.1, nudged_iterations=12, seed=0)
    free = alg.free_phase(net, x)
    y = torch.nn.functional.one_hot(labels, 10).double()
    for beta in (0.1, -0.1):
        s = alg.nudged_phase(net, y, free, beta).states
        assert torch.equal(s[-1], (1 - beta) * free.states[-1] + beta * y)  # h_L^beta = (1 - beta) h_L^0 + beta y
        assert max(float((a - b).abs().max()) for a, b in zip(s[1:-1], free.states[1:-1])) > 1e-4  # hidden moved


def test_clamping_schemes_share_a_limit_that_is_not_the_gradient():
    """Clamping perturbs the output without a cost, so its update is not a gradient even as beta -> 0 (section
    3.2). What holds is finite-difference arithmetic: the forward and backward estimates reach their common
    beta -> 0 limit at O(beta), the centered one at O(beta^2) or better; that limit is not the gradient of the
    cost the clamp moves towards (1/2 ||o - y||^2), where nudging with that cost is within 1e-5 of it."""
    net, x, labels = skip_pcn(1)
    est = {
        (name, b): get_algorithm(name, beta=b, nudged_iterations=30).step(net, x, labels).grads
        for name in ("PC-PCpL", "PC-NCpL", "PC-CCpL")
        for b in (1e-3, 1e-4, 1e-6)
    }
    limit = est[("PC-CCpL", 1e-6)]
    for name in ("PC-PCpL", "PC-NCpL"):
        e3, e4 = rel_error(est[(name, 1e-3)], limit), rel_error(est[(name, 1e-4)], limit)
        assert 0.9 < math.log10(e3 / e4) < 1.1  # O(beta)
    assert rel_error(est[("PC-CCpL", 1e-3)], limit) < 1e-8  # measured 2e-10: the clamped response is linear here
    bp = get_algorithm("PC-BP", cost="half_squared_error").step(net, x, labels).grads
    nudged = get_algorithm("PC-CEP", beta=1e-3, nudged_iterations=30, cost="half_squared_error").step(net, x, labels)
    assert rel_error(nudged.grads, bp) < 1e-5
    assert rel_error(limit, bp) > 1e-2  # measured 0.108 (cosine 0.9965, norm ratio 0.93): another vector


def test_random_clamping_draws_both_signs():
    alg = get_algorithm("PC-RCpL", beta=0.1, seed=0)
    assert {alg.next_betas()[1] > 0 for _ in range(20)} == {True, False}
    assert all(alg.next_betas()[0] == 0.0 for _ in range(5))  # the other phase is the free state


# ---- how many nudged iterations: K = L (section 5.2, appendix A.3) -------------------------------------------
def _dense_pcn(depth: int, gain: float, seed: int = 0, width: int = 16):
    """A dense PCN (ReLU hidden layers, linear output) with weights U(-c, c), c = gain sqrt(3 / width)."""
    torch.manual_seed(seed)
    layers = [PC_LAYERS["linear_relu"](width, width) for _ in range(depth - 1)] + [PC_LAYERS["linear"](width, 10)]
    net = PredictiveCodingNetwork(layers, 10).double()
    with torch.no_grad():
        for f in net.predictions:
            w, b = list(f.parameters())
            w.uniform_(-gain * math.sqrt(3 / width), gain * math.sqrt(3 / width))
            b.uniform_(-1.0, 1.0)
    x = torch.rand(6, width, dtype=torch.float64)
    return net, x, one_hot(torch.randint(0, 10, (6,)), 10).double()


def _backprop_errors(net, x, y, cost, beta):
    """-beta dC/da_k through a forward pass written here from the weights: the nudged errors as beta -> 0."""
    h, pre = x.clone().requires_grad_(True), []
    for k, f in enumerate(net.predictions, start=1):
        w, b = list(f.parameters())
        a = h @ w.detach().T + b.detach()
        pre.append(a)
        h = a if k == net.depth else torch.relu(a)
    return [-beta * g.detach() for g in torch.autograd.grad(cost(h, y).sum(), pre)]


def _error_after(net, x, y, cost, beta, iterations, first, reference):
    s = net.relax_nudged(net.forward_pass(x), cost, y, beta, iterations, first=first)
    with torch.no_grad():
        return max(float((e - r).norm() / r.norm()) for e, r in zip(net.errors(s), reference))


@pytest.mark.parametrize("cost", ["half_squared_error", "cross_entropy"])
@pytest.mark.parametrize("first", ["even", "odd"])
@pytest.mark.parametrize("depth", [4, 5])
def test_nudged_phase_reaches_its_fixed_point_in_as_many_iterations_as_layers(depth, first, cost):
    """With the ReLU masks fixed (beta -> 0), K asynchronous mod-PGD iterations from the forward pass give the nudged
    errors eps_k = -beta dC/da_k (backprop) exactly at K = L, the number of layers, in either order and whatever the
    weights; at K = L - 1 the error left grows with the weights' scale. This is section 5.2's "the optimal K is the
    number of layers", and why K = 5 < L = 6 stopped giving VGG5's gradient once it had trained
    (docs/predictive_coding.md)."""
    c, beta = get_cost(cost), 1e-8
    left = {}
    for gain in (0.5, 1.5):
        net, x, y = _dense_pcn(depth, gain)
        with torch.enable_grad():
            reference = _backprop_errors(net, x, y, c, beta)
        errs = [_error_after(net, x, y, c, beta, k, first, reference) for k in range(depth - 1, depth + 2)]
        assert max(errs[1:]) < 1e-5, (gain, errs)  # K = L and L + 1: O(beta) from the cost's curvature
        left[gain] = errs[0]
    assert left[0.5] > 1e-4  # K = L - 1 falls short: measured 4e-4 to 2e-2
    assert left[1.5] > 100 * left[0.5]  # by more with larger weights: measured 2.4 to 9.0, 160 to 2e4 times more


@pytest.mark.parametrize("first", ["even", "odd"])
def test_with_convolutions_and_pooling_too_the_nudged_phase_settles_at_k_equals_l(first):
    """The same on a conv net with max-pooling (pooling indices fixed as beta -> 0): K = L iterations reach the
    state of K = 200 (a fixed point of eq. 20, tests/closed_forms/test_fixed_points.py); K = L - 1 does not."""
    net, x, labels = small_pcn(3)
    y, c, beta = one_hot(labels, 10).double(), get_cost("cross_entropy"), 1e-8
    assert any(f.pool for f in net.predictions)
    settled = net.relax_nudged(net.forward_pass(x), c, y, beta, 200, first=first)
    with torch.no_grad():
        reference = net.errors(settled)
    errs = [_error_after(net, x, y, c, beta, k, first, reference) for k in (net.depth - 1, net.depth)]
    assert errs[1] < 1e-6 and errs[0] > 1e3 * errs[1], errs  # measured 1.9e-9 / 1.4e-3 even, 1.2e-8 / 2.1e-2 odd
