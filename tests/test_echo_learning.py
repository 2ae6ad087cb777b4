"""RHEL (Hamiltonian echo learning) against the math: reversibility, agreement with BPTT at O(eps^2),
input and initial-state gradients, stacks (Theorem 3.3), negative controls, and the training pipeline."""

import math

import pytest
import torch

from eqprop.core.nudging import get_cost
from eqprop.models.hamiltonian import HRU_TYPES, HamiltonianSSM, HamiltonianUnit, leapfrog_step
from eqprop.rules.echo_learning import bptt_gradients, echo, rhel_gradients
from helpers import cosine, rel_error

F64 = torch.float64


def unit_of(kind, n_in=3, n=5):
    unit = HRU_TYPES[kind](n_in, n).double()
    if kind == "nonlinear":
        with torch.no_grad():
            unit.b.uniform_(-0.5, 0.5)  # so that the bias gradient is not trivially symmetric
    return unit


def regression_problem(sizes=(5,), hru="nonlinear", steps=60, batch=2, dt=0.1, integrator="leapfrog"):
    """A random HSSM with a squared-error loss on the readout at every step (per-step random targets)."""
    model = HamiltonianSSM(3, list(sizes), 4, hru=hru, dt=dt, integrator=integrator).double()
    return model, torch.randn(steps, batch, 3, dtype=F64), torch.randn(steps, batch, 4, dtype=F64)


@pytest.mark.parametrize("kind", sorted(HRU_TYPES))
@torch.no_grad()
def test_leapfrog_is_reversible(kind):
    unit = unit_of(kind)
    u = torch.randn(100, 4, 3, dtype=F64)
    phi0, pi0 = torch.randn(4, 5, dtype=F64), torch.randn(4, 5, dtype=F64)
    phi, pi = phi0, pi0
    for k in range(100):
        phi, pi, _ = leapfrog_step(unit, phi, pi, u[k], 0.1)
    pi = -pi  # flip, then run the same map on the reversed inputs
    for k in reversed(range(100)):
        phi, pi, _ = leapfrog_step(unit, phi, pi, u[k], 0.1)
    assert float((phi - phi0).abs().max()) < 1e-12 and float((-pi - pi0).abs().max()) < 1e-12


@pytest.mark.parametrize("kind", sorted(HRU_TYPES))
def test_closed_form_force_is_the_potential_gradient(kind):
    unit = unit_of(kind)
    phi, u = torch.randn(6, 5, dtype=F64), torch.randn(6, 3, dtype=F64)
    assert torch.allclose(unit.force(phi, u), HamiltonianUnit.force(unit, phi, u), atol=1e-12)


def test_rhel_matches_bptt_at_second_order_in_epsilon():
    """Nonlinear HRU, 60 steps, dt=0.1, loss every step: error < 1e-4 at eps=1e-4 and ~100x per 10x eps."""
    model, x, y = regression_problem()
    cost = get_cost("squared_error")
    ref, _, ref_loss = bptt_gradients(model, x, y, cost, "every")
    errors = []
    for eps in (1e-2, 1e-3, 1e-4):
        grads, _, loss = rhel_gradients(model, x, y, cost, "every", epsilon=eps)
        errors.append(rel_error(grads, ref))
        assert torch.allclose(loss, ref_loss, atol=1e-12)
    assert errors[-1] < 1e-4
    for coarse, fine in zip(errors, errors[1:]):
        assert 50 < coarse / fine < 200, errors  # O(eps^2)


def test_input_and_initial_state_gradients_match_autograd():
    unit = unit_of("nonlinear")
    steps, batch = 60, 3
    u = torch.randn(steps, batch, 3, dtype=F64, requires_grad=True)
    phi0 = torch.randn(batch, 5, dtype=F64, requires_grad=True)
    pi0 = torch.randn(batch, 5, dtype=F64, requires_grad=True)
    targets = torch.randn(steps, batch, 5, dtype=F64)
    phi, pi, positions = phi0, pi0, []
    for k in range(steps):
        phi, pi, _ = leapfrog_step(unit, phi, pi, u[k], 0.1)
        positions.append(phi)

    def step_loss(p, t):
        return (torch.tanh(p) - t).pow(2).sum()

    loss = sum(step_loss(p, t) for p, t in zip(positions, targets))
    # the echo is nudged by the partial derivative of each step's loss (not the total adjoint)
    detached = [p.detach().requires_grad_(True) for p in positions]
    out_grads = [torch.autograd.grad(step_loss(p, t), p)[0] for p, t in zip(detached, targets)]
    ref = torch.autograd.grad(loss, [u, phi0, pi0] + list(unit.parameters()))
    res = echo(unit, phi.detach(), pi.detach(), u.detach(), out_grads, 0.1, epsilon=1e-4)
    got = [res.input_grads, *res.initial_grads, *res.param_grads]
    for name, a, b in zip(["u", "phi0", "pi0", "a", "B", "b"], got, ref):
        assert rel_error([a], [b]) < 1e-4, name


@pytest.mark.parametrize("hru", sorted(HRU_TYPES))
@pytest.mark.parametrize("sizes", [(6, 5), (6, 5, 4)])
@pytest.mark.parametrize("loss_at", ["last", "every"])
@pytest.mark.parametrize("stack", ["lockstep", "sequential"])
def test_stacks_match_bptt_parameter_by_parameter(hru, sizes, loss_at, stack):
    """Top unit echoed first, its dL/du pulled back through the feedforward map as the nudge of the unit below
    (whole sequences one unit after the other, or all units together one step at a time)."""
    model = HamiltonianSSM(3, list(sizes), 4, hru=hru, dt=0.1).double()
    x = torch.randn(40, 3, 3, dtype=F64)
    y = torch.nn.functional.one_hot(torch.randint(0, 4, (3,)), 4).to(F64)
    cost = get_cost("cross_entropy")
    ref, ref_out, _ = bptt_gradients(model, x, y, cost, loss_at)
    grads, out, _ = rhel_gradients(model, x, y, cost, loss_at, epsilon=1e-3, stack=stack)
    assert torch.allclose(out, ref_out, atol=1e-12)
    for (name, _), g, r in zip(model.named_parameters(), grads, ref):
        assert r.norm() > 0, name
        assert cosine(g, r) >= 0.999, name
    assert rel_error(grads, ref) < 1e-4


@pytest.mark.parametrize("control", ["full_step_gradient", "irreversible_integrator"])
def test_negative_controls_fail_the_same_check(control):
    """dV/dtheta at the full step, or a force at the old position, leave a bias that does not shrink with eps."""
    integrator = "euler" if control == "irreversible_integrator" else "leapfrog"
    at = "full" if control == "full_step_gradient" else "half"
    model, x, y = regression_problem(integrator=integrator)
    cost = get_cost("squared_error")
    ref, _, _ = bptt_gradients(model, x, y, cost, "every")
    coarse = rel_error(rhel_gradients(model, x, y, cost, "every", epsilon=1e-3, at=at)[0], ref)
    fine = rel_error(rhel_gradients(model, x, y, cost, "every", epsilon=1e-4, at=at)[0], ref)
    assert fine > 1e-3  # fails the < 1e-4 check the correct estimator passes
    assert fine > 0.9 * coarse  # the bias does not shrink with epsilon


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


def test_float32_training_estimate_is_aligned_with_bptt():
    """The demo's setting (float32, eps=0.01 relative, rows of images as the sequence) against float64 BPTT."""
    model = HamiltonianSSM(16, [32, 32], 10, dt=0.5)
    x = torch.randn(32, 1, 16, 16)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (32,)), 10).float()
    cost = get_cost("cross_entropy")
    grads, _, _ = rhel_gradients(model, x, y, cost, "last", epsilon=0.01)
    ref, _, _ = bptt_gradients(model.double(), x.double(), y.double(), cost, "last")
    assert min(cosine(g.double(), r) for g, r in zip(grads, ref)) > 0.99999
    assert rel_error([g.double() for g in grads], ref) < 1e-4  # measured 2.3e-5 (seeds 0-2: 1.7e-5 to 2.3e-5)


def test_bad_inputs_are_clear_errors():
    model = HamiltonianSSM(16, [8], 10)
    with pytest.raises(ValueError, match=r"sequence \(T, B, 16\)"):
        model(torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match="unknown HRU type 'cubic'; valid types are"):
        HamiltonianSSM(16, [8], 10, hru="cubic")
    with pytest.raises(ValueError, match="dt must be a positive"):
        HamiltonianSSM(16, [8], 10, dt=0.0)
    with pytest.raises(ValueError, match="one loss gradient .* per step"):
        echo(model.units[0], torch.zeros(2, 8), torch.zeros(2, 8), torch.zeros(5, 2, 16), [None] * 4, 0.1)


def test_rhel_and_bptt_train_through_the_pipeline(tmp_path):
    from eqprop.training.config import ConfigError, load_config
    from eqprop.training.trainer import Trainer

    with pytest.raises(ConfigError, match="algorithm 'RHEL' does not train model 'dchn'"):
        load_config(None, ["algorithm=RHEL"])
    with pytest.raises(ConfigError, match="'hru': 'cubic' is not valid; choose one of"):
        load_config("configs/rhel/digits_rhel.yaml", ["hru=cubic"])
    with pytest.raises(ConfigError, match="'epsilon' must be > 0"):
        load_config("configs/rhel/digits_rhel.yaml", ["epsilon=0"])
    with pytest.raises(ConfigError, match="'echo_stack': 'parallel' is not valid; choose one of"):
        load_config("configs/rhel/digits_rhel.yaml", ["echo_stack=parallel"])
    from eqprop.training.trainer import build_algorithm

    assert (
        build_algorithm(load_config("configs/rhel/digits_rhel.yaml", ["echo_stack=sequential"])).stack == "sequential"
    )
    final = {}
    for name in ("rhel", "bptt"):
        cfg = load_config(
            f"configs/rhel/digits_{name}.yaml",
            [
                "epochs=3",
                "hidden=[32]",
                "lrs=[0.05,0.05]",
                "progress=false",
                "tensorboard=false",
                f"out_dir={tmp_path / name}",
            ],
        )
        history = Trainer(cfg, log=lambda s: None).fit()
        assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"], name
        final[name] = history[-1]["test_error"]
    assert max(final.values()) < 0.35, final  # chance is 0.9


@pytest.mark.parametrize("kind", sorted(HRU_TYPES))
def test_closed_form_contrast_gradients_match_autograd(kind):
    unit = unit_of(kind)
    phi, u, w = torch.randn(6, 5, dtype=F64), torch.randn(6, 3, dtype=F64), torch.randn(6, dtype=F64)
    got, got_u = unit.weighted_grads(phi, u, w)
    ref, ref_u = HamiltonianUnit.weighted_grads(unit, phi, u, w)
    assert [tuple(g.shape) for g in got] == [tuple(p.shape) for p in unit.parameters()]
    for g, r in zip(got + [got_u], ref + [ref_u]):
        assert torch.allclose(g, r, atol=1e-12)


def test_lockstep_stack_echo_is_second_order_and_equals_sequential_for_one_unit():
    torch.manual_seed(3)
    x = torch.randn(40, 3, 3, dtype=F64)
    y = torch.nn.functional.one_hot(torch.randint(0, 4, (3,)), 4).to(F64)
    cost = get_cost("cross_entropy")
    one = HamiltonianSSM(3, [6], 4, dt=0.1).double()
    a = rhel_gradients(one, x, y, cost, "every", epsilon=1e-3, stack="lockstep")[0]
    b = rhel_gradients(one, x, y, cost, "every", epsilon=1e-3, stack="sequential")[0]
    assert max(float((u - v).abs().max()) for u, v in zip(a, b)) < 1e-12  # one unit: the same computation
    model = HamiltonianSSM(3, [6, 5, 4], 4, dt=0.1).double()
    ref = bptt_gradients(model, x, y, cost, "every")[0]
    errs = [rel_error(rhel_gradients(model, x, y, cost, "every", epsilon=e)[0], ref) for e in (1e-2, 1e-3)]
    assert errs[1] < 1e-5 and 1.8 < math.log10(errs[0] / errs[1]) < 2.2  # O(eps^2), like the sequential echo
    with pytest.raises(ValueError, match="valid ones are"):
        rhel_gradients(model, x, y, cost, "every", stack="parallel")
