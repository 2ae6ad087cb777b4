"""Deep resistive networks against oracles written here: an exact bounded least-squares solve (scipy's BVLS) of the
convex quadratic programme built from the circuit's definition, the pairwise energy, autograd, the public code's
values, and central finite differences of the loss through the independent solve."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import lsq_linear

from eqprop import get_algorithm
from eqprop.core.constraints import project_parameters
from eqprop.core.nudging import ClampNudge, EPNudge, get_cost
from eqprop.models.resistive import CoordinateDescentSolver, DeepResistiveNetwork
from eqprop.rules.backprop import energy_implicit_gradient
from helpers import random_drn

HALF = get_cost("half_squared_error")


def pairwise_energy(net, x, vs, beta=0.0, y=None):
    """E = 1/2 sum G_ij (p_i - v_j)^2 - b.v (+ beta/2 ||o - y||^2), written from the definition."""
    pre = net.input_gain * torch.cat([x, -x], 1)
    e = 0.0
    for k, v in enumerate(vs, 1):
        g = getattr(net, f"g{k}")
        e = e + 0.5 * (g[None] * (pre[:, :, None] - v[:, None, :]) ** 2).sum((1, 2)) - v @ getattr(net, f"b{k}")
        pre = v
    e = e + 0.5 * net.output_leak * (vs[-1] ** 2).sum(1)  # the leak resistors from the outputs to ground
    if beta:
        e = e + 0.5 * beta * ((vs[-1] - y) ** 2).sum(1)
    return e


def qp_solution(net, x1, beta=0.0, y1=None):
    """One sample's steady state by an independent solver: E is the quadratic 1/2 v^T H v + c^T v with bounds (the
    diodes); H = R^T R, and BVLS minimises ||R v + R^{-T} c||^2 exactly on the box."""
    sizes = net.nodes[1:]
    n = sum(sizes)
    off = np.cumsum([0] + sizes)
    H, c = np.zeros((n, n)), np.zeros(n)
    p = (net.input_gain * torch.cat([x1, -x1])).detach().numpy()
    for k in range(1, net.depth + 1):
        g = getattr(net, f"g{k}").detach().numpy()
        b = getattr(net, f"b{k}").detach().numpy()
        sk = slice(off[k - 1], off[k])
        H[sk, sk] += np.diag(g.sum(0))
        c[sk] -= b
        if k == 1:
            c[sk] -= p @ g
        else:
            sp = slice(off[k - 2], off[k - 1])
            H[sp, sp] += np.diag(g.sum(1))
            H[sp, sk] -= g
            H[sk, sp] -= g.T
    so = slice(off[-2], off[-1])
    H[so, so] += net.output_leak * np.eye(sizes[-1])
    if beta:
        H[so, so] += beta * np.eye(sizes[-1])
        c[so] -= beta * y1.numpy()
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    for k in range(1, net.depth):
        half = sizes[k - 1] // 2
        lo[off[k - 1] : off[k - 1] + half] = 0.0
        hi[off[k - 1] + half : off[k]] = 0.0
    R = np.linalg.cholesky(H).T
    res = lsq_linear(R, -np.linalg.solve(R.T, c), bounds=(lo, hi), method="bvls", tol=1e-15)
    return [torch.from_numpy(res.x[off[k - 1] : off[k]].copy()) for k in range(1, net.depth + 1)]


@pytest.fixture
def problem():
    net = random_drn()
    x = torch.rand(3, 5, dtype=torch.float64)
    y = torch.eye(3, dtype=torch.float64)[[0, 2, 1]]
    return net, x, y


@pytest.mark.parametrize("schedule", ["asynchronous", "forward", "backward"])
@pytest.mark.parametrize("beta", [0.0, 0.7, -0.05])
def test_the_fixed_point_is_the_quadratic_programmes_minimum(problem, schedule, beta):
    net, x, y = problem
    nudge = None if beta == 0 else EPNudge(HALF, y, beta)
    with torch.no_grad():
        states = CoordinateDescentSolver(schedule=schedule)(net, net.init_state(x), 3000, nudge).states
    bound = 0
    for i in range(len(x)):
        ref = qp_solution(net, x[i], beta, y[i])
        for v, r in zip(states[1:], ref):
            assert torch.allclose(v[i], r, atol=1e-8, rtol=0), (v[i], r)
            bound += int((r == 0).sum())
    assert bound > 0  # some diodes are at their bounds: the active set is tested too


@pytest.mark.parametrize("schedule", ["asynchronous", "synchronous", "forward", "backward"])
def test_no_block_update_raises_the_energy_and_the_energy_is_the_pairwise_power(problem, schedule):
    net, x, _ = problem
    solver = CoordinateDescentSolver(schedule=schedule, first="even")
    states = net.init_state(x)
    with torch.no_grad():
        energies = [pairwise_energy(net, x, states[1:])]
        for _ in range(30):
            states = solver(net, states, 1).states
            energies.append(pairwise_energy(net, x, states[1:]))
            assert torch.allclose(net.energy(states), energies[-1], atol=1e-10)
    if schedule == "synchronous":  # a Jacobi step is not a descent step: only the block orders are monotone
        return
    for a, b in zip(energies, energies[1:]):
        assert (b <= a + 1e-12).all()


def test_energy_gradients_are_autograds_of_the_pairwise_energy(problem):
    net, x, _ = problem
    states = [x] + [torch.randn(3, n, dtype=torch.float64) for n in net.nodes[1:]]
    params = list(net.parameters())
    ref = torch.autograd.grad(pairwise_energy(net, x, states[1:]).mean(), params)
    for ours, r in zip(net.energy_param_grads(states), ref):
        assert torch.allclose(ours, r, atol=1e-12)
    # the fused contrast: one input object (layer 1's product with x alone), a copy of it and another input (the
    # general product), each against autograd's gradients of the pairwise energy at both ends
    for x2 in (x, x.clone(), torch.rand_like(x)):
        other = [x2] + [torch.randn(3, n, dtype=torch.float64) for n in net.nodes[1:]]
        fused = net.energy_param_contrast(states, other, -0.3, 0.5)
        ref2 = torch.autograd.grad(pairwise_energy(net, x2, other[1:]).mean(), params)
        for f, a, b in zip(fused, ref, ref2):
            assert torch.allclose(f, (b - a) / 0.8, atol=1e-12)


def finite_difference_gradient(net, x, y, picks, h=1e-5):
    """dL/dtheta at the steady state, central differences through the independent QP solve."""

    def loss():
        return sum(float(((torch.stack(qp_solution(net, x[i])[-1:])[0] - y[i]) ** 2).sum()) / 2 for i in range(len(x)))

    out = []
    for p, idx in picks:
        with torch.no_grad():
            old = float(p[idx])
            p[idx] = old + h
            up = loss()
            p[idx] = old - h
            down = loss()
            p[idx] = old
        out.append((up - down) / (2 * h) / len(x))
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture
def gradient_problem(problem):
    net, x, y = problem
    params = list(net.parameters())
    picks = [(params[0], (1, 2)), (params[0], (7, 4)), (params[1], (3,)), (params[2], (2, 1)), (params[3], (0,))]
    picks += [(params[4], (1, 2)), (params[5], (2,)), (params[4], (3, 0))]
    return net, x, y, picks, finite_difference_gradient(net, x, y, picks)


def picked(grads, net, picks):
    index = {id(p): i for i, p in enumerate(net.parameters())}
    return torch.tensor([float(grads[index[id(p)]][idx]) for p, idx in picks], dtype=torch.float64)


def test_rbp_on_the_active_set_equals_finite_differences(gradient_problem):
    net, x, y, picks, fd = gradient_problem
    with torch.no_grad():
        free = CoordinateDescentSolver()(net, net.init_state(x), 3000).states
    grads, _ = energy_implicit_gradient(net, free, lambda s: HALF(s[-1], y).mean())
    assert torch.allclose(picked(grads, net, picks), fd, atol=1e-7)


def test_centered_ep_is_second_order_and_positive_ep_first_order_in_beta(gradient_problem):
    net, x, y, picks, fd = gradient_problem
    errors = {}
    for rule in ("CEP", "PEP"):
        for beta in (1e-3, 5e-4):
            alg = get_algorithm(
                rule, beta=beta, cost=HALF, free_iterations=3000, nudged_iterations=3000, solver="coordinate-descent"
            )
            alg.step(net, x, y.argmax(1))
            est = picked([p.grad for p in net.parameters()], net, picks)
            errors[rule, beta] = float((est - fd).abs().max())
    # (a unit near its diode's bound makes the constants large here: beta must stay small)
    assert errors["CEP", 5e-4] < errors["PEP", 5e-4] / 10
    assert 3.0 < errors["CEP", 1e-3] / errors["CEP", 5e-4] < 5.0  # O(beta^2)
    assert 1.6 < errors["PEP", 1e-3] / errors["PEP", 5e-4] < 2.4  # O(beta)


@pytest.mark.parametrize("rule", ["TBP", "BPTT", "RBP"])
def test_the_backprop_baselines_give_the_gradient_once_the_phases_converge(gradient_problem, rule):
    net, x, y, picks, fd = gradient_problem
    alg = get_algorithm(rule, cost=HALF, free_iterations=400, nudged_iterations=400, solver="coordinate-descent")
    alg.step(net, x, y.argmax(1))
    assert torch.allclose(picked([p.grad for p in net.parameters()], net, picks), fd, atol=1e-6)


# the public code (rain-neuromorphics/energy-based-learning: DeepResistiveEnergy + QuadraticMinimizer + centered
# EquilibriumProp, float64), on 3 inputs x 2 -> 4 -> 2, input gain 2, the conductances below, 200 iterations per
# phase, beta = 0.5; its "asynchronous" updates the first hidden layer first (our first="odd"). States: [v1, v2].
FREE = [
    [
        [0.3004822624619525, 0.3454166917253407, -0.5617373384147107, -0.18516781228030346],
        [0.16406265345448592, 0.29256022765286754, -0.27327126479257957, -0.2028527308764891],
    ],
    [
        [-0.05346738587922314, 0.015269326069890503],
        [-0.015522809531007558, -0.01569460431359491],
    ],
]
MINUS = [
    [
        [0.22878564972200063, 0.30483053081361355, -0.6741471741482331, -0.21791033038764174],
        [0.13301277554184537, 0.15490332972494064, -0.30567981096064606, -0.2754239974667009],
    ],
    [
        [-0.47126444499817777, -0.03814393939763221],
        [-0.07940937496579062, -0.4456718898781538],
    ],
]
PLUS = [
    [
        [0.33955605534289013, 0.36327353929152073, -0.499897729442953, -0.16939607556611203],
        [0.1785619619283644, 0.3659866934969849, -0.25937683041798465, -0.16451728242238195],
    ],
    [
        [0.17838156964257318, 0.02993834624343678],
        [0.0053958901471791625, 0.21607568026918803],
    ],
]
B1 = [-0.07815979600370426, -0.1347631861249757, -0.1102762126239708, -0.07971048493292432]
B2 = [-0.36722563987686035, -0.36491492789420543]
W1 = [
    [-0.034751657346824505, -0.12219764881344708, -0.12494709511619018, -0.1042331324546647],
    [-0.08496142944953555, -0.03645773648475559, -0.219139918084289, -0.07164908180314411],
    [-0.049763104478483644, -0.05529720584800163, -0.1587007363107098, -0.0744247228833963],
    [0.07332536584265814, 0.19669626385857764, 0.009576855525647854, 0.07044197053599344],
    [0.12353513794536908, 0.11095635152988614, 0.10376967849374708, 0.03785791988447296],
    [0.08833681297431728, 0.12979582089313224, 0.043330496720167325, 0.04063356096472484],
]
W2 = [
    [-0.11980740047178282, -0.077214235672021],
    [-0.12325377178966629, -0.08618410470165044],
    [0.10945192228268857, 0.02067086506115401],
    [0.011802434273822146, 0.03082122869209481],
]
ASYNCHRONOUS = [
    [
        [0.3018991211583042, 0.34628741225262805, -0.5595252156010574, -0.18448737065899798],
        [0.16493058527294108, 0.2941541448362762, -0.27205989700962524, -0.20192020279285852],
    ],
    [
        [-0.051923735616694194, 0.016188929498422124],
        [-0.014472513693019655, -0.014499403577118748],
    ],
]
FORWARD = [
    [
        [0.3018991211583042, 0.34628741225262805, -0.5595252156010574, -0.18448737065899798],
        [0.16493058527294108, 0.2941541448362762, -0.27205989700962524, -0.20192020279285852],
    ],
    [
        [-0.051923735616694194, 0.016188929498422124],
        [-0.014472513693019655, -0.014499403577118748],
    ],
]
BACKWARD = [
    [
        [0.30159685381001516, 0.3439770233099226, -0.5597092135781244, -0.18566567867535377],
        [0.16462831792465202, 0.29184375589357064, -0.27224389498669227, -0.20309851080921434],
    ],
    [
        [-0.044953966941384975, 0.009084188974589541],
        [-0.011215992366490112, -0.018785596771013383],
    ],
]
SYNCHRONOUS = [
    [
        [0.3101958361455229, 0.3304234945613175, -0.5437308329245345, -0.19069638743172795],
        [0.16897020320354075, 0.28504217168295154, -0.264181621057631, -0.20561824349360885],
    ],
    [
        [-0.04527786707463378, 0.016557507760997566],
        [-0.011539892499738922, -0.01131227798460537],
    ],
]


def public_code_network():
    net = DeepResistiveNetwork([3, 4, 2], input_gain=2.0).double()
    with torch.no_grad():
        for k, seed in ((1, 1.0), (2, 2.0)):
            g = getattr(net, f"g{k}")
            g.copy_(
                torch.tensor(
                    [0.5 + 0.45 * math.sin(seed + 1.7 * i) for i in range(g.numel())], dtype=torch.float64
                ).view_as(g)
            )
        net.b1.copy_(torch.tensor([0.3, -0.2, 0.1, -0.4], dtype=torch.float64))
        net.b2.copy_(torch.tensor([0.05, -0.1], dtype=torch.float64))
    x = torch.tensor([[0.2, 0.9, 0.5], [0.7, 0.1, 0.3]], dtype=torch.float64)
    return net, x, torch.tensor([0, 1])


# The values above come from running the public code (torch default dtype float64, every parameter set to the
# float64 values of public_code_network, exact biases: a bias typed as a float32 tensor shifts the fixed point by
# 2e-8). eqprop's states and update must equal them to float64 rounding.
PUBLIC_TOL = 1e-12


def close(states, ref, tol=PUBLIC_TOL):
    for v, r in zip(states, ref):
        assert torch.allclose(v, torch.tensor(r, dtype=torch.float64), atol=tol, rtol=0)


def test_the_public_codes_states_and_centered_ep_update():
    net, x, labels = public_code_network()
    alg = get_algorithm(
        "CEP", beta=0.5, cost=HALF, free_iterations=200, nudged_iterations=200, solver="coordinate-descent", first="odd"
    )
    free = alg.free_phase(net, x)
    close(free.states[1:], FREE)
    y = torch.eye(2, dtype=torch.float64)[labels]
    close(alg.nudged_phase(net, y, free, -0.5).states[1:], MINUS)
    close(alg.nudged_phase(net, y, free, 0.5).states[1:], PLUS)
    alg.step(net, x, labels)
    for p, ref in zip(net.parameters(), [W1, B1, W2, B2]):
        assert torch.allclose(p.grad, torch.tensor(ref, dtype=torch.float64), atol=PUBLIC_TOL, rtol=0)


@pytest.mark.parametrize(
    "schedule, first, ref",
    [
        ("asynchronous", "odd", ASYNCHRONOUS),
        ("forward", "even", FORWARD),
        ("backward", "even", BACKWARD),
        ("synchronous", "even", SYNCHRONOUS),
    ],
)
def test_two_iterations_of_each_schedule_match_the_public_code(schedule, first, ref):
    net, x, _ = public_code_network()
    with torch.no_grad():
        close(CoordinateDescentSolver(schedule=schedule, first=first)(net, net.init_state(x), 2).states[1:], ref)


def test_a_node_without_conductance_is_grounded_not_nan(problem):
    net, x, y = problem
    with torch.no_grad():
        net.g1[:, 1] = 0.0
        net.g2[1, :] = 0.0  # hidden unit 1 of layer 1 is cut off
    alg = get_algorithm("CEP", beta=0.2, cost=HALF, solver="coordinate-descent")
    alg.step(net, x, y.argmax(1))
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    with torch.no_grad():
        net.g3[:, 0] = 0.0  # output 0 is cut off too: free and positively nudged phases ground it
    for nudge in (None, EPNudge(HALF, y, 0.5), ClampNudge(y)):
        with torch.no_grad():
            s = CoordinateDescentSolver()(net, net.init_state(x), 50, nudge).states
        assert all(torch.isfinite(t).all() for t in s)
        assert (s[1][:, 1] == 0).all()
        if nudge is None:
            assert (s[3][:, 0] == 0).all()
    with pytest.raises(ValueError, match="unbounded below"):  # at -beta it has no minimum: an error, not a NaN
        CoordinateDescentSolver()(net, net.init_state(x), 5, EPNudge(HALF, y, -0.5))


def test_a_beta_that_makes_the_nudged_output_unbounded_is_a_clear_error(problem):
    net, x, y = problem
    total = float(net.g3.detach().sum(0).min())
    with pytest.raises(ValueError, match="unbounded below"):
        CoordinateDescentSolver()(net, net.init_state(x), 5, EPNudge(HALF, y, -(total + 0.1)))
    with pytest.raises(ValueError, match="half_squared_error"):
        CoordinateDescentSolver()(net, net.init_state(x), 5, EPNudge(get_cost("cross_entropy"), y, 0.1))


def test_bad_sizes_and_gains_are_clear_errors():
    with pytest.raises(ValueError, match="even"):
        DeepResistiveNetwork([4, 5, 2])
    with pytest.raises(ValueError, match="input_gain"):
        DeepResistiveNetwork([4, 6, 2], input_gain=-1.0)
    with pytest.raises(ValueError, match="gains"):
        DeepResistiveNetwork([4, 6, 2], gains=[1.0, -1.0])


def test_the_optimiser_keeps_conductances_nonnegative():
    from eqprop.training.optim import make_optimizer

    net = random_drn()
    assert all((p >= 0).all() for p, _ in net.parameter_constraints())
    opt = make_optimizer(net, [1.0], momentum=0.0, weight_decay=0.0)
    for p in net.parameters():
        p.grad = torch.ones_like(p) * 10  # a step that would push every conductance below zero
    opt.step()
    assert all((p >= 0).all() for p, _ in net.parameter_constraints())
    assert (net.b1 < 0).all()  # biases are free
    with torch.no_grad():
        net.g2.fill_(-1.0)
    assert project_parameters(net) == 3 and (net.g2 == 0).all()


def test_per_step_constants_never_outlive_the_weights_they_were_computed_from():
    """Weights changed between steps by any path (``.data`` edits, which bump no version counter; SGD with
    foreach; fused SGD where available) give the steady state of the changed network, equal to a fresh copy's; and
    inside one learning step the free and nudged phases share one computation of the constants."""
    import copy

    net = random_drn()
    x = torch.rand(4, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    solver = CoordinateDescentSolver()

    def steady(model):
        with torch.no_grad():
            return solver(model, model.init_state(x), 200).states

    rule = get_algorithm("CEP", beta=0.3, cost="half_squared_error", solver="coordinate-descent")
    rule.step(net, x, labels)
    net.g1.data.mul_(2.0)  # no version bump
    net.b2.data.add_(0.5)
    fresh = copy.deepcopy(net)
    fresh._constants = None
    assert max(float((a - b).abs().max()) for a, b in zip(steady(net), steady(fresh))) < 1e-12
    assert max(float((a - b).abs().max()) for a, b in zip(rule.step(net, x, labels).free.states, steady(fresh))) < 1e-3
    optimisers = [dict(foreach=True), dict(foreach=False)]
    if "fused" in torch.optim.SGD.__init__.__code__.co_varnames:
        optimisers.append(dict(fused=True))
    for options in optimisers:
        try:
            opt = torch.optim.SGD(net.parameters(), lr=0.05, **options)
        except (RuntimeError, ValueError):  # fused SGD not built for this device
            continue
        rule.step(net, x, labels)
        opt.step()
        assert max(float((a - b).abs().max()) for a, b in zip(steady(net), steady(copy.deepcopy(net)))) < 1e-12

    original = DeepResistiveNetwork.phase_constants
    for inputs in (x, x.reshape(4, 1, 5, 1)):  # flat, and images as the data sets give them (B, C, H, W)
        calls = []

        def counting(self, given, calls=calls):
            fixed, curv = original(self, given)
            calls.append(fixed[1])
            return fixed, curv

        DeepResistiveNetwork.phase_constants = counting
        try:
            rule.step(net, inputs, labels)
        finally:
            DeepResistiveNetwork.phase_constants = original
        # free, two nudged phases (which start from the free state's flattened input): one shared computation
        assert len(calls) == 3 and calls[1] is calls[0] and calls[2] is calls[0]
        assert net._constants is None  # dropped at the step's end
    other = x.clone()  # another input in other memory is never mistaken for the cached one
    with net.learning_step(), torch.no_grad():
        first = net.phase_constants(x)[0][1]
        assert net.phase_constants(x.reshape(4, 1, 5, 1))[0][1] is first
        assert net.phase_constants(other)[0][1] is not first


def test_float64_models_nudge_with_float64_targets():
    """The one-hot targets take the parameters' dtype: in a float64 DRN the nudged states equal those of a nudge
    built by hand in float64 to rounding (float32 targets would put beta's force off by about 1e-9)."""
    net = random_drn()
    x = torch.rand(4, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    rule = get_algorithm("PEP", beta=0.1, cost="half_squared_error", solver="coordinate-descent",
                         free_iterations=100, nudged_iterations=100)  # fmt: skip
    y = rule.targets(net, labels)
    assert y.dtype == torch.float64
    free = rule.free_phase(net, x)
    y64 = torch.nn.functional.one_hot(labels, 3).double()
    nudge = EPNudge(get_cost("half_squared_error"), y64, 0.1)
    with torch.no_grad():
        by_hand = CoordinateDescentSolver()(net, list(free.states), 100, nudge).states
        ours = rule.nudged_phase(net, y, free, 0.1).states
    assert max(float((a - b).abs().max()) for a, b in zip(ours, by_hand)) < 1e-15


def test_the_initial_conductances_are_bounded_by_the_fan_in():
    """G_k ~ U(+-gain/sqrt(fan_in)) clamped to >= 0, fan_in = the nodes feeding layer k (2 n_in for G_1): with
    fan-in != fan-out, the largest draw approaches gain/sqrt(fan_in), never passes it, and about half are 0."""
    torch.manual_seed(0)
    net = DeepResistiveNetwork([30, 8, 200], input_gain=1.0, gains=[1.5, 0.7])
    for g, gain, fan_in in ((net.g1.detach(), 1.5, 60), (net.g2.detach(), 0.7, 8)):
        bound = gain / math.sqrt(fan_in)
        assert float(g.max()) <= bound and float(g.max()) > 0.95 * bound, (float(g.max()), bound)
        assert float(g.min()) == 0.0 and 0.4 < float((g == 0).double().mean()) < 0.6


def test_the_relu_baseline_is_relu_of_x_w_plus_b():
    from eqprop.models.feedforward import ReLUNetwork

    torch.manual_seed(1)
    net = ReLUNetwork([5, 7, 3]).double()
    with torch.no_grad():
        net.b1.normal_()
        net.b2.normal_()
    x = torch.randn(6, 5, dtype=torch.float64)
    hidden = torch.clamp(x @ net.w1.detach() + net.b1.detach(), min=0)
    assert 0 < float((hidden == 0).double().mean()) < 1  # the kink is crossed: biases matter
    expected = hidden @ net.w2.detach() + net.b2.detach()
    assert torch.allclose(net(x), expected, atol=1e-14)


def test_the_unbounded_beta_check_at_its_boundary(problem):
    """E + beta c/2 ||o - y||^2 has a minimum while every output node's conductance sum a_j exceeds -c beta: at
    beta = -min(a)/c exactly the solver refuses; a hair inside it relaxes."""
    net, x1, labels_y = problem
    a = getattr(net, f"g{net.depth}").detach().sum(0)  # each output node's total conductance
    cost = get_cost("half_squared_error")
    edge = -float(a.min()) / cost.curvature
    with torch.no_grad():
        with pytest.raises(ValueError, match="unbounded"):
            CoordinateDescentSolver()(net, net.init_state(x1), 3, EPNudge(cost, labels_y, edge))
        states = CoordinateDescentSolver()(
            net, net.init_state(x1), 3, EPNudge(cost, labels_y, edge * (1 - 1e-9))
        ).states
    assert all(bool(torch.isfinite(s).all()) for s in states)


def test_a_drn_runs_learning_rate_decays_as_gamma_to_the_epochs_and_input_gain_reaches_the_network(tmp_path):
    from eqprop.training.config import parse_overrides
    from eqprop.training.trainer import Trainer

    cfg = parse_overrides(["model=drn", "input_gain=37", "hidden=[8]", "epochs=3", "lrs=[0.02]", "gamma=0.9",
                           "beta=0.01", "limit_train=64", "limit_test=16", "progress=false"])  # fmt: skip
    trainer = Trainer(cfg, log=lambda m: None)
    assert trainer.network.input_gain == 37.0
    history = trainer.fit()
    for row in history:
        assert row["lr"] == pytest.approx(0.02 * 0.9 ** row["epoch"], rel=1e-12)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * 0.9**3, rel=1e-12)


def test_the_positive_rules_losses_vanish_as_the_output_layer_is_scaled_down_while_the_cost_does_not():
    """Why CL and P-CpL drive a DRN's output conductances to 0 (docs/resistive.md, the seven rules on DRN-1H). The
    output node has no conductance but G_L's, so scaling (G_L, b_L) by s scales the output's energy by s: CL's loss
    E(clamped) - E(free) and the positive-EP loss (Phi(beta) - Phi(0)) / beta, a lower bound of the cost (the
    study's Theorem 2), fall with s to 0, while the free state's cost does not fall; the negative-EP loss, an upper
    bound, rises. Every equilibrium from the independent QP solve (BVLS), every energy from the pairwise sum."""
    import copy

    net = random_drn()
    x = torch.rand(3, 5, dtype=torch.float64)
    y = torch.eye(3, dtype=torch.float64)[[0, 2, 1]]
    L = net.depth

    def scaled(s):
        out = copy.deepcopy(net)
        with torch.no_grad():
            out.conductance(L).mul_(s)
            out.bias(L).mul_(s)
        return out

    def phi(n, beta, clamp=False):  # min_v E + beta C, summed over the samples (clamp: the output held at y)
        total = 0.0
        for i in range(len(x)):
            v = qp_solution(n, x[i], 1e9 if clamp else beta, y[i] if clamp or beta else None)
            if clamp:
                v = [*v[:-1], y[i]]
            total += float(pairwise_energy(n, x[i : i + 1], [t[None] for t in v], 0.0 if clamp else beta, y[i : i + 1]))
        return total

    def cost(n):
        return sum(0.5 * float(((qp_solution(n, x[i])[-1] - y[i]) ** 2).sum()) for i in range(len(x)))

    with torch.no_grad():
        cl = {s: phi(scaled(s), 0.0, clamp=True) - phi(scaled(s), 0.0) for s in (1.0, 1e-2, 1e-3)}
        costs = {s: cost(scaled(s)) for s in (1.0, 1e-3)}
        assert 0 < cl[1e-3] < 0.01 * cl[1.0]  # CL's loss falls to 0 with the output layer's scale ...
        assert cl[1e-2] / 1e-2 == pytest.approx(cl[1e-3] / 1e-3, rel=0.02)  # ... linearly
        assert costs[1e-3] > 0.5 * costs[1.0]  # while the prediction's cost does not (here it rises)
        beta = 0.2 * float(net.conductance(L).sum(0).min())  # -beta keeps the nudged output bounded for s >= 0.3
        bounds = {}
        for s in (1.0, 0.3):
            n = scaled(s)
            free, c = phi(n, 0.0), cost(n)
            lower, upper = (phi(n, beta) - free) / beta, (free - phi(n, -beta)) / beta
            assert lower <= c <= upper  # Theorem 2: P-EP's loss bounds the cost from below, N-EP's from above
            bounds[s] = lower, upper
        assert bounds[0.3][0] < bounds[1.0][0] and bounds[0.3][1] > 2 * bounds[1.0][1]


def test_an_output_leak_is_a_resistor_to_ground_and_breaks_the_scale_direction():
    """output_leak = g_0 (a resistor from every output node to ground): the exact solver's free and nudged steady
    states equal the independent QP solve with g_0/2 ||v_L||^2 in E, energy() equals the pairwise sum with that term,
    and the outputs no longer keep their size when (G_L, b_L) are scaled down together: without the leak they do,
    with it they fall towards 0 V with the scale."""
    import copy

    net = random_drn()
    x = torch.rand(3, 5, dtype=torch.float64)
    y = torch.eye(3, dtype=torch.float64)[[0, 2, 1]]
    L = net.depth

    def outputs(n):
        return torch.stack([qp_solution(n, x[i])[-1] for i in range(len(x))])

    def scaled(n, s):
        out = copy.deepcopy(n)
        with torch.no_grad():
            out.conductance(L).mul_(s)
            out.bias(L).mul_(s)
        return out

    with torch.no_grad():
        plain = outputs(net)
        # without a leak the outputs keep their size as (G_L, b_L) shrink: v_L = (v_{L-1} G_L + b_L) / 1^T G_L, only
        # v_{L-1} moving as the output's pull on it fades (to the same limit at 1e-3 and 1e-4)
        assert float(outputs(scaled(net, 1e-3)).abs().max()) > 0.3 * float(plain.abs().max())
        assert torch.allclose(outputs(scaled(net, 1e-3)), outputs(scaled(net, 1e-4)), atol=1e-2)
        net.output_leak = 0.8
        leaky = outputs(net)
        assert float((leaky - plain).abs().max()) > 0.1  # the leak matters at this size
        assert float(outputs(scaled(net, 1e-3)).abs().max()) < 0.01 * float(leaky.abs().max())
        solver = CoordinateDescentSolver(schedule="asynchronous", first="odd")
        cost = get_cost("half_squared_error")
        for beta in (0.0, 0.5):
            nudge = EPNudge(cost, y, beta) if beta else None
            ours = solver(net, net.init_state(x), 400, nudge).states
            for i in range(len(x)):
                ref = qp_solution(net, x[i], beta, y[i] if beta else None)
                for k in range(1, L + 1):
                    assert torch.allclose(ours[k][i], ref[k - 1], atol=1e-8)
        states = solver(net, net.init_state(x), 400).states
        assert torch.allclose(net.energy(states), pairwise_energy(net, x, states[1:]), atol=1e-10)
