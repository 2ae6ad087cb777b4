"""Oracle: the papers' tables. Layer shapes, names and parameter groups of the DCHN (Table 5) and VGG CRNNs
(scalable-EP Table 4)."""

import pytest

from eqprop import dchn


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


def test_channel_multiplier_and_bad_sizes():
    net = dchn(1, 10, channel_multiplier=0.125)
    assert [layer.shape[0] for layer in net.layers[1:5]] == [16, 32, 64, 64]
    with pytest.raises(ValueError, match="divisible"):
        dchn(1, 10, input_size=20)
    with pytest.raises(ValueError, match="expected 5 gains"):
        dchn(1, 10, gains=(0.5, 0.5))


def test_layer_parameter_groups_follow_table5():
    net = dchn(1, 10, channel_multiplier=0.125)
    groups = net.layer_parameters()
    assert len(groups) == 5
    assert groups[0][0] is net.interactions["conv1"].weight and groups[0][1] is net.interactions["bias1"].bias
    assert sum(len(g) for g in groups) == len(list(net.parameters()))


def test_vgg_crnn_has_the_table_4_layer_counts():
    from eqprop.models import VGG_ARCHS, vgg_crnn

    for name, (blocks, fc) in VGG_ARCHS.items():
        net = vgg_crnn(3, 100, 32, blocks, fc)
        assert net.num_layers - 1 == int(name[3:])
        widths = [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2), (512, 1, 1)]
        if name == "vgg5":  # 128-256-512-512, each conv pooled
            widths = [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
        assert [net.layers[k].shape for k in net.block_ends] == widths
    with pytest.raises(ValueError, match=r"divisible by 2\*\*5"):
        vgg_crnn(1, 10, 16, VGG_ARCHS["vgg7"][0])
