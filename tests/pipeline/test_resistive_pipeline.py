"""Resistive networks and the ReLU baseline through configs, the Trainer, run directories and the CLI; the configs of
configs/resistive against the papers' tables, typed here."""

from pathlib import Path

import pytest
import torch

from eqprop.errors import ConfigError
from eqprop.training.config import load_config
from eqprop.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2] / "configs" / "resistive"
QUICK = ["limit_train=256", "limit_test=128", "progress=false", "tensorboard=false"]


def conductances_nonnegative(net):
    return all(bool((p >= 0).all()) for p, _ in net.parameter_constraints())


def test_model_drn_trains_on_digits_with_no_other_key(tmp_path):
    trainer = Trainer(load_config(None, ["model=drn", "epochs=8", *QUICK[2:], f"out_dir={tmp_path / 'r'}"]))
    history = trainer.fit()
    assert trainer.cfg.resistive.input_gain == 20.0 and trainer.cfg.first == "odd" and trainer.cfg.init == "persistent"
    assert history[-1]["test_error"] < 0.10  # measured: 4-5% after 8 epochs (20 epochs: 2.8%)
    assert conductances_nonnegative(trainer.network)
    assert sum(int((p == 0).sum()) for p, _ in trainer.network.parameter_constraints()) > 0  # the bound is active


def test_a_resumed_drn_run_equals_the_straight_one_and_keeps_g_nonnegative(tmp_path):
    common = ["model=drn", "epochs=2", "hidden=[20]", *QUICK]
    straight = Trainer(load_config(None, [*common, f"out_dir={tmp_path / 'a'}"]))
    straight.fit()
    stopped = Trainer(load_config(None, [*common, "stop_after_epoch=1", f"out_dir={tmp_path / 'b'}"]))
    stopped.fit()
    resumed = Trainer.resume(tmp_path / "b")
    resumed.fit()
    assert conductances_nonnegative(resumed.network)
    for (name, a), b in zip(straight.network.state_dict().items(), resumed.network.state_dict().values()):
        assert torch.equal(a, b), name


def test_eval_iterations_set_the_relaxation_of_predictions_only():
    """eval_iterations=E: a model in eval mode (validation and test predictions) relaxes E iterations from zeros,
    the same vertex sweeps as the solver run directly for E iterations, while training keeps free_iterations; the
    Trainer's test error is the error of those predictions. E < 1 is refused by name."""
    from eqprop.core.relaxation import get_solver
    from eqprop.training.trainer import evaluate

    cfg = load_config(None, ["model=drn", "epochs=1", "hidden=[30]", "eval_iterations=9", *QUICK])
    trainer = Trainer(cfg, log=lambda s: None)
    trainer.fit()
    net, rule, data = trainer.network, trainer.algorithm, trainer.data
    assert rule.phases.iterations_for(net) == cfg.free_iterations == 4  # the trainer left it in training mode
    x = data.prepare(data.test_images[:64]).flatten(1)
    solver = get_solver("coordinate-descent", rule.phases.settings)
    outputs = {}
    for t in (4, 9):
        outputs[t] = solver(net, net.init_state(x, "zeros"), t).states[-1]
    net.eval()
    assert torch.equal(rule.free_phase(net, x).states[-1], outputs[9])
    assert not torch.equal(outputs[4], outputs[9])  # 9 sweeps are not 4: the test can tell them apart
    labels = data.test_labels[:64]
    data.test_images, data.test_labels = data.test_images[:64], labels
    expected = float((outputs[9].argmax(1) != labels).float().mean())
    assert evaluate(net, rule, data, torch.device("cpu"))["error"] == pytest.approx(expected)
    assert "T=4 (eval 9)" in repr(rule)
    with pytest.raises(ConfigError, match="config key 'eval_iterations' must be >= 1, got 0"):
        load_config(None, ["model=drn", "eval_iterations=0"])


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["CL", "PEP", "NEP", "REP", "PCpL", "NCpL", "CCpL", "RCpL", "TBP", "RBP", "BPTT"])
def test_every_rule_trains_a_drn_on_digits(rule):
    overrides = ["model=drn", f"algorithm={rule}", "epochs=3", "beta=0.2", "lrs=[0.005]", *QUICK]
    history = Trainer(load_config(None, overrides)).fit()
    assert history[-1]["train_loss"] < history[0]["train_loss"] or history[-1]["test_error"] < 0.5


def test_hep_with_n_above_2_is_refused_and_n_2_is_centered_ep():
    from eqprop import get_algorithm
    from eqprop.models.resistive import drn

    with pytest.raises(ConfigError, match="holomorphic"):
        Trainer(load_config(None, ["model=drn", "algorithm=HEP", "points=4", *QUICK]))
    net = drn([6, 8, 3], input_gain=3.0).double()
    x, labels = torch.rand(4, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    grads = []
    for name, extra in (("HEP", {"points": 2}), ("CEP", {})):
        rule = get_algorithm(name, beta=0.3, cost="half_squared_error", solver="coordinate-descent", **extra)
        rule.step(net, x, labels)
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["hidden=[7]"], "hidden"),
        (["gains=[1.0,-1.0]"], "gains"),
        (["input_gain=-2"], "input_gain"),
        (["input_gain=0"], "input_gain"),
        (["lr_schedule=linear"], "lr_schedule"),
        (["nudged_schedule=sideways"], "nudged_schedule"),
        (["output_leak=-0.5"], "output_leak"),
        (["output_leak=.nan"], "output_leak"),
    ],
)
def test_bad_drn_settings_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        Trainer(load_config(None, ["model=drn", *overrides, *QUICK]))


def test_the_output_leak_reaches_the_circuit():
    trainer = Trainer(load_config(None, ["model=drn", "output_leak=0.25", *QUICK]))
    assert trainer.network.output_leak == 0.25


def test_the_relu_baseline_trains_by_backprop():
    trainer = Trainer(load_config(None, ["model=relu_mlp", "epochs=5", *QUICK]))
    history = trainer.fit()
    assert trainer.cfg.algorithm == "BP" and history[-1]["test_error"] < 0.25
    with pytest.raises(ConfigError, match="does not train"):
        load_config(None, ["model=relu_mlp", "algorithm=CEP"])


def test_the_exponential_schedule_and_bias_rates_reach_the_optimiser():
    trainer = Trainer(load_config(None, ["model=drn", "hidden=[4,6]", "lrs=[0.1,0.2,0.3]", "bias_lrs=[0.01]", *QUICK]))
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.1, 0.2, 0.3, 0.01, 0.01, 0.01]
    assert all(p.dim() == 2 for g in groups[:3] for p in g["params"])
    for _ in range(3):
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert [g["lr"] for g in groups] == pytest.approx([lr * 0.99**3 for lr in (0.1, 0.2, 0.3, 0.01, 0.01, 0.01)])


# (config, hidden, input gain, T, K, beta, weight rates, bias rates or None, epochs, batch, momentum, algorithm)
FAST = {
    "xs": ([100], 100.0, 4, 1.0, [0.006, 0.006], None, 10),
    "1h": ([1024], 480.0, 4, 1.0, [0.006, 0.006], None, 50),
    "2h": ([1024, 1024], 2000.0, 5, 1.0, [0.002, 0.006, 0.018], None, 50),
    "3h": ([1024] * 3, 4000.0, 6, 2.0, [0.005, 0.02, 0.08, 0.005], [0.0005, 0.002, 0.008, 0.0005], 50),
    "xl": ([32768], 800.0, 4, 1.0, [0.006, 0.006], None, 100),
}
UNIVERSAL = {  # MNIST: data gain 8 x model gain 60 / 250 / 500
    "1h": ([1024], 8 * 60.0, 4, 0.5, [0.005, 0.005], None),
    "2h": ([1024, 1024], 8 * 250.0, 5, 1.0, [0.002, 0.006, 0.005], None),
    "3h": ([1024] * 3, 8 * 500.0, 6, 2.0, [0.005, 0.02, 0.08, 0.005], [0.0005, 0.002, 0.008, 0.0005]),
}
DHN = {
    "1h": ([1024], 15, 15, [0.05, 0.05]),
    "2h": ([1024] * 2, 50, 20, [0.2, 0.05, 0.01]),
    "3h": ([1024] * 3, 100, 10, [0.2, 0.05, 0.01, 0.002]),
}


def shared(cfg):
    assert cfg.dataset == "mnist28" and cfg.normalization == "none" and cfg.cost == "half_squared_error"
    assert cfg.lr_schedule == "exponential" and cfg.gamma == 0.99 and cfg.weight_decay == 0.0


@pytest.mark.parametrize("name", sorted(FAST))
@pytest.mark.parametrize("rule", ["ep", "bp"])
def test_fast_drn_configs_follow_table_1(name, rule):
    hidden, gain, iters, beta, lrs, blrs, epochs = FAST[name]
    cfg = load_config(ROOT / "fast_drn" / f"{name}_{rule}.yaml")
    shared(cfg)
    assert (cfg.model.kind, cfg.hidden, cfg.resistive.input_gain, cfg.lrs, cfg.bias_lrs) == (
        "drn",
        hidden,
        gain,
        lrs,
        blrs,
    )
    assert (cfg.free_iterations, cfg.nudged_iterations, cfg.epochs, cfg.batch_size, cfg.momentum) == (
        iters,
        iters,
        epochs,
        4,
        0.0,
    )
    assert (cfg.schedule, cfg.first, cfg.nudged_schedule, cfg.init) == ("asynchronous", "odd", None, "persistent")
    assert cfg.algorithm == ("CEP" if rule == "ep" else "TBP") and (rule == "bp" or cfg.beta == beta)


@pytest.mark.parametrize("name", sorted(UNIVERSAL))
@pytest.mark.parametrize("rule", ["ep", "tbp"])
def test_universal_drn_configs_follow_tables_1_and_4(name, rule):
    hidden, gain, iters, beta, lrs, blrs = UNIVERSAL[name]
    cfg = load_config(ROOT / "universal_drn" / f"mnist_{name}_{rule}.yaml")
    shared(cfg)
    assert (cfg.hidden, cfg.resistive.input_gain, cfg.lrs, cfg.bias_lrs) == (hidden, gain, lrs, blrs)
    assert (cfg.free_iterations, cfg.nudged_iterations, cfg.epochs, cfg.batch_size, cfg.momentum) == (
        iters,
        iters,
        100,
        32,
        0.9,
    )
    if rule == "ep":
        assert (cfg.algorithm, cfg.beta, cfg.schedule, cfg.nudged_schedule) == ("CEP", beta, "forward", "backward")
    else:
        assert (cfg.algorithm, cfg.schedule, cfg.nudged_schedule) == ("TBP", "forward", "forward")


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_relu_and_dhn_configs(layers):
    cfg = load_config(ROOT / "universal_drn" / f"mnist_relu_{layers}h_bp.yaml")
    shared(cfg)
    assert (cfg.model.kind, cfg.algorithm, cfg.hidden, cfg.lrs, cfg.batch_size, cfg.momentum, cfg.epochs) == (
        "relu_mlp",
        "BP",
        [512] * layers,
        [0.005],
        32,
        0.9,
        100,
    )
    hidden, t, k, lrs = DHN[f"{layers}h"]
    cfg = load_config(ROOT / "dhn" / f"{layers}h.yaml")
    shared(cfg)
    assert (cfg.model.kind, cfg.hidden, cfg.gains, cfg.free_iterations, cfg.nudged_iterations, cfg.lrs) == (
        "mlp",
        hidden,
        [0.7],
        t,
        k,
        lrs,
    )
    assert (cfg.beta, cfg.batch_size, cfg.momentum, cfg.epochs, cfg.first, cfg.init) == (
        0.2,
        16,
        0.0,
        100,
        "odd",
        "persistent",
    )


def test_spice_export_writes_a_netlist_of_a_trained_drn_with_its_outputs(tmp_path, capsys):
    """``eqprop spice export RUN --sample N -o FILE``: the netlist of the run's best network driven by test image N,
    its header holding eqprop's steady-state outputs for that image; a sample out of range and a run that is not a
    DRN are errors (exit 2) that write nothing."""
    from eqprop.cli import main
    from eqprop.models.resistive import CoordinateDescentSolver
    from eqprop.training.trainer import load_run

    run = tmp_path / "run"
    common = ["epochs=1", "limit_train=64", "limit_test=20", "progress=false", "tensorboard=false"]
    assert main(["train", "model=drn", *common, f"out_dir={run}"]) == 0  # 256 -> 100 -> 10
    out = tmp_path / "net.cir"
    assert main(["spice", "export", str(run), "--sample", "3", "-o", str(out)]) == 0
    text = out.read_text()
    trainer, _ = load_run(run)
    x = trainer.data.normalized("test", flatten=True).tensors[0][3:4].double()
    net = trainer.network.double()
    with torch.no_grad():
        outputs = CoordinateDescentSolver()(net, net.init_state(x), 500).states[-1][0]
    header = {line.split(" = ")[0][len("* eqprop: ") :]: float(line.split(" = ")[1])
              for line in text.splitlines() if line.startswith("* eqprop: ")}  # fmt: skip
    assert list(header) == [f"out{j}" for j in range(10)]
    assert list(header.values()) == pytest.approx(outputs.tolist(), abs=1e-9)
    assert text.count("\nR1_") == int((net.g1 > 0).sum()) and ".op" in text and "D1_0 0 h1_0" in text
    assert "D1_60 h1_60 0" in text  # the second half of the hidden layer is inhibitory
    capsys.readouterr()
    bad = tmp_path / "bad.cir"
    assert main(["spice", "export", str(run), "--sample", "20", "-o", str(bad)]) == 2
    assert "--sample 20 is out of range: the test set has 20 images (0..19)" in capsys.readouterr().err
    other = tmp_path / "mlp"
    assert main(["train", "model=mlp", "hidden=[8]", "image_size=8", *common, f"out_dir={other}"]) == 0
    assert main(["spice", "export", str(other), "-o", str(bad)]) == 2
    assert "deep resistive network (model=drn)" in capsys.readouterr().err and not bad.exists()


# The universal-DRN paper's code, its Fashion-MNIST results (test / train error), typed here: the data gain is 5
# instead of MNIST's 8, everything else as the MNIST configs
FASHION = {
    ("1h", "ep"): (10.38, 6.14), ("1h", "tbp"): (10.31, 5.91), ("relu_1h", "bp"): (10.20, 5.13),
    ("2h", "ep"): (10.29, 6.20), ("2h", "tbp"): (9.88, 4.88), ("relu_2h", "bp"): (9.42, 2.78),
    ("3h", "ep"): (11.23, 8.19), ("3h", "tbp"): (9.79, 4.58), ("relu_3h", "bp"): (9.55, 1.82),
}  # fmt: skip


@pytest.mark.parametrize("name, rule", sorted(FASHION))
def test_universal_drn_fashion_configs_are_the_mnist_ones_at_data_gain_5(name, rule):
    """Each Fashion-MNIST config equals its MNIST twin except the data set (28x28, no normalisation, random flips) and,
    for the DRNs, the input gain 5 x model gain; its header quotes the paper's numbers."""
    path = ROOT / "universal_drn" / f"fashion_{name}_{rule}.yaml"
    cfg = load_config(path)
    twin = load_config(ROOT / "universal_drn" / f"mnist_{name}_{rule}.yaml").flat()
    flat = cfg.flat()
    assert (cfg.dataset, cfg.normalization) == ("fashion_mnist28", "none")
    changed = {k for k in flat if flat[k] != twin[k]}
    if name.startswith("relu"):
        assert changed == {"dataset"}
    else:
        assert changed == {"dataset", "input_gain"}
        assert cfg.resistive.input_gain == 5 * twin["input_gain"] / 8
    test, train = FASHION[(name, rule)]
    assert f"{test:.2f} / {train:.2f}" in path.read_text()


def test_fashion_mnist28_is_the_28x28_images_flipped_in_training(tmp_path):
    """``dataset=fashion_mnist28``: Fashion-MNIST's IDX files at 28x28, pixels in [0, 1] with normalization=none,
    random horizontal flips in training (the public code's Fashion-MNIST loader adds one with probability 1/2),
    and ``flip=false`` turns them off."""
    import gzip
    import struct

    import numpy as np

    from eqprop.training.config import parse_overrides
    from eqprop.training.trainer import load_data, training_augmentation

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, size=6, dtype=np.uint8)
    for split in ("train", "t10k"):
        for kind, arr in (("images-idx3", imgs), ("labels-idx1", labs)):
            header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
            with gzip.open(tmp_path / f"{split}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + arr.tobytes())
    data = load_data(parse_overrides(["dataset=fashion_mnist28", "normalization=none", f"data_dir={tmp_path}"]))
    x = data.normalized("train", flatten=True).tensors[0]
    assert x.shape == (6, 784) and data.flip
    assert torch.allclose(x[2], torch.tensor(imgs[2].reshape(-1) / 255.0, dtype=x.dtype))
    cfg = parse_overrides(["dataset=fashion_mnist28", "normalization=none", f"data_dir={tmp_path}"])
    assert training_augmentation(cfg, data).flip
    assert not training_augmentation(parse_overrides(["flip=false"], cfg), data).flip


def test_drn_convergence_reports_each_phase_closing_on_its_steady_state(tmp_path):
    """benchmarks/drn_convergence.py on a trained DRN: per phase (free from zeros, nudged at +-beta), the largest
    voltage difference from 200 iterations falls as T grows and is 0 at T = 200 itself."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    run = tmp_path / "run"
    overrides = ["model=drn", "hidden=[12,10]", "beta=0.1", "epochs=1", "schedule=forward", "nudged_schedule=backward"]
    overrides += QUICK
    Trainer(load_config(None, [*overrides, f"out_dir={run}"])).fit()
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "drn_convergence.py"
    out = subprocess.run(
        [sys.executable, str(script), str(run), "--images", "64", "--iterations", "1", "3", "200"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| free") or line.startswith("| nudged")]
    assert [r.split("|")[1].split(",")[0].strip() for r in rows] == ["free", "nudged at +0.1", "nudged at -0.1"]
    for row in rows:
        one, three, steady = (float(v) for v in re.findall(r"\| ([0-9.e+-]+) (?=\|)", row))
        assert one > three >= steady == 0.0, row
    assert "(forward)" in rows[0] and "(backward)" in rows[1]
