"""FitzHugh-Nagumo networks against the mathematics written here: the unit's equations and its H, the reduced
energy's envelope, critical points of H, the stability criterion, and EP against an implicit solve by hand."""

import pytest
import torch
import torch.nn.functional as F

from eqprop import get_algorithm
from eqprop.errors import ConfigError
from eqprop.models.fitzhugh_nagumo import (
    FHNDynamicsSolver,
    FHNExactSolver,
    UnsettledError,
    cubic_root,
    fhn,
)
from helpers import rel_error

F64 = torch.float64


def unit_h(v, w, current, a, b):
    """The issue's H of one unit: -v^2/2 + v^4/12 - I v + v w + a w - b w^2/2."""
    return -(v**2) / 2 + v**4 / 12 - current * v + v * w + a * w - b * w**2 / 2


def test_one_unit_is_skew_gradient():
    """dv/dt = v - v^3/3 - w + I is -dH/dv and dw/dt = eps (v + a - b w) is +eps dH/dw, by autograd of H."""
    g = torch.Generator().manual_seed(0)
    v, w, current = (torch.randn(50, generator=g, dtype=F64, requires_grad=True) for _ in range(3))
    a, b, eps = 0.7, 0.8, 0.08
    dv, dw = torch.autograd.grad(unit_h(v, w, current, a, b).sum(), (v, w))
    assert torch.allclose(-dv, v - v**3 / 3 - w + current, atol=1e-14)
    assert torch.allclose(eps * dw, eps * (v + a - b * w), atol=1e-14)


def net_and_input(seed=0, **settings):
    torch.manual_seed(seed)
    net = fhn([6, 5, 4, 3], gains=1.0, **settings).double()
    with torch.no_grad():
        for k in (1, 2, 3):
            net.p("i", k).add_(torch.empty(net.sizes[k], dtype=F64).uniform_(-0.3, 0.3))
    return net, torch.randn(7, 6, dtype=F64)


def hand_h(net, states, recovery):
    """H of the whole network written out: the units' H, minus v_k . W_k^T v_{k-1} (+ the skips), plus
    D/2 (v_i - v_{i+1})^2 along each hidden layer."""
    total = 0
    L = net.depth
    for k in range(1, L + 1):
        v = states[k]
        total = total + unit_h(v, recovery[k - 1], net.p("i", k), net.p("a", k), net.p("b", k)).sum(1)
        total = total - ((states[k - 1] @ net.p("w", k)) * v).sum(1)
        if net.skips and k >= 2:
            total = total - ((states[k - 2] @ net.p("s", k)) * v).sum(1)
        if net.diffusion and k < L:
            total = total + net.diffusion / 2 * sum((v[:, i] - v[:, i + 1]) ** 2 for i in range(v.shape[1] - 1))
    return total


SETTINGS = [{}, {"diffusion": 0.3}, {"skips": True}, {"train_ab": True, "diffusion": 0.1, "skips": True}]


@pytest.mark.parametrize("settings", SETTINGS, ids=["plain", "diffusion", "skips", "all"])
def test_the_exact_solver_ends_at_a_critical_point_of_h_that_the_dynamics_reach(settings):
    """At the exact solver's state v and w*(v) = (v + a)/b: dH/dv = 0 and dH/dw = 0 (by autograd of the hand-written
    H), F = H(v, w*(v)) never rose along the way, the equilibrium is stable (J's eigenvalues), and integrating the
    dynamics from zeros settles at the same point."""
    net, x = net_and_input(**settings)
    result = FHNExactSolver(tol=None)(net, net.init_state(x), 300, record=True)
    s = [t.detach() for t in result.states]
    energies = result.trajectory.energy
    assert all(e2 <= e1 + 1e-12 for e1, e2 in zip(energies, energies[1:]))  # block coordinate descent
    assert energies[0] - energies[-1] > 1e-3
    v = [t.clone().requires_grad_(True) for t in s[1:]]
    w = [((t + net.p("a", k)) / net.p("b", k)).detach().requires_grad_(True) for k, t in enumerate(s[1:], 1)]
    with torch.no_grad():
        assert torch.allclose(net.hamiltonian(s, [t.detach() for t in w]), hand_h(net, s, w), atol=1e-12)
        assert torch.allclose(net.energy(s), hand_h(net, s, w), atol=1e-12)  # F = H(v, w*(v))
    grads = torch.autograd.grad(hand_h(net, [s[0], *v], w).sum(), [*v, *w])
    assert max(float(g.abs().max()) for g in grads) < 1e-11
    assert float(s[-1].abs().max()) > 0.1  # not a trivial point
    # w* is the maximum of H in w: H(v, w* + d) < H(v, w*)
    with torch.no_grad():
        bumped = [t + 0.01 for t in w]
        assert bool((net.hamiltonian(s, bumped) < net.hamiltonian(s, [t.detach() for t in w])).all())
    assert bool((net.stability(s) < 0).all())
    # the physical dynamics: pushed off the equilibrium, they come back (its basin); from zeros they settle at a
    # critical point of H too (not always this one: F may have several minima)
    net.dt = 0.25
    pushed = [s[0]] + [t + 0.05 * torch.randn_like(t) for t in s[1:]]
    with torch.no_grad():
        back = FHNDynamicsSolver()(net, pushed, 1000)
    assert net.last_report is not None and bool(net.last_report.settled.all())
    assert max(float((a - b).abs().max()) for a, b in zip(back.states[1:], s[1:])) < 1e-7
    settled = [t.detach() for t in FHNDynamicsSolver()(net, net.init_state(x), 1500).states]
    assert bool(net.last_report.settled.all())
    assert max(float(net.energy_grad(settled, k).detach().abs().max()) for k in range(1, net.depth + 1)) < 1e-5


def test_the_cubic_root_solves_its_cubic():
    c = torch.logspace(-3, 2, 40, dtype=F64)[:, None]
    r = torch.linspace(-50, 50, 101, dtype=F64)[None, :]
    v = cubic_root(c.expand(40, 101), r.expand(40, 101))
    assert float((v**3 / 3 + c * v - r).abs().max() / (1 + r.abs()).max()) < 1e-12
    assert torch.equal(cubic_root(torch.ones(3, dtype=F64), torch.zeros(3, dtype=F64)), torch.zeros(3, dtype=F64))


def hand_implicit_gradient(net, x, y):
    """dL/dtheta for L = 1/2 ||v_L - y||^2 (batch mean) through the equilibrium, written out: the Hessian of F,
    diag(v^2 - 1 + 1/b) - couplings, solved per sample against dL/dv; then dL/dW_k = v_{k-1} lambda_k^T +
    lambda_{k-1} v_k^T and dL/dI_k = lambda_k (lambda_0 = 0)."""
    s = [t.detach() for t in FHNExactSolver()(net, net.init_state(x), 400).states]
    sizes = net.sizes[1:]
    off = [0]
    for n in sizes:
        off.append(off[-1] + n)
    W = [net.p("w", k).detach() for k in (1, 2, 3)]
    b = [net.p("b", k) for k in (1, 2, 3)]
    grads = [torch.zeros_like(p) for p in net.parameters()]
    for i in range(len(x)):
        v = torch.cat([s[k][i] for k in (1, 2, 3)])
        Hf = torch.diag(v**2 - 1 + 1 / torch.cat(b))
        for k in (2, 3):
            rows, cols = slice(off[k - 2], off[k - 1]), slice(off[k - 1], off[k])
            Hf[rows, cols] -= W[k - 1]
            Hf[cols, rows] -= W[k - 1].t()
        dl = torch.zeros(off[-1], dtype=F64)
        dl[off[2] :] = s[3][i] - y[i]
        lam = torch.linalg.solve(Hf, dl)
        lams = [torch.zeros(6, dtype=F64)] + [lam[off[k] : off[k + 1]] for k in range(3)]
        states = [x[i], s[1][i], s[2][i], s[3][i]]
        for k in (1, 2, 3):
            grads[2 * (k - 1)] += (torch.outer(states[k - 1], lams[k]) + torch.outer(lams[k - 1], states[k])) / len(x)
            grads[2 * (k - 1) + 1] += lams[k] / len(x)
    return grads


def test_c_ep_equals_implicit_differentiation_to_second_order_and_rbp_exactly():
    """C-EP's estimate tends to the hand-written implicit gradient as O(beta^2) (halving beta divides the error by
    about 4), P-EP's as O(beta) (by about 2); RBP (conjugate gradients on autograd) equals it."""
    net, x = net_and_input(1)
    labels = torch.randint(0, 3, (7,))
    y = F.one_hot(labels, 3).to(F64)
    oracle = hand_implicit_gradient(net, x, y)
    assert min(float(g.abs().max()) for g in oracle) > 1e-3

    def error(name, beta):
        rule = get_algorithm(
            name, beta=beta, cost="half_squared_error", free_iterations=400, nudged_iterations=400, solver="fhn-exact"
        )
        return rel_error(rule.step(net, x, labels).grads, oracle)

    cep = [error("CEP", beta) for beta in (0.005, 0.0025)]
    pep = [error("PEP", beta) for beta in (0.005, 0.0025)]
    assert 3.6 < cep[0] / cep[1] < 4.4 and cep[1] < 1e-3
    assert 1.8 < pep[0] / pep[1] < 2.2 and pep[1] > 10 * cep[1]
    rbp = get_algorithm("RBP", cost="half_squared_error", free_iterations=400, solver="fhn-exact", cg_tol=1e-13)
    assert rel_error(rbp.step(net, x, labels).grads, oracle) < 1e-8


def test_the_stability_criterion_and_an_oscillating_unit_is_reported():
    """With one a, b, eps, the equilibrium is stable exactly when A's smallest eigenvalue exceeds
    -min(eps b, 1/b): checked against J's eigenvalues over networks and eps. The classic unit (a = 0.7, b = 0.8,
    eps = 0.08, I = 0.5) sits on its middle branch: unstable, and the dynamics solver reports it oscillating (a
    warning, or UnsettledError with unsettled="raise"); its gradient estimate is never silently used."""
    agree = 0
    for seed in range(6):
        for eps in (0.08, 0.5, 2.0):
            net, x = net_and_input(seed, eps=eps)
            s = FHNExactSolver()(net, net.init_state(x), 300).states
            lam = net.saddle_margin(s)
            predicted_stable = lam > -min(eps * 0.8, 1 / 0.8)
            assert torch.equal(predicted_stable, net.stability(s) < 0)
            agree += int((~predicted_stable).sum())
    assert agree > 0  # some samples are unstable at small eps: the criterion is tested on both sides

    one = fhn([1, 1], eps=0.08).double()
    with torch.no_grad():
        one.w1.zero_()
        one.i1.fill_(0.5)
    x = torch.zeros(3, 1, dtype=F64)
    with torch.no_grad():  # a solver tracks its iterations when grad is on (for BPTT); this test reads values only
        rest = FHNExactSolver()(one, one.init_state(x), 50).states
    assert float(rest[1][0]) == pytest.approx(-0.8048, abs=1e-3) and bool((one.stability(rest) > 0).all())
    one.dt = 0.25
    FHNDynamicsSolver()(one, one.init_state(x), 1600)
    report = one.last_report
    assert not bool(report.settled.any()) and bool(report.oscillating.all()) and float(report.residual.min()) > 0.1
    one.unsettled = "raise"
    with pytest.raises(UnsettledError, match="3 of 3 samples did not settle .3 oscillating"):
        FHNDynamicsSolver()(one, one.init_state(x), 1600)
    # the same unit with fast recovery (eps >= 1/b^2) is stable and settles
    calm = fhn([1, 1], eps=2.0).double()
    with torch.no_grad():
        calm.w1.zero_()
        calm.i1.fill_(0.5)
    calm.dt = 0.25
    FHNDynamicsSolver()(calm, calm.init_state(x), 1000)
    assert bool(calm.last_report.settled.all())


def test_bad_settings_are_refused_with_the_key_and_what_is_valid():
    for key, value in (("b", 0.0), ("eps", -1.0), ("dt", 0.0), ("diffusion", -0.1)):
        with pytest.raises(ValueError, match="must be"):
            fhn([2, 2], **{key: value})
    wide = fhn([3, 4, 2], b=1.5).double()  # 1/b - 1 < 0: a unit's reduced energy is not convex
    with pytest.raises(ValueError, match="exact FHN solver needs.*convex.*solver=fhn-dynamics"):
        FHNExactSolver()(wide, wide.init_state(torch.zeros(1, 3, dtype=F64)), 3)
    FHNDynamicsSolver()(wide, wide.init_state(torch.zeros(1, 3, dtype=F64)), 3)  # the dynamics still run
    from eqprop.training.config import parse_overrides

    with pytest.raises(ConfigError) as info:
        parse_overrides(["model=fhn", "fhn_b=0", "fhn_eps=-1", "unsettled=ignore"])
    problems = "\n".join(info.value.problems)
    assert "'fhn_b' must be > 0" in problems and "'fhn_eps' must be > 0" in problems
    assert "'unsettled': 'ignore' is not valid" in problems
    with pytest.raises(ConfigError, match="algorithm 'RHEL' does not train model 'fhn'"):
        parse_overrides(["model=fhn", "algorithm=RHEL"])


def test_holomorphic_ep_on_the_polynomial_energy_converges_geometrically_in_n():
    """F is a polynomial in v, so its nudged equilibria continue to complex beta (the exact solver's unit update
    becomes Newton's root of the same cubic): HEP at |beta| = 0.02 with N = 2 is C-EP number for number, and its
    error against the hand-written implicit gradient falls geometrically as N grows (2 -> 4 -> 6: each at least
    3x smaller), with N = 6 relaxing its two complex phases batched."""
    net, x = net_and_input(1)
    labels = torch.randint(0, 3, (7,))
    y = F.one_hot(labels, 3).to(F64)
    oracle = hand_implicit_gradient(net, x, y)
    options = dict(beta=0.02, cost="half_squared_error", free_iterations=400, nudged_iterations=400, solver="fhn-exact")
    cep = get_algorithm("CEP", **options).step(net, x, labels).grads
    errors = []
    for n in (2, 4, 6):
        grads = get_algorithm("HEP", points=n, **options).step(net, x, labels).grads
        if n == 2:
            assert rel_error(grads, cep) < 1e-12
        errors.append(rel_error(grads, oracle))
    assert errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3 and errors[2] < 1e-3, errors
