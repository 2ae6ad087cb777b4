"""Oracle: autograd. The explicit messages and every solver built on them against dPhi/ds and relaxations
recomputed by autograd (the reference engine), states and learning-rule updates alike."""

import pytest
import torch

from eqprop import ClampNudge, ConvPool, EPNudge, SquaredError, get_algorithm, one_hot, relax
from helpers import max_diff, rel_error, small_conv, small_mlp


@pytest.mark.parametrize("make", [small_mlp, small_conv])
def test_messages_equal_autograd_dphi_ds(make):
    net, x, _ = make()
    states = net.init_state(x, "uniform")
    states[-1] = torch.randn_like(states[-1])
    msgs = net.messages(states)
    grads = net.grad_phi(states)
    assert max_diff(msgs[1:], grads) < 1e-12


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_pool_transposed_message_unpools_at_the_argmax(channels_last):
    # the transposed message uses max-pool's backward kernel (channels-last capable) as the unpooling
    inter = ConvPool(0, 1, 3, 4)
    pre = torch.randn(2, 3, 8, 8)
    if channels_last:
        pre = pre.contiguous(memory_format=torch.channels_last)
    params = inter.relaxation_params()
    msg, (idx, z) = inter(pre, params)
    post = torch.randn_like(msg)
    unpooled = torch.nn.functional.max_unpool2d(post, idx, 2, output_size=z.shape[-2:])
    assert torch.equal(inter.unpool(post, (idx, z)), unpooled)
    assert (
        max_diff(
            [inter.backward(post, (idx, z), params)],
            [torch.nn.functional.conv_transpose2d(unpooled, inter.weight, padding=1)],
        )
        < 1e-5
    )
    if channels_last:
        assert inter.unpool(post, (idx, z)).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("schedule", ["synchronous", "asynchronous"])
@pytest.mark.parametrize("first", ["even", "odd"])
@pytest.mark.parametrize("nudge_kind", [None, "ep", "clamp"])
def test_message_engine_matches_autograd_reference(schedule, first, nudge_kind):
    net, x, labels = small_conv()
    y = one_hot(labels, 5, torch.float64)
    start = net.init_state(x, "uniform")
    nudge = {None: None, "ep": EPNudge(SquaredError(), y, 0.3), "clamp": ClampNudge(y)}[nudge_kind]
    a = relax(net, start, 7, schedule=schedule, first=first, nudge=nudge, engine="messages")
    b = relax(net, start, 7, schedule=schedule, first=first, nudge=nudge, engine="autograd")
    assert max_diff(a.states, b.states) < 1e-12


@pytest.mark.parametrize("make", [small_mlp, small_conv])
@pytest.mark.parametrize("nudge_kind", ["ep", "clamp"])
@pytest.mark.parametrize("schedule", ["synchronous", "asynchronous"])
def test_deviation_mode_in_full_precision_is_the_same_relaxation(make, nudge_kind, schedule):
    # s = s0 + d with P(A s0 + A d) and A^T(P^T s - P^T s0) + A^T P^T s0 is an exact rewriting of the messages
    net, x, labels = make()
    y = one_hot(labels, 5, torch.float64)
    free = relax(net, net.init_state(x), 40, schedule=schedule).states
    nudge = EPNudge(SquaredError(), y, 0.3) if nudge_kind == "ep" else ClampNudge(y)
    plain = relax(net, free, 12, nudge=nudge, schedule=schedule).states
    dev = relax(net, free, 12, nudge=nudge, schedule=schedule, deviation=True).states
    assert max_diff(plain, dev) < 1e-12
    assert max_diff(plain, free) > 1e-3  # the nudged phase did move


@pytest.mark.parametrize("name", ["CL", "PEP", "CEP", "CCpL", "TBP"])
def test_fast_engine_gives_the_autograd_reference_updates_in_fp32(name):
    # the learning rules' updates, not only the states, are the same on both engines in single precision
    net, x, labels = small_conv()
    net = net.float()
    x = x.float()
    kw = dict(free_iterations=30, nudged_iterations=8, **({} if name in ("TBP", "CL") else {"beta": 0.2}))
    a = get_algorithm(name, engine="messages", **kw).step(net, x, labels).grads
    b = get_algorithm(name, engine="autograd", **kw).step(net, x, labels).grads
    assert all(g.dtype == torch.float32 for g in a)
    assert rel_error(a, b) < 1e-5  # measured 1e-7 to 3e-6 (fp32 rounding divided by beta)
    assert all(float(g.norm()) > 1e-2 for g in b)  # every layer gets a real update


def test_truncated_backprop_engines_agree():
    net, x, labels = small_conv()
    kw = dict(free_iterations=50, nudged_iterations=5)
    fast = get_algorithm("TBP", **kw).step(net, x, labels).grads
    ref = get_algorithm("TBP", engine="autograd", **kw).step(net, x, labels).grads
    assert rel_error(fast, ref) < 1e-10
