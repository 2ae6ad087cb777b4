"""Appendix B: coupled learning optimises neither the squared error (B.2) nor L_CpL^(1) (B.3).

Each toy energy E(theta, o) is written as an eqprop network (an input layer, a free output layer and one
custom energy term), and the CpL update is computed by the library's own CpL implementation.
"""

import pytest
import torch
from torch import nn

from eqprop import EnergyNetwork, Interaction, Layer, get_algorithm
from eqprop.core.relaxation import RelaxResult

A = torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=torch.float64)


class QuadraticWell(Interaction):
    """Phi term 1/2||o||^2 - 1/2 (o - b(theta))^T A (o - b(theta)), so that E = 1/2 (o-b)^T A (o-b) (eq. 69)."""

    def __init__(self, b_fn, a, theta):
        super().__init__(None, 1)
        self.b_fn, self.a = b_fn, a
        self.theta = nn.Parameter(torch.tensor(theta, dtype=torch.float64))

    def phi(self, pre, post):
        d = post - self.b_fn(self.theta)
        a = self.a(self.theta) if callable(self.a) else self.a
        return 0.5 * post.pow(2).sum(1) - 0.5 * ((d @ a) * d).sum(1)

    def forward(self, pre, params):
        return torch.zeros(1, 1, dtype=torch.float64), None  # never relaxed: the output is clamped in CpL


def _network(term, n_out):
    layers = [Layer("s0", (1,), None), Layer("o", (n_out,), "identity")]
    return EnergyNetwork(layers, {"well": term})


def _cpl_update(net, o_star, y_onehot_target, algorithm, beta):
    alg = get_algorithm(algorithm, ignore_unknown=True, beta=beta, free_iterations=1, nudged_iterations=1)  # CL: beta=1
    x = torch.zeros(1, 1, dtype=torch.float64)
    free = RelaxResult([x, o_star.view(1, -1)], 0)
    (g,) = alg.gradients(net, x, y_onehot_target.view(1, -1), free)
    return g  # descent direction: the update is -eta * g


def b_fn(theta):
    return torch.stack([1 + theta[1], theta[0] + 2 * theta[1]]).view(1, 2)


@pytest.mark.parametrize(
    "algorithm,beta", [("PCpL", 0.1), ("PCpL", 0.5), ("PCpL", 1.0), ("NCpL", 0.3), ("CCpL", 0.3), ("CL", 0.25)]
)
def test_b2_one_cpl_step_increases_the_squared_error(algorithm, beta):
    net = _network(QuadraticWell(b_fn, A, [0.0, 0.0]), 2)
    theta = net.interactions["well"].theta
    o_star = b_fn(theta).detach()  # free state (E = 0 there)
    g = _cpl_update(net, o_star, torch.zeros(2, dtype=torch.float64), algorithm, beta)
    # eq. (75): the CpL update is -eta b'^T A b, whatever beta
    b_prime = torch.tensor([[0.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    assert torch.allclose(g, b_prime.t() @ A @ o_star.view(2), atol=1e-12)

    def mse(t):
        return float(b_fn(t).pow(2).sum())

    eta = 1e-3
    with torch.no_grad():
        after = mse(theta - eta * g)
    # eq. (86) says eta + O(eta^2); the exact first-order increase is 2*eta because d||b||^2/dtheta = 2 b^T b'
    # (eq. 77 drops the factor 2). Either way the squared error goes up.
    assert after - mse(theta.detach()) == pytest.approx(2 * eta, rel=0.05)


class ScalarWell(QuadraticWell):
    """E(theta, o) = 1/2 (5 - 4 theta)(o - theta)^2 (eq. 87)."""

    def __init__(self, theta):
        super().__init__(lambda t: t.view(1, 1), lambda t: (5 - 4 * t).view(1, 1), [theta])


def _l1(t):
    return (5 - 4 * t) * t**2  # eq. (94); its derivative at theta = 1 is -2 (eq. 95)


@pytest.mark.parametrize("beta", [-1.0, -0.4, 0.1, 0.3])
def test_b3_one_cpl_step_increases_lcpl1(beta):
    """Erratum: dE/dtheta = -(o - theta)(5 - 6 theta + 2 o), not eq. (90), so at theta = 1 the CpL update is
    -eta (1 - 2 beta) instead of eq. (93)'s -eta (1 + 2 beta): L^(1) increases for every beta < 1/2, which
    includes the small positive beta prescribed for P-CpL. The counterexample stands, on a different range."""
    net = _network(ScalarWell(1.0), 1)
    theta = net.interactions["well"].theta
    g = _cpl_update(net, theta.detach().view(1), torch.zeros(1, dtype=torch.float64), "PCpL", beta)
    assert float(g) == pytest.approx(1 - 2 * beta, abs=1e-12)
    # the hand derivative, checked by finite differences of E at o = (1 - beta) theta
    o, h = 1.0 - beta, 1e-6
    energy = lambda th: 0.5 * (5 - 4 * th) * (o - th) ** 2
    assert (energy(1 + h) - energy(1 - h)) / (2 * h) == pytest.approx(-(o - 1) * (5 - 6 + 2 * o), abs=1e-8)
    eta = 1e-3
    assert _l1(1.0 - eta * float(g)) > _l1(1.0)


@pytest.mark.parametrize("beta", [0.75, 1.0])
def test_b3_large_beta_decreases_lcpl1(beta):
    net = _network(ScalarWell(1.0), 1)
    theta = net.interactions["well"].theta
    g = _cpl_update(net, theta.detach().view(1), torch.zeros(1, dtype=torch.float64), "PCpL", beta)
    assert _l1(1.0 - 1e-3 * float(g)) < _l1(1.0)
