"""Oracle: autograd. The PCN's explicit top-down messages (mod-pgd) against the autograd reference solver."""

import pytest
import torch

from eqprop import get_algorithm, pc_vgg
from eqprop.core.nudging import get_cost, one_hot
from helpers import rel_error, skip_pcn


@pytest.mark.parametrize("first", ["even", "odd"])
@pytest.mark.parametrize("pool_every", [1, 2])
def test_explicit_messages_equal_the_autograd_relaxation(first, pool_every):
    # one convolution and one transposed convolution per layer and iteration, reusing z_k and the pooling
    # indices, give the same nudged states as recomputing the top-down errors by autograd
    torch.manual_seed(2)
    net = pc_vgg(1, 10, 8, [4, 6, 6], hidden=[12], pool_every=pool_every, gains=0.8).double()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    y = one_hot(torch.randint(0, 10, (5,)), 10).double()
    free = [s.detach() for s in net.forward_pass(x)]
    a = net.relax_nudged(free, get_cost("cross_entropy"), y, 0.3, 7, first, engine="messages")
    b = net.relax_nudged(free, get_cost("cross_entropy"), y, 0.3, 7, first, engine="autograd")
    assert max(float((u - v).abs().max()) for u, v in zip(a, b)) < 1e-12
    assert max(float((u - v).abs().max()) for u, v in zip(a, free)) > 1e-3  # the phase moved the states
    with pytest.raises(ValueError, match="valid engines"):
        net.relax_nudged(free, get_cost("cross_entropy"), y, 0.3, 1, engine="jax")
    with pytest.raises(ValueError, match="valid engines"):
        get_algorithm("PC-CEP", engine="jax")
    labels = y.argmax(1)
    ga = get_algorithm("PC-CEP", beta=0.3, nudged_iterations=7, engine="messages").step(net, x, labels).grads
    gb = get_algorithm("PC-CEP", beta=0.3, nudged_iterations=7, engine="autograd").step(net, x, labels).grads
    assert rel_error(ga, gb) < 1e-12  # the same updates


@pytest.mark.parametrize("solver", ["mod-pgd", "pgd"])
@pytest.mark.parametrize("first", ["even", "odd"])
def test_skip_connection_messages_equal_the_autograd_relaxation(first, solver):
    # the skip's transposed strided 1x1 conv joins the top-down message of its source layer
    net, x, labels = skip_pcn(1)
    y = one_hot(labels, 10).double()
    free = [s.detach() for s in net.forward_pass(x)]
    cost = get_cost("half_squared_error")
    a = net.relax_nudged(free, cost, y, 0.3, 7, first, engine="messages", solver=solver)
    b = net.relax_nudged(free, cost, y, 0.3, 7, first, engine="autograd", solver=solver)
    assert max(float((u - v).abs().max()) for u, v in zip(a, b)) < 1e-12
    assert min(float((u - v).abs().max()) for u, v in zip(a[1:], free[1:])) > 1e-4  # every layer moved


@pytest.mark.parametrize("name", ["PC-CCpL", "PC-PCpL"])
def test_clamped_phases_messages_equal_autograd(name):
    net, x, labels = skip_pcn(2)
    ga = get_algorithm(name, beta=0.2, nudged_iterations=6, engine="messages").step(net, x, labels).grads
    gb = get_algorithm(name, beta=0.2, nudged_iterations=6, engine="autograd").step(net, x, labels).grads
    assert rel_error(ga, gb) < 1e-12
    assert min(float(g.abs().max()) for g in ga) > 1e-6  # every tensor gets an update


def test_autograd_reference_top_down_is_minus_the_consumers_energy_gradient():
    """Delta_k from the library's top_down (E's autograd gradient minus eps_k) against the consumers' squared
    errors written out for layer 5 of the skip net: eps_6 (conv + pool of h_5) and eps_8 (the skip 5 -> 8)."""
    net, x, labels = skip_pcn(1)
    y = one_hot(labels, 10).double()
    s = net.relax_nudged(net.forward_pass(x), get_cost("cross_entropy"), y, 0.5, 4)
    h5 = s[5].clone().requires_grad_(True)
    p, skip = net.predictions, net.skips[1]
    eps6 = s[6] - torch.relu(
        torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(h5, p[5].weight, p[5].bias, padding=1), 2)
    )
    conv8 = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(s[7], p[7].weight, p[7].bias, padding=1), 2)
    eps8 = s[8] - torch.relu(conv8 + torch.nn.functional.conv2d(h5, skip.weight, stride=4))
    (grad,) = torch.autograd.grad(0.5 * (eps6.pow(2).sum() + eps8.pow(2).sum()), h5)
    assert skip.source == 5 and skip.target == 8 and skip.stride == 4
    assert float((net.top_down(5, s) + grad).abs().max()) < 1e-12
    assert float(grad.abs().max()) > 1e-3
