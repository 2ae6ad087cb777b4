"""Oracle: fixed-point residuals and closed-form equilibria (the relaxation's fixed points, the PCN's forward
pass with E = 0, the augmented dynamics, RHEL's scale invariance)."""

import pytest
import torch
import torch.nn.functional as F

from eqprop import dchn, get_algorithm, one_hot, relax
from eqprop.core.nudging import get_cost
from eqprop.rules.echo_learning import bptt_gradients, echo, rhel_gradients
from helpers import (
    F64,
    max_diff,
    regression_problem,
    rel_error,
    signals_for,
    skip_pcn,
    small_conv,
    small_mlp,
    small_pcn,
)


@pytest.mark.parametrize("make", [small_mlp, small_conv])
@pytest.mark.parametrize("schedule", ["synchronous", "asynchronous"])
def test_free_state_is_a_fixed_point(make, schedule):
    net, x, _ = make()
    r = relax(net, net.init_state(x), 300, schedule=schedule)
    assert float(net.fixed_point_residual(r.states).max()) < 1e-10
    # and it is not trivially zero: some hidden units are strictly inside the box
    assert any(bool(((s > 0) & (s < 1)).any()) for s in r.states[1:-1])


def test_tolerance_stops_early_and_reports_iterations():
    net, x, _ = small_mlp()
    r = relax(net, net.init_state(x), 500, tol=1e-9)
    assert 1 < r.iterations < 500
    assert float(net.fixed_point_residual(r.states).max()) < 1e-7


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_relaxation_is_real_and_close_to_fp32(dtype):
    net = dchn(1, 10, input_size=16, channels=(8, 16, 16))
    x = torch.randn(4, 1, 16, 16)
    low = relax(net, net.init_state(x), 30, dtype=dtype)
    ref = relax(net, net.init_state(x), 30)
    assert all(s.dtype == dtype for s in low.states)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    # rounding only: every state within 2 ulps of its dtype (states in [0, 1]; measured 1.02 ulp for bf16 and
    # 0.99 ulp for fp16 after 30 iterations), the input within half an ulp of its own magnitude
    eps = torch.finfo(dtype).eps
    assert max_diff([s.float() for s in low.states[1:]], ref.states[1:]) < 2 * eps
    assert bool(((low.states[0].float() - x).abs() <= 0.5 * eps * x.abs()).all())


def test_free_state_is_the_forward_pass_with_zero_energy_and_zero_parameter_gradient():
    net, x, labels = small_pcn()
    states = get_algorithm("PC-CEP").free_phase(net, x).states
    assert float(net.energy(states).detach().abs().max()) == 0.0
    assert max(float(g.abs().max()) for g in net.energy_param_grads(states)) == 0.0
    still = net.relax_nudged(states, get_cost("squared_error"), one_hot(labels, 10).double(), 0.0, 20)
    assert all(torch.equal(a, b) for a, b in zip(states, still))


@pytest.mark.parametrize("cost", ["squared_error", "cross_entropy"])
def test_nudged_state_is_a_fixed_point_and_stationary_on_active_units(cost):
    net, x, labels = small_pcn(1)
    y = one_hot(labels, 10).double()
    free = [s.detach() for s in net.forward_pass(x)]
    s = net.relax_nudged(free, get_cost(cost), y, 0.05, 60)
    h = [t.clone().requires_grad_(True) for t in s[1:]]
    full = [s[0]] + h
    total = net.energy(full).sum() + 0.05 * get_cost(cost)(full[-1], y).sum()
    grads = torch.autograd.grad(total, h)
    for k, (hk, g) in enumerate(zip(h[:-1], grads[:-1]), start=1):
        f = net.predictions[k - 1]
        # where the prediction and the state are both on the ReLU's linear piece, the projected update is exact
        active = (hk.detach() > 0) & (f.pre(s[k - 1]) > 0)
        assert float(g[active].abs().max()) < 1e-10, f"dF/dh_{k} on active units"
        assert int(active.sum()) > 0.2 * hk.numel()
        z = (f.pre(s[k - 1]) + net.top_down(k, s)).detach()
        assert float((hk.detach() - F.relu(z)).abs().max()) < 1e-10, f"h_{k} is not a fixed point"
    assert float(grads[-1].abs().max()) < 1e-10  # the output is unconstrained: dF/dh_L = 0
    assert float(net.energy(s).detach().min()) > 0  # the nudge moved the state off the forward pass


def test_update_is_local_prediction_error_times_input():
    net, x, labels = small_pcn(3)
    y = one_hot(labels, 10).double()
    s = net.relax_nudged(net.forward_pass(x), get_cost("squared_error"), y, 0.1, 40)
    grads = net.energy_param_grads(s)
    eps_top = s[-1] - net.predictions[-1](s[-2])  # top layer is linear: f' = 1
    expected = -(eps_top.T @ s[-2].flatten(1)) / len(x)
    assert torch.allclose(grads[-2], expected, atol=1e-12) and torch.allclose(grads[-1], -eps_top.mean(0), atol=1e-12)


@pytest.mark.parametrize("skips", [(), ((2, 5), (5, 8))])
def test_vgg10_structure_free_state_is_the_forward_pass_with_zero_energy_and_gradient(skips):
    net, x, _ = skip_pcn(0, skips=skips)
    states = get_algorithm("PC-CEP").free_phase(net, x).states
    assert [tuple(t.shape[1:]) for t in states] == [
        (1, 32, 32),
        (4, 16, 16),
        (4, 8, 8),
        (6, 8, 8),
        (6, 4, 4),
        (8, 4, 4),
        (8, 2, 2),
        (8, 2, 2),
        (8, 1, 1),
        (16,),
        (10,),
    ]  # Table 6's pooling pattern: pools after convs 1, 2, 4, 6, 8
    assert float(net.energy(states).detach().abs().max()) == 0.0
    assert max(float(g.abs().max()) for g in net.energy_param_grads(states)) == 0.0


def test_skip_net_nudged_state_is_a_fixed_point_of_mod_pgd():
    """With the paper's skips (2 -> 5, 5 -> 8: source and target of different parity, so never updated in the same
    half-step) mod-PGD reaches a fixed point of eq. (20) and eq. (18), written out here."""
    net, x, labels = skip_pcn(1)
    y = one_hot(labels, 10).double()
    beta = 0.05
    s = net.relax_nudged(net.forward_pass(x), get_cost("cross_entropy"), y, beta, 60)
    for k in range(1, net.depth):
        residual = s[k] - F.relu(net.preactivation(k, s) + net.top_down(k, s))
        assert float(residual.detach().abs().max()) < 1e-12, f"layer {k}"
    out = net.preactivation(net.depth, s) - beta * (torch.softmax(s[-1], 1) - y)
    assert float((s[-1] - out).detach().abs().max()) < 1e-12
    assert float(net.energy(s).detach().min()) > 1e-8  # the nudge moved the state off the forward pass


def test_pgd_can_settle_into_a_two_cycle_where_mod_pgd_converges():
    """What the library shows of appendix A.2's "PGD is less stable": on the same net and nudge, PGD (eq. 19)
    ends in a period-2 cycle (states at K = 60 and 62 agree to 1e-16, at 60 and 61 differ by 6e-6)."""
    net, x, labels = skip_pcn(1)
    y = one_hot(labels, 10).double()
    a, b, c = (
        net.relax_nudged(net.forward_pass(x), get_cost("cross_entropy"), y, 0.05, k, solver="pgd") for k in (60, 61, 62)
    )
    assert max(float((u - w).abs().max()) for u, w in zip(a, c)) < 1e-14
    assert max(float((u - v).abs().max()) for u, v in zip(a, b)) > 1e-7


def test_augmented_nudged_phase_converges_to_a_fixed_point():
    net, x, labels = small_conv()
    y = one_hot(labels, 5, torch.float64)
    sigs = signals_for(net, "LE")
    alg = get_algorithm(
        "CEP", beta=0.5, free_iterations=200, nudged_iterations=200, cost="cross_entropy", signals=sigs, kappa=2.0
    )
    free = alg.free_phase(net, x)
    nudge = alg.nudge(0.5, y, free, [y, y])
    with torch.no_grad():
        res = relax(net, free.states, 300, nudge=nudge, record=True)
        plain = relax(net, free.states, 300, nudge=nudge.base).states
    assert res.trajectory.residual[-1] < 1e-10
    moved = float((res.states[1] - free.states[1]).detach().abs().max())
    assert float((res.states[1] - plain[1]).abs().max()) > 1e-3 * max(moved, 1e-12)  # the signal acts on layer 1


def test_relative_epsilon_makes_the_estimate_independent_of_the_loss_scale():
    model, x, y = regression_problem(steps=30)
    cost = get_cost("squared_error")

    class Scaled(type(cost)):
        def __call__(self, o, t):
            return 1e4 * super().__call__(o, t)

    ref, _, _ = bptt_gradients(model, x, y, cost, "every")
    small, _, _ = rhel_gradients(model, x, y, cost, "every", epsilon=1e-3)
    big, _, _ = rhel_gradients(model, x, y, Scaled(), "every", epsilon=1e-3)
    assert rel_error([g / 1e4 for g in big], small) < 1e-10
    assert rel_error(small, ref) < 1e-5
    unit = model.units[0]
    absolute = echo(
        unit,
        *model.run_unit(0, x)[:2],
        x,
        [None] * 29 + [1e4 * torch.ones(2, 5, dtype=F64)],
        0.1,
        epsilon=1e-3,
        relative=False,
    )
    relative = echo(
        unit, *model.run_unit(0, x)[:2], x, [None] * 29 + [1e4 * torch.ones(2, 5, dtype=F64)], 0.1, epsilon=1e-3
    )
    assert torch.allclose(absolute.epsilon, torch.full((2,), 1e-3, dtype=F64))
    assert torch.allclose(relative.epsilon, torch.full((2,), 1e-7, dtype=F64))


def test_solver_statistics_are_per_sample():
    """With tol (or record) the solver reports, per sample, the iterations it needed and its last change; the
    recorded trajectory holds each sample's residual, whose batch mean is the recorded residual."""
    net, x, _ = small_mlp()
    x = torch.cat([x[:4], 0 * x[4:]])  # a zero input (zero biases) is a fixed point at once: zero states
    r = relax(net, net.init_state(x), 500, tol=1e-9, record=True)
    assert r.stats is not None and r.stats.iterations.shape == (8,) and r.stats.change.shape == (8,)
    assert int(r.stats.iterations.max()) == r.iterations > 10  # measured 31
    assert r.stats.iterations[4:].tolist() == [1, 1, 1, 1]
    assert bool((r.stats.change < 1e-9).all())
    per_sample, mean = r.trajectory.sample_residual, r.trajectory.residual
    assert len(per_sample) == len(mean) == r.iterations
    assert all(abs(float(s.mean()) - m) < 1e-15 for s, m in zip(per_sample, mean))
    assert float(per_sample[-1].max()) < 1e-8
