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


@pytest.mark.parametrize("first", ["even", "odd"])
def test_skip_variant_messages_equal_the_autograd_relaxation(first):
    net, x, labels = skip_pcn(1)
    y = one_hot(labels, 10).double()
    free = [s.detach() for s in net.forward_pass(x)]
    a = net.relax_nudged(free, get_cost("squared_error"), y, 0.3, 7, first, engine="messages")
    b = net.relax_nudged(free, get_cost("squared_error"), y, 0.3, 7, first, engine="autograd")
    assert max(float((u - v).abs().max()) for u, v in zip(a, b)) < 1e-12
    assert max(float((u - v).abs().max()) for u, v in zip(a, free)) > 1e-3
