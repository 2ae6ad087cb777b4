"""Oracle: the PCN paper's tables, typed in here. Every shipped PCN config against Table 4 (normalisation),
Tables 5-6 (architectures), eq. 21 (init), section 5.5 (skips), appendix B (augmentation) and Tables 7-8."""

import math
from pathlib import Path

import pytest
import torch

from eqprop.training.config import load_config
from eqprop.training.data import dataset_spec
from eqprop.training.study import config_changes
from eqprop.training.trainer import build_network

ROOT = Path(__file__).resolve().parents[2] / "configs" / "pcn"

VGG5 = dict(
    channels=[128, 256, 512, 512, 512], pools=[False, True, True, True, True], hidden=[], skips=[], fan="fan_in"
)
VGG10 = dict(
    channels=[64, 128, 256, 256, 512, 512, 512, 512],
    pools=[True, True, False, True, False, True, False, True],
    hidden=[2048],
    fan="fan_out",
)
TABLE7 = dict(beta=0.02, nudged_iterations=5, momentum=0.9, nesterov=True, weight_decay=3e-4, epochs=100, eta_min=1e-6)
TABLE7_BATCH = {  # (MSE, CE)
    "mnist": (16, 64),
    "cifar10": (16, 64),
    "cifar100": (16, 64),
    "imagenet32": (256, 256),
}
TABLE8 = dict(
    beta=0.05,
    nudged_iterations=10,
    lrs=[0.02],
    momentum=0.9,
    nesterov=True,
    weight_decay=2e-4,
    batch_size=256,
    epochs=50,
    eta_min=2e-6,
    cost="cross_entropy",
)
CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100, "imagenet32": 1000, "imagenet": 1000}
TABLE7_FILES = sorted((ROOT / "table7").glob("*_*_*.yaml"))
TABLE8_FILES = sorted((ROOT / "table8").glob("*.yaml"))


def check(cfg, expected):
    for key, value in expected.items():
        got = getattr(cfg, key)
        assert got == value or (isinstance(value, float) and math.isclose(got, value)), f"{key}: {got} != {value}"


def test_every_table7_cell_has_an_ep_and_a_bp_config():
    cells = {p.stem for p in TABLE7_FILES}
    assert cells == {f"{d}_{c}_{a}" for d in TABLE7_BATCH for c in ("mse", "ce") for a in ("ep", "bp")}
    assert {p.stem for p in TABLE8_FILES} == {f"{m}_{a}" for m in ("vgg10", "vgg10_skip") for a in ("cep", "rep", "bp")}


@pytest.mark.parametrize("path", TABLE7_FILES, ids=[p.stem for p in TABLE7_FILES])
def test_table7_config_matches_the_paper(path):
    dataset, cost, alg = path.stem.split("_")
    cfg = load_config(path)
    assert cfg.dataset == dataset and cfg.model.kind == "pcn"
    check(cfg, VGG5 | TABLE7)
    check(cfg, dict(algorithm="PC-CEP" if alg == "ep" else "PC-BP", solver="mod-pgd", schedule="asynchronous"))
    check(cfg, dict(first="even", normalization="pcn"))
    mse = cost == "mse"
    check(cfg, dict(cost="half_squared_error" if mse else "cross_entropy", lrs=[0.04 if mse else 0.01]))
    assert cfg.batch_size == TABLE7_BATCH[dataset][0 if mse else 1]
    output_gain = 0.2 if (dataset == "imagenet32" and mse) else 1.0  # section 5.3 / Figure 3
    assert cfg.gains in ([1.0], [1.0] * 5 + [output_gain]) and (cfg.gains[-1] == output_gain)
    augmented = dataset != "mnist"  # appendix B.1: flips and random crops except on MNIST
    assert bool(cfg.flip) == augmented and (cfg.crop_padding > 0) == augmented


@pytest.mark.parametrize("path", TABLE8_FILES, ids=[p.stem for p in TABLE8_FILES])
def test_table8_config_matches_the_paper(path):
    cfg = load_config(path)
    check(cfg, VGG10 | TABLE8)
    check(cfg, dict(dataset="imagenet", image_size=224, normalization="pcn", solver="mod-pgd", first="even"))
    assert cfg.skips == ([[2, 5], [5, 8]] if "skip" in path.stem else [])
    assert cfg.algorithm == {"cep": "PC-CEP", "rep": "PC-REP", "bp": "PC-BP"}[path.stem.rsplit("_", 1)[1]]
    assert cfg.gains == [1.0] and cfg.flip and cfg.crop_padding > 0


def bound(weight, fan_mode):
    fan = weight[0].numel() if fan_mode == "fan_in" or weight.dim() == 2 else weight.shape[0] * weight[0, 0].numel()
    return math.sqrt(1.0 / fan)


def drawn_up_to(weight, c):
    """The weight's largest |entry| lies within c (up to float32 rounding) and near it (a uniform draw fills it)."""
    top = float(weight.detach().abs().max())
    return 0.98 * c < top <= c * (1 + 1e-6)


@pytest.mark.parametrize("dataset", ["mnist", "imagenet32"])
def test_vgg5_network_from_the_configs(dataset):
    cfg = load_config(ROOT / "table7" / f"{dataset}_mse_ep.yaml")
    spec = dataset_spec(dataset)
    net = build_network(cfg, (spec.in_channels, 32, 32), spec.num_classes)
    states = net.forward_pass(torch.zeros(1, spec.in_channels, 32, 32))
    assert [tuple(s.shape[1:]) for s in states] == [
        (spec.in_channels, 32, 32),
        (128, 32, 32),
        (256, 16, 16),
        (512, 8, 8),
        (512, 4, 4),
        (512, 2, 2),
        (CLASSES[dataset],),
    ]  # Table 5: the first conv keeps 32x32, the other four halve it
    gains = cfg.gains if len(cfg.gains) > 1 else cfg.gains * 6
    for f, gain in zip(net.predictions, gains):  # eq. 21: U(-c, c), c = gain sqrt(1 / fan_in)
        assert drawn_up_to(f.weight, gain * bound(f.weight, "fan_in"))


@pytest.mark.parametrize("skip", [False, True])
def test_vgg10_network_from_the_configs(skip):
    cfg = load_config(ROOT / "table8" / ("vgg10_skip_cep.yaml" if skip else "vgg10_cep.yaml"))
    net = build_network(cfg, (3, 224, 224), 1000)
    assert net.depth == 10 and [f.pool for f in net.predictions[:8]] == VGG10["pools"]
    assert [f.weight.shape[0] for f in net.predictions] == VGG10["channels"] + [2048, 1000]
    assert net.predictions[8].weight.shape[1] == 512 * 7 * 7  # five pools: 224 -> 7
    for f in net.predictions[:8]:  # eq. 21 with fan_out = C_out * 3 * 3 for VGG10's convolutions
        assert drawn_up_to(f.weight, bound(f.weight, "fan_out"))
    for f in net.predictions[8:]:  # dense weights: fan_in
        assert drawn_up_to(f.weight, bound(f.weight, "fan_in"))
    if skip:  # section 5.5: strided 1x1 convs 2 -> 5 (128@56 -> 512@28) and 5 -> 8 (512@28 -> 512@7)
        assert [(s.source, s.target, s.stride, tuple(s.weight.shape)) for s in net.skips] == [
            (2, 5, 2, (512, 128, 1, 1)),
            (5, 8, 4, (512, 512, 1, 1)),
        ]
    else:
        assert len(net.skips) == 0


def test_bad_pcn_settings_are_clear_errors():
    from eqprop.training.config import ConfigError, parse_overrides

    base = ["model=pcn", "dataset=digits", "algorithm=PC-CEP", "image_size=16", "lrs=[0.01]", "gains=[1.0]"]
    with pytest.raises(ConfigError, match="'skip'.*removed.*skips: \\[\\[2, 5\\], \\[5, 8\\]\\]"):
        parse_overrides([*base, "skip=true"])
    with pytest.raises(ConfigError, match="'pools' marks each conv layer: expected 3"):
        parse_overrides([*base, "channels=[4,4,4]", "pools=[true]"])
    with pytest.raises(ConfigError, match="'fan'"):
        parse_overrides([*base, "fan=fan_avg"])
    with pytest.raises(ConfigError, match="skips go from a layer j >= 0 to a conv layer k"):
        cfg = parse_overrides([*base, "channels=[4,4,4]", "pools=[true,false,true]", "skips=[[2,3]]"])
        build_network(cfg, (1, 16, 16), 10)
    with pytest.raises(ConfigError, match=r"must be divisible by 2\*\*3"):
        build_network(parse_overrides([*base, "channels=[4,4,4]", "pools=[true,true,true]"]), (1, 12, 12), 10)


def test_a_nudged_phase_shorter_than_the_network_is_noted_and_k_equals_l_is_not():
    """Table 7's K = 5 on VGG5's L = 6 layers gets a note (section 5.2); K = 6, PC-BP, PGD and clamping do not."""
    from eqprop.training.trainer import build_algorithm

    def notes(cfg):
        return build_algorithm(cfg).notes(build_network(cfg, (3, 32, 32), 10))

    cell = load_config(ROOT / "table7" / "cifar10_ce_ep.yaml")
    (note,) = notes(cell)
    assert "K = 5 nudged iterations, fewer than the model's 6 layers" in note and "K = 6 settles it" in note
    assert notes(load_config(ROOT / "table7_k_layers" / "cifar10_ce_ep.yaml")) == []
    assert notes(load_config(ROOT / "table7" / "cifar10_ce_bp.yaml")) == []
    assert notes(load_config(ROOT / "table7" / "cifar10_ce_ep.yaml", ["solver=pgd"])) == []
    assert notes(load_config(ROOT / "table7" / "cifar10_ce_ep.yaml", ["algorithm=PC-CCpL"])) == []


def test_the_k_equals_layers_variant_differs_from_its_table7_cell_only_in_k():
    variant = load_config(ROOT / "table7_k_layers" / "cifar10_ce_ep.yaml")
    cell = load_config(ROOT / "table7" / "cifar10_ce_ep.yaml")
    assert config_changes(cell, variant) == {"nudged_iterations": (5, 6)}
    assert build_network(variant, (3, 32, 32), 10).depth == variant.nudged_iterations  # K = L
