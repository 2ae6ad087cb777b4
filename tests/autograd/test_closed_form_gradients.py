"""Oracle: autograd. Closed-form forces and contrasts (signals, Hamiltonian units) against autograd of the
potentials and losses they differentiate."""

import pytest
import torch

from eqprop.core.nudging import one_hot
from eqprop.models.hamiltonian import HRU_TYPES, HamiltonianUnit, leapfrog_step
from eqprop.rules.echo_learning import echo
from eqprop.rules.signals import IntermediateSignal
from helpers import F64, rel_error, signals_for, small_conv, unit_of


@pytest.mark.parametrize("kind", ["LE", "LE-hard", "KD", "KDW"])
def test_closed_form_forces_match_autograd(kind):
    net, x, labels = small_conv()
    y = one_hot(labels, 5, torch.float64)
    s = net.init_state(x, "uniform")
    for sig in signals_for(net, kind):
        target = sig.target(x, y)
        auto = IntermediateSignal.grad(sig, s[sig.layer], target)  # the autograd default
        assert torch.allclose(sig.grad(s[sig.layer], target), auto, atol=1e-12)
        assert float(auto.abs().max()) > 0


@pytest.mark.parametrize("kind", sorted(HRU_TYPES))
def test_closed_form_force_is_the_potential_gradient(kind):
    unit = unit_of(kind)
    phi, u = torch.randn(6, 5, dtype=F64), torch.randn(6, 3, dtype=F64)
    assert torch.allclose(unit.force(phi, u), HamiltonianUnit.force(unit, phi, u), atol=1e-12)


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


@pytest.mark.parametrize("kind", sorted(HRU_TYPES))
def test_closed_form_contrast_gradients_match_autograd(kind):
    unit = unit_of(kind)
    phi, u, w = torch.randn(6, 5, dtype=F64), torch.randn(6, 3, dtype=F64), torch.randn(6, dtype=F64)
    got, got_u = unit.weighted_grads(phi, u, w)
    ref, ref_u = HamiltonianUnit.weighted_grads(unit, phi, u, w)
    assert [tuple(g.shape) for g in got] == [tuple(p.shape) for p in unit.parameters()]
    for g, r in zip(got + [got_u], ref + [ref_u]):
        assert torch.allclose(g, r, atol=1e-12)
