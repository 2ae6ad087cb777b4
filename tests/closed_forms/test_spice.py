"""Oracle: ngspice's DC operating point of the exported circuit against eqprop's exact solver. Skipped only where
ngspice is missing outside CI (`.ci/run` installs it, and under CI=true a missing ngspice fails)."""

import os
import shutil

import pytest
import torch

from eqprop.core.nudging import ClampNudge, EPNudge, get_cost
from eqprop.errors import ConfigError
from eqprop.models.resistive import CoordinateDescentSolver, drn_xs
from eqprop.models.spice import (
    IDEAL_DIODE,
    SMALL_SIGNAL_DIODE,
    SpiceError,
    diode_offset_bound,
    netlist,
    ngspice_operating_point,
    spice_states,
)
from helpers import random_drn

if shutil.which("ngspice") is None:
    if os.environ.get("CI"):
        raise RuntimeError("ngspice is missing on CI: .ci/run installs it (apt-get install -y ngspice)")
    pytestmark = pytest.mark.skip(reason="ngspice is not installed (apt-get install ngspice)")

F64 = torch.float64


def diode_currents(net, states):
    """The current each hidden node's diode must carry at eqprop's state: the net current the resistors and the
    bias push into the node (zero at a free node, Kirchhoff)."""
    currents = []
    pre = net.sources(states[0])
    for k in range(1, net.depth):
        v, post = states[k], states[k + 1]
        g_in, g_out = net.conductance(k).detach(), net.conductance(k + 1).detach()
        inflow = pre @ g_in - v * g_in.sum(0) + post @ g_out.t() - v * g_out.sum(1) + net.bias(k).detach()
        currents.append(inflow.abs())
        pre = v
    return torch.cat([c.flatten() for c in currents])


def bound_for(net, states, nudge=None):
    """The node-voltage bound the near-ideal diode gives: a conducting diode holds its node within
    N V_T ln(1 + I/IS) of the bound, and the resistive network averages that offset into the other nodes (each
    node's voltage is a conductance-weighted mean of its neighbours'). A negative nudging conductance c beta < 0
    at an output node of total conductance a weakens the mean there, amplifying an offset by at most a/(a + c beta)."""
    offset = diode_offset_bound(IDEAL_DIODE, max_current=float(diode_currents(net, states).max()) + 1e-12)
    if isinstance(nudge, EPNudge) and nudge.beta < 0:
        a = net.conductance(net.depth).detach().sum(0) + net.output_leak
        offset *= float((a / (a + nudge.cost.curvature * nudge.beta)).max())
    return offset


def nudges(y):
    cost = get_cost("half_squared_error")
    return [None, EPNudge(cost, y, 0.5), EPNudge(cost, y, -0.05), ClampNudge(y)]


@pytest.mark.parametrize("seed, leak", [(0, 0.0), (1, 0.0), (2, 0.0), (1, 0.7)])
def test_ngspice_agrees_with_the_exact_solver_free_nudged_and_clamped(seed, leak):
    """Random small DRNs with units at their diodes' bounds (and, for seed 1, an output node without conductance,
    which both hold at 0 V unless an output leak grounds it through a resistor): every node voltage within the
    bound derived from the diode model (about 0.1 mV), for the free phase, positive and negative nudging (a negative
    resistor; refused by both where it makes the energy unbounded) and a clamped output, and the predicted class is
    the same."""
    net = random_drn(seed=seed)
    net.output_leak = leak
    x = torch.rand(1, 5, dtype=F64)
    y = torch.eye(3, dtype=F64)[[seed % 3]]
    at_bound = 0
    for nudge in nudges(y):
        try:
            with torch.no_grad():
                ours = CoordinateDescentSolver()(net, net.init_state(x), 500, nudge).states
        except ValueError:  # a negative beta past an output's conductance: no circuit either
            with pytest.raises(ValueError, match="unbounded"):
                netlist(net, x, nudge)
            continue
        theirs = spice_states(net, x, nudge)
        bound = bound_for(net, ours, nudge)
        assert 1e-6 < bound < 3e-4
        for k in range(1, net.depth + 1):
            assert float((ours[k] - theirs[k]).abs().max()) <= bound * 1.05, (k, nudge)
        if not isinstance(nudge, ClampNudge):
            assert int(ours[-1].argmax()) == int(theirs[-1].argmax())
        at_bound += int(sum(int((s == 0).sum()) for s in ours[1:-1]))
    assert at_bound > 0  # diodes conduct somewhere: the check covers clamped units


def test_the_header_lists_eqprops_outputs_and_a_trained_drn_xs_agrees_on_real_mnist():
    """The netlist's header holds one ``* eqprop: outJ = V`` line per output; a DRN-XS at the paper's input gain
    (100), trained for 100 C-EP steps on real MNIST, agrees with ngspice on a test image within the bound (well
    under 1 mV) and predicts the same class."""
    from pathlib import Path

    from eqprop import get_algorithm
    from eqprop.training.data import load_dataset

    root = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
    if not root.exists():
        pytest.skip("the shared MNIST files are not here")
    data = load_dataset("mnist28", root, limit_train=400, limit_test=2)
    images = data.train_images.flatten(1).double() / 255
    torch.manual_seed(0)
    net = drn_xs().double()
    rule = get_algorithm("CEP", beta=0.5, cost="half_squared_error", solver="coordinate-descent", first="odd",
                         free_iterations=4, nudged_iterations=4)  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.02)
    for step in range(100):
        batch = slice(4 * step, 4 * step + 4)
        rule.step(net, images[batch], data.train_labels[batch])
        opt.step()
        with torch.no_grad():
            for k in range(1, net.depth + 1):
                net.conductance(k).clamp_(min=0)
    x = data.test_images[:1].flatten(1).double() / 255
    text = netlist(net, x)
    with torch.no_grad():
        ours = CoordinateDescentSolver()(net, net.init_state(x), 500).states
    header = [line for line in text.splitlines() if line.startswith("* eqprop: ")]
    assert [line.split(" = ")[0] for line in header] == [f"* eqprop: out{j}" for j in range(10)]
    assert [float(line.split(" = ")[1]) for line in header] == pytest.approx(ours[-1][0].tolist(), abs=1e-9)
    voltages = ngspice_operating_point(text)
    theirs = torch.tensor([voltages[f"out{j}"] for j in range(10)], dtype=F64)
    hidden = torch.tensor([voltages[f"h1_{j}"] for j in range(100)], dtype=F64)
    bound = bound_for(net, ours)
    assert bound < 1e-3 and float((theirs - ours[-1][0]).abs().max()) <= bound * 1.05
    assert float((hidden - ours[1][0]).abs().max()) <= bound * 1.05
    assert int(theirs.argmax()) == int(ours[-1].argmax())


def test_a_real_diode_costs_its_forward_voltage_and_bad_requests_are_clear():
    """With the 1N4148-like model the clamped nodes sit a diode drop away from 0 (tenths of a volt), far outside
    the ideal bound: what real diodes cost. A non-DRN model, a wrong input size and a failing netlist are errors
    that say what is wrong."""
    net = random_drn(seed=0)
    x = torch.rand(1, 5, dtype=F64)
    with torch.no_grad():
        ours = CoordinateDescentSolver()(net, net.init_state(x), 500).states
    real = spice_states(net, x, diode=SMALL_SIGNAL_DIODE)
    clamped = [(k, j) for k in range(1, net.depth) for j in range(net.nodes[k]) if float(ours[k][0, j]) == 0.0]
    assert clamped and max(abs(float(real[k][0, j])) for k, j in clamped) > 0.05
    from eqprop import hopfield_mlp

    with pytest.raises(ConfigError, match="deep resistive network"):
        netlist(hopfield_mlp((5, 4, 3)), x)
    with pytest.raises(ConfigError, match="the input has 4 values; this network takes 5"):
        netlist(net, torch.rand(1, 4, dtype=F64))
    broken = netlist(net, x).replace("R1_", "Rbad 1 2 0\nR1_", 1)  # a zero resistor: ngspice refuses it
    with pytest.raises(SpiceError):
        ngspice_operating_point(broken)


def test_ngspice_missing_or_failing_is_one_line_and_keeps_the_netlist(tmp_path, monkeypatch, capsys):
    from eqprop.cli import main

    net = random_drn(seed=0)
    x = torch.rand(1, 5, dtype=F64)
    broken = netlist(net, x).replace("R1_", "Rbad 1 2 0\nR1_", 1)
    kept = tmp_path / "failed.cir"
    with pytest.raises(SpiceError, match="the netlist is kept in"):
        ngspice_operating_point(broken, keep=kept)
    assert kept.read_text() == broken and (tmp_path / "failed.cir.log").exists()
    run = tmp_path / "run"
    args = ["model=drn", "hidden=[16]", "beta=0.1", "epochs=1", "limit_train=64", "limit_test=4", "progress=false"]
    assert main(["train", *args, "tensorboard=false", f"out_dir={run}", "-q"]) == 0
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["spice", "check", str(run), "--samples", "1"]) == 2
    assert (
        "ngspice is not installed: install the Debian/Ubuntu package (apt-get install ngspice)"
        in capsys.readouterr().err
    )


def test_spice_check_runs_test_images_of_a_run_through_both(tmp_path, capsys):
    """``eqprop spice check RUN --samples N``: accuracy, agreement and the largest voltage difference per diode
    model, from ngspice and the exact solver on the run's test images."""
    from eqprop.cli import main

    run = tmp_path / "run"
    args = ["model=drn", "hidden=[16]", "beta=0.1", "epochs=1", "limit_train=128", "limit_test=8", "progress=false"]
    assert main(["train", *args, "tensorboard=false", f"out_dir={run}", "-q"]) == 0
    assert main(["spice", "check", str(run), "--samples", "3", "--diode", "ideal", "--jobs", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].strip().startswith("3 test images; eqprop (exact steady state): accuracy")
    ideal = lines[2].strip()
    assert ideal.startswith("ngspice, ideal diode: accuracy") and "same prediction as eqprop 100.00%" in ideal
    assert float(ideal.split("max |dv| ")[1].split(" V")[0]) < 3e-4
    assert main(["spice", "check", str(run), "--samples", "0"]) == 2
