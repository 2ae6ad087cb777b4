import math

import pytest
import torch

from eqprop import Bias, ConvPool, Dense, EnergyNetwork, Layer, dchn, hopfield_mlp
from helpers import max_diff, small_conv, small_mlp


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


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_int8_coded_pooling_equals_max_pool_and_its_backward(dtype, channels_last):
    # the plain-torch form of the fused kernels; ties (first position wins) as in max_pool2d
    from eqprop.core.kernels import max_pool2x2_code, max_unpool2x2_code

    z = torch.randn(3, 4, 8, 6).to(dtype)
    z[0, 0, :2, :2] = 0.5  # a four-way tie
    z[1, 2, 2:4, 2:4] = torch.tensor([[0.1, 0.7], [0.7, 0.2]], dtype=dtype)  # a two-way tie
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    pooled, idx = torch.nn.functional.max_pool2d(z, 2, return_indices=True)
    m, code = max_pool2x2_code(z)
    assert code.dtype == torch.int8 and torch.equal(m, pooled)
    post = torch.randn_like(pooled)
    ref = torch.ops.aten.max_pool2d_with_indices_backward(post, z, [2, 2], [2, 2], [0, 0], [1, 1], False, idx)
    out = max_unpool2x2_code(post, code)
    assert torch.equal(out, ref)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_energy_is_half_norm_minus_phi():
    net, x, _ = small_conv()
    s = net.init_state(x, "uniform")
    e = net.energy(s)
    manual = 0.5 * sum(t.flatten(1).pow(2).sum(1) for t in s[1:]) - net.phi(s)
    assert torch.allclose(e, manual)
    # Phi by hand for the conv + pool + dense + bias terms (eq. 97)
    w1, w2 = net.interactions["conv1"].weight, net.interactions["conv2"].weight
    w3 = net.interactions["dense3"].weight
    pooled1 = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(s[0], w1, padding=1), 2)
    pooled2 = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(s[1], w2, padding=1), 2)
    phi = (
        (s[1] * pooled1).flatten(1).sum(1)
        + (s[2] * pooled2).flatten(1).sum(1)
        + ((s[2].flatten(1) @ w3.t()) * s[3]).sum(1)
        + sum(
            (s[k] * net.interactions[f"bias{k}"].bias.view(1, -1, *([1] * (s[k].dim() - 2)))).flatten(1).sum(1)
            for k in (1, 2, 3)
        )
    )
    assert torch.allclose(net.phi(s), phi)


def test_dchn_table5_shapes_and_names():
    net = dchn(3, 10)
    assert [layer.shape for layer in net.layers] == [
        (3, 32, 32),
        (128, 16, 16),
        (256, 8, 8),
        (512, 4, 4),
        (512, 2, 2),
        (10,),
    ]
    names = set(net.state_dict())
    assert {
        "interactions.conv1.weight",
        "interactions.conv4.weight",
        "interactions.dense5.weight",
        "interactions.bias5.bias",
    } <= names
    assert net.interactions["dense5"].weight.shape == (10, 512 * 2 * 2)
    assert [layer.activation for layer in net.layers[1:]] == ["hard_sigmoid"] * 4 + ["identity"]


def test_init_is_kaiming_uniform_scaled_by_gain():
    net = dchn(3, 10, gains=(0.4, 0.7, 0.6, 0.3, 0.4))
    for name, gain, fan_in in [("conv1", 0.4, 27), ("conv2", 0.7, 128 * 9), ("dense5", 0.4, 2048)]:
        w = net.interactions[name].weight.detach()
        bound = gain / math.sqrt(fan_in)
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.95 * bound  # many draws: the max is close to the bound
        assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.05 * bound


def test_channel_multiplier_and_bad_sizes():
    net = dchn(1, 10, channel_multiplier=0.125)
    assert [layer.shape[0] for layer in net.layers[1:5]] == [16, 32, 64, 64]
    with pytest.raises(ValueError, match="divisible"):
        dchn(1, 10, input_size=20)
    with pytest.raises(ValueError, match="expected 5 gains"):
        dchn(1, 10, gains=(0.5, 0.5))


def test_bad_input_shape_is_a_clear_error():
    net = hopfield_mlp((4, 3, 2))
    with pytest.raises(ValueError, match=r"expected \(batch, 4\)"):
        net.init_state(torch.zeros(2, 5))


def test_mismatched_interaction_shapes_are_rejected():
    layers = [Layer("s0", (1, 8, 8), None), Layer("s1", (4, 8, 8)), Layer("s2", (3,), "identity")]
    inters = {"conv1": ConvPool(0, 1, 1, 4), "dense2": Dense(1, 2, (4, 8, 8), (3,)), "bias1": Bias(1, (4, 8, 8))}
    with pytest.raises(ValueError, match="conv1"):
        EnergyNetwork(layers, inters)  # pooling makes 4x4, layer says 8x8
    with pytest.raises(ValueError, match="unknown activation"):
        Layer("s1", (3,), "tanhh")


def test_layer_parameter_groups_follow_table5():
    net = dchn(1, 10, channel_multiplier=0.125)
    groups = net.layer_parameters()
    assert len(groups) == 5
    assert groups[0][0] is net.interactions["conv1"].weight and groups[0][1] is net.interactions["bias1"].bias
    assert sum(len(g) for g in groups) == len(list(net.parameters()))
