"""Device non-idealities of deep resistive networks against their definitions: the quantisation grid, the
log-normal variation, the optimality (KKT) conditions of the circuit with shifted diode bounds, read noise."""

import math

import pytest
import torch

from eqprop.errors import ConfigError
from eqprop.models.devices import (
    quantization_constraint,
    quantize_conductances,
    read_noise,
    set_forward_voltage,
    vary_conductances,
)
from eqprop.models.resistive import CoordinateDescentSolver, DeepResistiveNetwork

F64 = torch.float64


def drn(seed=0):
    torch.manual_seed(seed)
    net = DeepResistiveNetwork([5, 8, 6, 3], input_gain=3.0).double()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 1:
                p.normal_()
    return net


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_quantised_conductances_sit_on_the_grid_within_half_a_step(bits):
    net = drn()
    before = [net.conductance(k).detach().clone() for k in (1, 2, 3)]
    q = quantize_conductances(net, bits)
    for k, g in zip((1, 2, 3), before):
        top = float(g.max())
        step = top / (2**bits - 1)
        levels = q.conductance(k).detach() / step
        assert torch.allclose(levels, levels.round(), atol=1e-9)  # on the grid k * step
        assert int(levels.round().max()) <= 2**bits - 1 and float(levels.min()) >= 0
        assert float((q.conductance(k).detach() - g).abs().max()) <= step / 2 + 1e-12
        assert torch.equal(net.conductance(k).detach(), g)  # the trained network is untouched
    clipped = quantize_conductances(net, bits, g_max=0.1)
    assert float(clipped.conductance(1).detach().max()) <= 0.1 + 1e-12
    project = quantization_constraint(bits, 0.1)
    g = before[0].clone()
    project(g)
    assert torch.equal(g, clipped.conductance(1).detach())


def test_device_variation_is_log_normal_per_device_and_seeded():
    torch.manual_seed(0)
    net = DeepResistiveNetwork([400, 300, 10], input_gain=1.0).double()
    varied = vary_conductances(net, 0.1, seed=3)
    g, h = net.conductance(1).detach(), varied.conductance(1).detach()
    on = g > 0
    log_ratio = (h[on] / g[on]).log()
    assert abs(float(log_ratio.std()) - 0.1) < 0.005 and abs(float(log_ratio.mean())) < 0.005
    assert torch.equal(h[~on], g[~on])  # no device stays no device
    assert torch.equal(vary_conductances(net, 0.1, seed=3).conductance(1), varied.conductance(1))
    assert not torch.equal(vary_conductances(net, 0.1, seed=4).conductance(1), varied.conductance(1))
    assert torch.equal(vary_conductances(net, 0.0).conductance(1), net.conductance(1))


@pytest.mark.parametrize("forward_voltage", [0.0, 0.2, 0.7])
def test_with_a_forward_voltage_the_steady_state_is_the_circuits_optimum(forward_voltage):
    """KKT conditions of min E(v) on the shifted half-lines (v >= -V_F excitatory, v <= V_F inhibitory), by
    autograd of the energy: dE/dv = 0 at free units, >= 0 at a lower bound, <= 0 at an upper bound; and some units
    sit exactly at their shifted bound."""
    net = set_forward_voltage(drn(1), forward_voltage)
    x = torch.rand(6, 5, dtype=F64)
    with torch.no_grad():
        states = CoordinateDescentSolver()(net, net.init_state(x), 2000).states
    v = [s.clone().requires_grad_(True) for s in states[1:]]
    grads = torch.autograd.grad(net.energy([states[0], *v]).sum(), v)
    at_bound = 0
    for k, (s, g) in enumerate(zip(states[1:], grads), start=1):
        if k == net.depth:
            assert float(g.abs().max()) < 1e-9
            continue
        half = s.shape[1] // 2
        low, high = s[:, :half], s[:, half:]
        assert float(low.min()) >= -forward_voltage - 1e-12 and float(high.max()) <= forward_voltage + 1e-12
        at_low, at_high = low == -forward_voltage, high == forward_voltage
        at_bound += int(at_low.sum() + at_high.sum())
        for part, bound, sign in ((g[:, :half], at_low, 1.0), (g[:, half:], at_high, -1.0)):
            assert float(torch.where(bound, 0.0, part).abs().max()) < 1e-9  # stationary where free
            assert float((sign * torch.where(bound, part, 0.0)).min()) >= -1e-9  # pushing into the bound
    assert at_bound > 0


def test_read_noise_and_bad_settings():
    out = torch.zeros(20000, 10, dtype=F64)
    noisy = read_noise(out, 0.05, torch.Generator().manual_seed(0))
    assert abs(float(noisy.std()) - 0.05) < 1e-3 and abs(float(noisy.mean())) < 1e-3
    net = drn()
    for call in (lambda: quantize_conductances(net, 0), lambda: vary_conductances(net, -0.1),
                 lambda: set_forward_voltage(net, -0.1), lambda: read_noise(out, math.nan),
                 lambda: quantize_conductances(torch.nn.Linear(2, 2), 4)):  # fmt: skip
        with pytest.raises(ConfigError):
            call()


def test_eqprop_robustness_writes_curves_and_numbers(tmp_path, capsys):
    import json

    from eqprop.cli import main

    run = tmp_path / "run"
    args = ["model=drn", "hidden=[16]", "beta=0.1", "epochs=2", "limit_train=256", "limit_test=64", "progress=false"]
    assert main(["train", *args, "tensorboard=false", f"out_dir={run}", "-q"]) == 0
    out = tmp_path / "rob.png"
    argv = ["robustness", str(run), "--bits", "6", "1", "--sigmas", "5", "--forward-voltage", "0.2",
            "--read-noise", "0.05", "--draws", "2", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(result) == {"ideal", "bits", "variation", "forward_voltage", "read_noise"}
    assert len(result["variation"]["0.05"]) == 2 and 0 <= result["bits"]["1"] <= 1
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "1-bit conductances" in capsys.readouterr().out
    assert main(["robustness", str(run), "--bits", "0"]) == 2


def test_training_with_quantised_devices_keeps_every_conductance_on_the_grid(tmp_path):
    """``conductance_bits=B g_max=G``: the conductances start on the grid of 2^B levels in [0, G] and stay on it
    after every optimiser step (the parameter-constraint mechanism); without g_max the config says what is missing."""
    from eqprop.training.config import parse_overrides
    from eqprop.training.trainer import Trainer

    cfg = parse_overrides(["model=drn", "hidden=[16]", "beta=0.1", "epochs=1", "limit_train=128", "limit_test=32",
                           "conductance_bits=3", "g_max=0.4", "lrs=[0.2]", "progress=false"])  # fmt: skip
    trainer = Trainer(cfg, log=lambda m: None)
    net = trainer.network
    step = 0.4 / 7

    def on_grid() -> bool:
        return all(
            bool(torch.allclose(g / step, (g / step).round(), atol=1e-5)) and float(g.max()) <= 0.4 + 1e-6
            for g in (net.conductance(k).detach() for k in (1, 2))
        )

    assert on_grid()
    before = [net.conductance(k).detach().clone() for k in (1, 2)]
    trainer.fit()
    assert on_grid() and any(not torch.equal(b, net.conductance(k).detach()) for k, b in zip((1, 2), before))
    with pytest.raises(ConfigError, match="conductance_bits needs g_max"):
        parse_overrides(["model=drn", "conductance_bits=4"])
