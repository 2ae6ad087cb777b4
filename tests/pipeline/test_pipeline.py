"""The training pipeline end to end on digits with a tiny budget: configs, runs, resume, eval, plot, table, study."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from eqprop import ConvPool, get_algorithm
from eqprop.cli import main
from eqprop.errors import RunError
from eqprop.training.config import ConfigError, TrainConfig, load_config, parse_overrides
from eqprop.training.data import dataset_spec
from eqprop.training.optim import make_optimizer
from eqprop.training.results import read_run, results_table
from eqprop.training.trainer import DivergenceError, Interrupted, Trainer, build_algorithm, build_network, topk_errors
from helpers import ROOT, sigterm_at

TINY = [
    "free_iterations=6",
    "nudged_iterations=3",
    "channels=[8,16,16]",
    "limit_train=256",
    "limit_test=128",
    "progress=false",
    "batch_size=64",
]


TINY_MLP = ["model=mlp", "image_size=8", "hidden=[16]", "gains=[0.5,0.5]", "free_iterations=4", "nudged_iterations=2"]


def tiny(tmp_path, *extra):
    return parse_overrides([*TINY, f"out_dir={tmp_path}", *extra])


# ----------------------------------------------------------------------------------------------- configs


def test_overrides_are_typed_and_validated():
    cfg = parse_overrides(
        [
            "algorithm=N-EP",
            "epochs=2",
            "lrs=[0.1,0.2,0.3,0.4]",
            "out_dir=none",
            "beta=0.3",
            "dataset=CIFAR-10",
            "flip=true",
        ]
    )
    assert (cfg.algorithm, cfg.epochs, cfg.lrs, cfg.out_dir, cfg.beta) == ("NEP", 2, [0.1, 0.2, 0.3, 0.4], None, 0.3)
    assert cfg.dataset == "cifar10" and cfg.flip is True
    with pytest.raises(ConfigError, match="unknown config key 'epoch' .did you mean 'epochs'.*lists every key"):
        parse_overrides(["epoch=2"])
    with pytest.raises(ConfigError, match="'beta'.*expected float"):
        parse_overrides(["beta=big"])
    with pytest.raises(ConfigError, match="'schedule'.*'sideways'.*asynchronous"):
        parse_overrides(["schedule=sideways"])
    with pytest.raises(ConfigError, match="'epochs' must be >= 1"):
        parse_overrides(["epochs=0"])
    with pytest.raises(ConfigError, match="'lrs\\[1\\]'.*expected float"):
        parse_overrides(["lrs=[0.1,fast]"])
    with pytest.raises(ConfigError, match="'device'.*cuda:N"):
        parse_overrides(["device=gpu0"])
    with pytest.raises(ConfigError, match="'nudged_precision'.*'half'.*deviation"):
        parse_overrides(["nudged_precision=half"])
    with pytest.raises(ConfigError, match="'tol' must be > 0 or null"):
        parse_overrides(["tol=0"])
    alg = build_algorithm(
        parse_overrides(["dtype=bfloat16", "nudged_precision=deviation", "tol=1e-4", "refine_iterations=5"])
    )
    ph = alg.phases
    assert (ph.settings.dtype, ph.nudged_precision, ph.settings.tol, ph.refine_iterations) == (
        torch.bfloat16,
        "deviation",
        1e-4,
        5,
    )
    net = build_network(parse_overrides(["fused_kernels=true", "channels=[4,8]", "gains=[0.5]"]), (1, 8, 8), 10)
    assert all(m.fused for m in net.modules() if isinstance(m, ConvPool))


def test_the_rbp_adjoint_reaches_the_rule_and_trains(tmp_path):
    """``rbp_adjoint`` picks RBP's adjoint (K Almeida-Pineda steps, K = nudged_iterations, as in the public code);
    a run with it and the persistent start trains and writes finite rows; a wrong value lists the valid ones."""
    alg = build_algorithm(parse_overrides(["algorithm=RBP", "rbp_adjoint=Almeida-Pineda"]))
    assert alg.adjoint == "almeida-pineda" and "adjoint=almeida-pineda" in repr(alg)
    assert build_algorithm(parse_overrides(["algorithm=RBP"])).adjoint == "cg"
    with pytest.raises(ConfigError, match="'rbp_adjoint'.*'neumann'.*\\['cg', 'almeida-pineda'\\]"):
        parse_overrides(["rbp_adjoint=neumann"])
    with pytest.raises(ValueError, match="valid adjoints are \\['cg', 'almeida-pineda'\\]"):
        get_algorithm("RBP", adjoint="neumann")
    cfg = tiny(tmp_path, "algorithm=RBP", "rbp_adjoint=almeida-pineda", "init=persistent", "epochs=2")
    history = Trainer(cfg, log=lambda s: None).fit()
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)
    assert history[1]["train_loss"] < history[0]["train_loss"]


def test_yaml_configs_validate_with_base_files(tmp_path):
    (tmp_path / "base.yaml").write_text("algorithm: NEP\nbeta: 0.2\nstudy:\n  seeds: [0, 1]\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nbeta: 0.3\nepochs: 4\n")
    cfg = load_config(tmp_path / "child.yaml", ["epochs=5"])
    assert (cfg.algorithm, cfg.beta, cfg.epochs) == ("NEP", 0.3, 5)
    (tmp_path / "bad.yaml").write_text("algorithm: NEP\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="bad.yaml.*unknown config key 'learning_rate'.*valid keys"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "badtype.yaml").write_text("epochs: many\n")
    with pytest.raises(ConfigError, match="'epochs'.*expected int.*'many'"):
        load_config(tmp_path / "badtype.yaml")
    (tmp_path / "badstudy.yaml").write_text("study:\n  seed: [1]\n")
    with pytest.raises(ConfigError, match="study block takes keys"):
        load_config(tmp_path / "badstudy.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


SHIPPED = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not p.name.startswith("space_"))
SPACES = sorted((ROOT / "configs").rglob("space_*.yaml"))  # eqprop tune's search spaces, each beside its tune_ config


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_shipped_search_spaces_read_against_their_tune_configs(path):
    from eqprop.training.tune import read_space

    tune = path.with_name(path.name.replace("space_", "tune_", 1))
    space = read_space(path, tune, [])
    assert space and {d.key for d in space} >= {"beta", "lrs", "crop_padding"}


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT / "configs")) for p in SHIPPED])
def test_shipped_configs_validate_and_build_table5_networks(path):
    cfg = load_config(path)
    spec = dataset_spec(cfg.dataset)
    size = spec.image_size or cfg.image_size
    net = build_network(cfg, (spec.in_channels, size, size), spec.num_classes)
    make_optimizer(net, cfg.lrs, cfg.momentum, cfg.weight_decay, cfg.nesterov)  # one learning rate per layer
    if cfg.model.kind == "hssm":  # images read row by row: one readout per row
        out = net(torch.zeros(2, spec.in_channels, size, size))
        assert out.shape == (size, 2, spec.num_classes)
    elif cfg.model.kind == "vgg":  # scalable-EP paper, Table 4: the name counts the weight layers
        name = path.stem.split("_")[0]
        if name.startswith("vgg"):
            assert net.num_layers - 1 == int(name[3:])
        assert net.layers[-1].shape == (spec.num_classes,)
    elif path.parent.name == "holomorphic":  # the HEP code's logged runs: softmax pooling, readout of 512x1x1
        assert net.readout is not None and net.num_classes == spec.num_classes
        assert net.non_holomorphic() == [] and cfg.algorithm == "HEP" and cfg.cost == "cross_entropy"
        if cfg.dataset != "digits":
            assert [tuple(layer.shape) for layer in net.layers] == [
                (3, 32, 32),
                (128, 16, 16),
                (256, 8, 8),
                (512, 4, 4),
                (512, 1, 1),
            ]
            assert (cfg.beta, cfg.free_iterations, cfg.nudged_iterations, cfg.epochs, cfg.batch_size) == (
                1.0,
                250,
                60,
                90,
                128,
            )
            assert cfg.lrs == [0.25, 0.15, 0.1, 0.08, 0.05] and cfg.decoupled_weight_decay
            assert cfg.weight_decay == (2e-3 if cfg.dataset == "cifar10" else 1e-2)
    elif cfg.model.kind == "pcn":  # the Table 7 / Table 8 structure is checked in test_pcn_configs.py
        out = net.forward_pass(torch.zeros(1, spec.in_channels, size, size))[-1]
        assert out.shape == (1, spec.num_classes)
    elif path.parent.parent.name == "resistive":  # the rows themselves: tests/pipeline/test_resistive_pipeline.py
        inputs = net.layers[0].shape if cfg.model.kind == "mlp" else (net.sizes[0],)  # DHN: the dense Hopfield net
        assert cfg.dataset in ("mnist28", "fashion_mnist28") and tuple(inputs) == (784,) and net.num_classes == 10
    elif path.parent.name == "fitzhugh_nagumo":  # FHN networks: 1x8x8 digits or 28x28 MNIST -> hidden -> 10
        assert net.sizes == [spec.in_channels * size * size, *cfg.hidden, 10] and cfg.solver == "fhn-exact"
    elif path.name != "default.yaml":  # Table 5: n_in x 32 x 32 -> 128x16x16 -> 256x8x8 -> 512x4x4 -> 512x2x2 -> n_out
        assert [tuple(layer.shape) for layer in net.layers] == [
            (spec.in_channels, 32, 32),
            (128, 16, 16),
            (256, 8, 8),
            (512, 4, 4),
            (512, 2, 2),
            (spec.num_classes,),
        ]
        assert (cfg.momentum, cfg.batch_size, cfg.eta_min, cfg.schedule in ("asynchronous", "synchronous")) == (
            0.9,
            128,
            2e-6,
            True,
        )


def test_scalable_ep_configs_carry_tables_5_and_6():
    from eqprop.training.trainer import default_signal_layers

    rows = {
        "vgg7_le": (0.25, 250, 50, 0.65, 128, "le"),
        "vgg7_kd": (0.15, 250, 60, 0.65, 64, "kd"),
        "vgg7_kdw": (0.5, 100, 50, 0.15, 128, "kdw"),
        "vgg11_le": (1.0, 400, 40, 0.85, 128, "le"),
        "vgg13_le": (1.0, 140, 50, 0.85, 128, "le"),
        "vgg10_kd": (0.5, 130, 50, 0.85, 128, "kd"),
        "vgg12_kd": (1.0, 100, 15, 0.65, 256, "kd"),
    }
    for name, want in rows.items():
        cfg = load_config(ROOT / f"configs/scalable_ep/{name}.yaml")
        assert (
            cfg.beta,
            cfg.free_iterations,
            cfg.nudged_iterations,
            cfg.kappa,
            cfg.batch_size,
            cfg.signals.kind,
        ) == want
        assert (cfg.tau, cfg.momentum, cfg.weight_decay, cfg.epochs, cfg.algorithm) == (4.0, 0.9, 3e-4, 250, "CEP")
    vgg13 = load_config(ROOT / "configs/scalable_ep/vgg13_le.yaml")
    assert vgg13.lrs == [0.03] * 2 + [0.05] * 8 + [0.025] * 3
    net = build_network(vgg13, (3, 32, 32), 100)
    assert default_signal_layers(vgg13, net) == [4, 6, 8, 10]  # last layer of blocks 2..5 (LE)
    vgg12 = load_config(ROOT / "configs/scalable_ep/vgg12_kd.yaml")
    assert default_signal_layers(vgg12, build_network(vgg12, (3, 32, 32), 100)) == [2, 4, 6, 8, 10]  # every block
    assert (vgg12.activation, vgg12.kappa_schedule, vgg12.gains) == ("relu", "linear", [0.5])


def test_shipped_configs_carry_table5_values():
    t1, t6 = (
        load_config(ROOT / "configs/comparative_study/table1.yaml"),
        load_config(ROOT / "configs/comparative_study/table6_svhn.yaml"),
    )
    assert (t1.beta, t1.free_iterations, t1.nudged_iterations, t1.gains, t1.weight_decay) == (
        0.25,
        60,
        15,
        [0.5] * 5,
        3e-4,
    )
    assert t1.lrs == [0.0625, 0.0375, 0.025, 0.02, 0.0125] and t6.gains == [0.7] * 5 and t6.dataset == "svhn"
    c10 = load_config(ROOT / "configs/comparative_study/table2/cifar10_300.yaml")
    assert (c10.beta, c10.nudged_iterations, c10.gains, c10.lrs, c10.weight_decay, c10.epochs) == (
        0.1,
        20,
        [0.4, 0.7, 0.6, 0.3, 0.4],
        [0.03] * 5,
        2.5e-4,
        300,
    )
    c100 = load_config(ROOT / "configs/comparative_study/table2/cifar100_100.yaml")
    assert (c100.gains, c100.lrs, c100.weight_decay) == (
        [0.5, 0.4, 0.5, 0.8, 0.5],
        [0.03, 0.04, 0.04, 0.04, 0.025],
        3.5e-4,
    )
    sync, fast = (
        load_config(ROOT / "configs/comparative_study/table3/sync32_250.yaml"),
        load_config(ROOT / "configs/comparative_study/table3/async16_60.yaml"),
    )
    assert (sync.schedule, sync.dtype, sync.free_iterations, sync.nudged_iterations) == (
        "synchronous",
        "float32",
        250,
        30,
    )
    assert (fast.schedule, fast.dtype, fast.free_iterations) == ("asynchronous", "bfloat16", 60)


def _flat_differences(a, b):
    da, db = a.to_dict(), b.to_dict()
    return {(sec, k): db[sec][k] for sec in da for k in da[sec] if da[sec][k] != db[sec][k]}


CONVENTIONS = {
    ("rule", "cost"): "half_squared_error",
    ("relax", "first"): "odd",
    ("relax", "init"): "persistent",
    ("model", "bias_init"): "uniform",
    ("rule", "nudged_output"): "iterate",
    ("rbp", "rbp_adjoint"): "almeida-pineda",  # acts only with algorithm=RBP (training/sgd.py's RecurrentBackprop)
}
# the code's datasets.py: CIFAR-10 RandomCrop(32, padding=4, padding_mode="edge") after the flip; MNIST padded to
# 32x32 by two black pixels, then RandomCrop(32, padding=2, padding_mode="edge")
CIFAR_CROPS = {("data", "crop_padding"): 4, ("data", "crop_padding_mode"): "edge"}
MNIST_CROPS = {("data", "crop_padding"): 2, ("data", "crop_padding_mode"): "edge"}


@pytest.mark.parametrize(
    "name, base, extra",
    [
        ("cifar10_100", "table3/async16_60", CIFAR_CROPS),
        ("cifar10_100_precise", "table3/async16_60_precise", CIFAR_CROPS),
        ("cifar10_100_fp32", "table3/async16_60", {**CIFAR_CROPS, ("relax", "dtype"): "float32"}),
        (
            "cifar10_sync32_250",
            "table3/sync32_250",
            {**CIFAR_CROPS, ("relax", "channels_last"): True, ("relax", "fused_kernels"): True},
        ),
        (
            "mnist_100",
            "table2/mnist_100",
            {
                **MNIST_CROPS,
                ("relax", "cuda_graphs"): True,
                ("relax", "channels_last"): True,
                ("relax", "fused_kernels"): True,
            },
        ),
    ],
)
def test_public_code_configs_are_the_table_configs_plus_the_code_conventions(name, base, extra):
    """Each public_code config differs from the Table 2/3 config of the same run in the five conventions, the
    code's RBP adjoint, the code's random crops (and the named speed or precision keys) only: beta, rates, gains,
    T, K, epochs stay the tables' values."""
    ours = load_config(ROOT / f"configs/comparative_study/public_code/{name}.yaml")
    table = load_config(ROOT / f"configs/comparative_study/{base}.yaml")
    assert _flat_differences(table, ours) == {**CONVENTIONS, **extra}
    assert ours.bias_scale == 0.5


# ----------------------------------------------------------------------------------------------- runs


def test_topk_errors():
    out = torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    assert topk_errors(out, torch.tensor([0, 0])) == {1: 1, 5: 1}
    assert topk_errors(out, torch.tensor([1, 1])) == {1: 2, 5: 0}
    assert topk_errors(out[:, :3], torch.tensor([2, 0])) == {1: 2, 5: 0}  # k capped at the number of classes


def test_cli_train_writes_a_complete_run_directory(tmp_path, capsys, monkeypatch):
    import eqprop.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "TENSORBOARD_POINTS", 2)  # 4 batches per epoch: windows of 2 batches
    out = tmp_path / "run"
    assert main(["train", *TINY, "epochs=2", f"out_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "epoch   2" in printed and "test error" in printed and "top-5" in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in (
        "train_loss",
        "train_error",
        "train_top5_error",
        "test_error",
        "test_top5_error",
        "time",
        "free_iterations",
    ):
        assert all(key in r for r in rows)
    assert all(0 <= r["test_top5_error"] <= r["test_error"] <= 1 and r["free_iterations"] == 6 for r in rows)
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss")
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    assert json.loads((out / "config.json").read_text())["model"]["channels"] == [8, 16, 16]
    last = torch.load(out / "checkpoint_last.pt", weights_only=False)
    best = torch.load(out / "checkpoint_best.pt", weights_only=False)
    assert last["epoch"] == 2 and "interactions.conv1.weight" in last["network"]
    assert best["best_error"] == min(r["test_error"] for r in rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("epoch/test_error")] == [1, 2]
    assert [e.value for e in events.Scalars("epoch/test_error")] == pytest.approx([r["test_error"] for r in rows])
    batch = events.Scalars("batch/train_loss")  # the mean of each window: their mean is the epoch's loss
    assert [e.step for e in batch] == [1, 3, 5, 7]
    means = [(batch[0].value + batch[1].value) / 2, (batch[2].value + batch[3].value) / 2]
    assert means == pytest.approx([r["train_loss"] for r in rows], rel=1e-5)
    # the finished run's settings beside its results (TensorBoard's HPARAMS tab)
    from tensorboard.plugins.hparams import plugin_data_pb2

    assert events.Scalars("hparam/final_test_error")[0].value == pytest.approx(rows[-1]["test_error"])
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["channels"].string_value == "[8, 16, 16]" and start.hparams["ranks"].number_value == 1


def test_cli_train_with_yaml_config(tmp_path):
    (tmp_path / "exp.yaml").write_text("algorithm: NEP\nbeta: 0.2\nepochs: 1\n")
    assert main(["train", str(tmp_path / "exp.yaml"), *TINY, f"out_dir={tmp_path / 'run'}"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["rule"]["algorithm"] == "NEP"


def test_cli_reports_bad_input(capsys, tmp_path):
    assert main(["train", "algorithm=XEP", "epochs=1"]) == 2
    assert "valid" in capsys.readouterr().err
    assert main(["train", "dataset=cifar10", *TINY, "--data-dir", str(tmp_path)]) == 2
    assert "CIFAR-10" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def _final_state(trainer):
    return {k: v.clone() for k, v in trainer.network.state_dict().items()}


def test_interrupted_run_resumes_exactly(tmp_path):
    """SIGTERM in the middle of epoch 2 leaves a checkpoint; resuming gives the same weights and metrics
    as the run that was never interrupted (optimiser, scheduler, shuffling and augmentation RNG restored)."""
    extra = ["epochs=3", "crop_padding=1", "crop_padding_mode=edge", "flip=true", "init=uniform", "eta_min_ratio=0.01"]
    straight = Trainer(tiny(tmp_path / "a", *extra), log=lambda s: None)
    straight.fit()

    stopped = Trainer(tiny(tmp_path / "b", *extra), log=lambda s: None, callbacks=[sigterm_at(2, 1)])
    with pytest.raises(Interrupted, match="SIGTERM.*--resume"):
        stopped.fit()
    ckpt = torch.load(tmp_path / "b" / "checkpoint_last.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["partial"]["batch"] == 2
    with pytest.raises(ConfigError, match="cannot change \\['beta'\\] when resuming"):
        Trainer.resume(tmp_path / "b", ["beta=0.5"])
    resumed = Trainer.resume(tmp_path / "b", log=lambda s: None)
    resumed.fit()
    for key, value in _final_state(straight).items():
        assert torch.equal(value, resumed.network.state_dict()[key]), key
    drop = ("time", "train_time")
    assert [{k: v for k, v in r.items() if k not in drop} for r in straight.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in resumed.history
    ]
    assert [r["epoch"] for r in read_run(tmp_path / "b").metrics] == [1, 2, 3]
    # one provenance line per start: the fresh start at epoch 0, the resume after epoch 1
    starts = [json.loads(line) for line in (tmp_path / "b" / "provenance.jsonl").read_text().splitlines()]
    assert [p["epoch"] for p in starts] == [0, 1] and {p["device"] for p in starts} == {"cpu"}
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # running from the checkout: the commit is recorded (marked +dirty if edited)
        assert starts[0]["commit"].split("+")[0] == head.stdout.strip()
    assert starts[0]["torch"] == torch.__version__
    with pytest.raises(RunError, match="is finished.*--extend"):  # now it has trained all its epochs
        Trainer.resume(tmp_path / "b")


PUBLIC_CODE = ["cost=half_squared_error", "first=odd", "init=persistent", "bias_init=uniform", "nudged_output=iterate"]


def test_a_persistent_start_is_checkpointed_and_resumes_exactly(tmp_path):
    """The public code's conventions: the carried free-phase start is in the checkpoint (one batch of states),
    so a run stopped inside epoch 2 resumes to the same weights; dropping it (start from zeros) does not."""
    extra = ["epochs=2", "limit_train=192", *PUBLIC_CODE]
    straight = Trainer(tiny(tmp_path / "a", *extra), log=lambda s: None)
    straight.fit()

    stopped = Trainer(tiny(tmp_path / "b", *extra), log=lambda s: None, callbacks=[sigterm_at(2, 1)])
    with pytest.raises(Interrupted):
        stopped.fit()
    ckpt = torch.load(tmp_path / "b" / "checkpoint_last.pt", weights_only=False)
    carried = ckpt["algorithm"]["batch"]
    assert [tuple(t.shape) for t in carried] == [(64, 8, 8, 8), (64, 16, 4, 4), (64, 16, 2, 2), (64, 10)]
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    resumed = Trainer.resume(tmp_path / "b", log=lambda s: None)
    resumed.fit()
    for key, value in _final_state(straight).items():
        assert torch.equal(value, resumed.network.state_dict()[key]), key
    forgetful = Trainer.resume(tmp_path / "c", log=lambda s: None)
    forgetful.algorithm.phases.carried.clear()
    forgetful.fit()
    assert any(not torch.equal(v, forgetful.network.state_dict()[k]) for k, v in _final_state(straight).items())
    biases = [v for k, v in straight.network.state_dict().items() if k.endswith("bias")]
    assert all(float(b.abs().min()) > 0 for b in biases)
    extended = Trainer.extend(tmp_path / "a", ["epochs=3"], log=lambda s: None)  # --extend keeps the carried state
    carried = straight.algorithm.phases.carried
    assert len(carried) == 4 and all(torch.equal(a, b) for a, b in zip(carried, extended.algorithm.phases.carried))


@pytest.mark.parametrize("name", ["PC-REP", "REP", "RCpL"])
def test_the_random_schemes_signs_continue_after_a_checkpoint(name):
    """PC-REP, REP and RCpL draw a nudging sign per step: the generator state is part of the rule's state_dict, so
    a resumed run draws the signs the uninterrupted one would have drawn (a fresh rule repeats the first ones)."""
    rule = get_algorithm(name, beta=0.1, seed=4)
    for _ in range(5):
        rule.next_betas()
    saved = rule.state_dict()
    ahead = [rule.next_betas() for _ in range(20)]
    again = get_algorithm(name, beta=0.1, seed=4)
    again.load_state_dict(saved)
    assert [again.next_betas() for _ in range(20)] == ahead
    fresh = get_algorithm(name, beta=0.1, seed=4)
    assert [fresh.next_betas() for _ in range(20)] != ahead
    assert get_algorithm("CEP").state_dict() == {}


@pytest.mark.parametrize("name", ["PC-REP", "REP", "RCpL"])
def test_the_random_schemes_signs_without_a_seed_follow_torch_manual_seed(name):
    """Without ``seed`` the signs come from a seed drawn from torch's global generator: ``torch.manual_seed`` fixes
    them as it fixes the rest of a run (they used to come from the operating system's entropy, so a test or a
    notebook cell that set torch's seed drew different signs each time)."""

    def signs(seed: int) -> list[tuple[float, float]]:
        torch.manual_seed(seed)
        rule = get_algorithm(name, beta=0.1)
        return [rule.next_betas() for _ in range(40)]

    assert signs(0) == signs(0)
    assert signs(0) != signs(1)
    assert {b for _, b in signs(0)} == {0.1, -0.1}


@pytest.mark.slow
def test_sigterm_to_a_cli_run_leaves_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eqprop",
            "train",
            *TINY_MLP,
            "epochs=1000",  # about 0.1 s each: the signal comes long before the last
            "tensorboard=false",
            "progress=false",
            f"out_dir={out}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err and f"--resume {out}" in err
    done = torch.load(out / "checkpoint_last.pt", weights_only=False)
    assert 1 <= done["epoch"] < 1000
    resumed = Trainer.resume(out, log=lambda s: None)
    assert resumed.epoch == done["epoch"] and resumed.scheduler.last_epoch == done["epoch"]
    for key, value in done["network"].items():
        assert torch.equal(value, resumed.network.state_dict()[key]), key


def _tiny_mlp(out_dir, **settings):
    """A two-layer Hopfield MLP on 8x8 digits with short phases: a run of a few epochs in well under a second."""
    base = dict(model="mlp", image_size=8, hidden=[16], gains=[0.5, 0.5], free_iterations=4, nudged_iterations=2)
    return TrainConfig(**base, out_dir=str(out_dir), progress=False, **settings)


def test_divergence_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, capsys):
    cfg = _tiny_mlp(tmp_path, lrs=[1e6, 1e6], epochs=3)
    with pytest.raises(DivergenceError, match="diverged in epoch 1.*last good checkpoint"):
        Trainer(cfg, log=lambda s: None).fit()
    ckpt = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["network"].values())
    assert (
        main(
            [
                "train",
                "model=mlp",
                "image_size=8",
                "hidden=[16]",
                "gains=[0.5,0.5]",
                "lrs=[1e6,1e6]",
                "free_iterations=4",
                "nudged_iterations=2",
                "epochs=2",
                "progress=false",
                f"out_dir={tmp_path / 'cli'}",
            ]
        )
        == 3
    )
    assert "diverged" in capsys.readouterr().err


@pytest.mark.parametrize("poison", [math.nan, math.inf, -math.inf])
def test_a_non_finite_weight_stops_the_run_at_the_batch_that_made_it(tmp_path, poison):
    """One gradient entry made non-finite in epoch 2's third batch: the run stops there ("non-finite weights"),
    and the checkpoint of epoch 1 is the one kept."""
    from eqprop.training.callbacks import Callback

    class Poison(Callback):
        def after_step(self, trainer, epoch, batch, result):
            if (epoch, batch) == (2, 2):
                next(trainer.network.parameters()).grad.view(-1)[3] = poison

    cfg = _tiny_mlp(tmp_path, lrs=[0.05, 0.05], epochs=3, limit_train=128, limit_test=32, batch_size=32)
    trainer = Trainer(cfg, log=lambda s: None, callbacks=[Poison()])
    with pytest.raises(DivergenceError, match="diverged in epoch 2: non-finite weights"):
        trainer.fit()
    ckpt = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["network"].values())


def test_all_finite_finds_every_non_finite_entry_and_no_false_alarm():
    from eqprop.training.callbacks import all_finite

    big = torch.full((4,), 3e38)  # finite entries whose float32 sum overflows: not a divergence
    half = torch.full((100,), 6e4, dtype=torch.float16)  # float16 entries whose float16 sum would overflow
    assert all_finite([big, half, torch.zeros(0), torch.ones(3, dtype=torch.float64)])
    for bad in (math.nan, math.inf, -math.inf):
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            t = torch.ones(1000, dtype=dtype)
            t[517] = bad
            assert not all_finite([torch.ones(2), t]), (bad, dtype)
    mixed = torch.tensor([math.inf, -math.inf, 1.0])  # +inf and -inf: a NaN sum
    assert not all_finite([mixed]) and all_finite([])


@pytest.mark.parametrize("max_loss", [1e3, None])
def test_a_finite_loss_explosion_stops_the_run_at_max_loss(tmp_path, max_loss):
    """A loss that explodes but stays finite (K = 5 PC-EP at 1/8 width went from 2.08 to 1.04e24 in 9 steps,
    docs/reproductions.md) stops the run at the first batch above ``max_loss``; ``max_loss=None`` lets it run."""
    import dataclasses

    from eqprop.training.callbacks import Callback

    class Explode(Callback):
        def on_epoch_start(self, trainer, epoch):
            if epoch == 2:
                step = trainer.algorithm.step
                trainer.algorithm.step = lambda *a: (lambda r: dataclasses.replace(r, loss=r.loss * 1e9))(step(*a))

    cfg = _tiny_mlp(
        tmp_path, lrs=[0.05, 0.05], epochs=3, limit_train=64, limit_test=32, batch_size=32, max_loss=max_loss
    )
    trainer = Trainer(cfg, log=lambda s: None, callbacks=[Explode()])
    if max_loss is None:
        history = trainer.fit()
        assert len(history) == 3 and history[0]["train_loss"] < 10 and history[2]["train_loss"] > 1e6
        return
    with pytest.raises(DivergenceError, match=r"diverged in epoch 2: batch 1's mean loss .* above max_loss=1000 "):
        trainer.fit()
    ckpt = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["partial"] is None


@pytest.mark.parametrize("value", [0, -1.0])
def test_max_loss_must_be_positive_or_null(value):
    with pytest.raises(ConfigError, match="config key 'max_loss' must be > 0 or null"):
        TrainConfig(max_loss=value)


# ----------------------------------------------------------------------------------------------- results


@pytest.mark.slow
def test_eval_plot_table_and_study(tmp_path, capsys):
    (tmp_path / "exp.yaml").write_text("epochs: 2\nstudy:\n  seeds: [0, 1]\n")
    study = tmp_path / "study"
    assert (
        main(
            [
                "study",
                str(tmp_path / "exp.yaml"),
                *TINY,
                "tensorboard=false",
                "--algorithms",
                "CEP",
                "NEP",
                "--jobs",
                "2",
                "--out",
                str(study),
            ]
        )
        == 0
    )
    runs = sorted(p.parent for p in study.glob("*/config.json"))
    assert [p.name for p in runs] == ["CEP_digits_seed0", "CEP_digits_seed1", "NEP_digits_seed0", "NEP_digits_seed1"]
    table = (study / "table.md").read_text()
    finals = {p.name: read_run(p).final for p in runs}
    cep = [100 * finals[f"CEP_digits_seed{s}"]["test_error"] for s in (0, 1)]
    mean, std = sum(cep) / 2, abs(cep[0] - cep[1]) / 2**0.5
    assert f"| CEP | {mean:.2f} ± {std:.2f} |" in table and "| NEP |" in table and "digits test" in table
    assert (study / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()

    # eval re-measures the best checkpoint's test error exactly
    best = min(read_run(runs[0]).metrics, key=lambda m: m["test_error"])
    assert main(["eval", str(runs[0])]) == 0
    assert f"test error {100 * best['test_error']:.2f}%" in capsys.readouterr().out

    png = tmp_path / "curves.png"
    assert main(["plot", *map(str, runs), "-o", str(png)]) == 0 and png.stat().st_size > 10_000
    assert main(["table", *map(str, runs), "--metric", "best"]) == 0
    assert "| NEP |" in capsys.readouterr().out
    notes = results_table(runs).splitlines()[4:]  # after the header, rule and 2 rows
    assert notes[0] == "" and notes[2] == "- digits: seeds per cell: NEP 2 (0, 1); CEP 2 (0, 1)"
    assert notes[3] == f"- CEP on digits merges {runs[0]}, {runs[1]}" and len(notes) == 5

    # a second study call resumes the finished runs instead of redoing them
    before = (runs[0] / "metrics.jsonl").read_text()
    assert (
        main(
            [
                "study",
                str(tmp_path / "exp.yaml"),
                *TINY,
                "tensorboard=false",
                "--algorithms",
                "CEP",
                "--seeds",
                "0",
                "--out",
                str(study),
            ]
        )
        == 0
    )
    assert (runs[0] / "metrics.jsonl").read_text() == before


def test_a_study_gives_each_algorithm_its_own_settings_and_tables_them_together(tmp_path, capsys, monkeypatch):
    """``study.settings``: TBP relaxes its K steps differently from the EP rules (as in the resistive papers' code),
    in the same grid: its run's command carries them, and a run made by an earlier command with its algorithm's
    own settings joins the table (the runs are trained here, in this process, as the study's processes would)."""
    from eqprop.training.study import plan_study

    exp = tmp_path / "exp.yaml"
    exp.write_text("epochs: 1\nstudy:\n  algorithms: [CEP, TBP]\n  settings:\n    TBP: {nudged_iterations: 5}\n")
    study = tmp_path / "study"
    overrides = [*TINY, "tensorboard=false"]
    plan = {r.algorithm: r for r in plan_study(exp, study, overrides=overrides)}
    assert plan["TBP"].config.nudged_iterations == 5 and plan["CEP"].config.nudged_iterations == 3
    assert "nudged_iterations=5" in plan["TBP"].overrides and "nudged_iterations=5" not in plan["CEP"].overrides
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 1)
    assert main(["study", str(exp), *overrides, "--algorithms", "TBP", "--out", str(tmp_path / "s")]) != 0
    assert "nudged_iterations=5" in calls[0]  # the run's own process gets TBP's settings
    for run in plan.values():
        Trainer(run.config, log=lambda s: None).fit()
    common = ["study", str(exp), *overrides, "--out", str(study)]
    calls.clear()
    assert main([*common, "--algorithms", "CEP"]) == 0 and calls == []  # CEP finished; TBP is an earlier run
    table = (study / "table.md").read_text()
    assert "| CEP |" in table and "| TBP |" in table
    capsys.readouterr()

    exp.write_text("study:\n  algorithms: [CEP]\n  settings:\n    RBP: {nudged_iterations: 5}\n")
    assert main([*common, "--algorithms", "CEP"]) == 2
    assert "study.settings names RBP, which the study does not run (its algorithms: CEP)" in capsys.readouterr().err
    exp.write_text("study:\n  settings: [nudged_iterations=5]\n")
    assert main(common) == 2
    assert "study.settings must map an algorithm to its settings" in capsys.readouterr().err


def test_study_variants_make_an_ablation_grid_with_a_row_per_variant(tmp_path, capsys, monkeypatch):
    """``study.variants``: every named variant of the config for every algorithm and seed (seed-major), its keys
    over the algorithm's own settings, its name in the runs' folders; the table gives each variant a row labelled
    with the keys that set it apart, and a rerun starts nothing; a bad name or value names the variant."""
    from eqprop.training.study import plan_study, study_status

    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "epochs: 1\nstudy:\n  algorithms: [CEP, TBP]\n  settings:\n    TBP: {nudged_iterations: 5}\n"
        "  variants:\n    paper: {}\n    T9: {free_iterations: 9, nudged_iterations: 4}\n"
    )
    out = tmp_path / "ablation"
    overrides = [*TINY_MLP, "limit_train=64", "limit_test=32", "batch_size=32", "tensorboard=false"]
    plan = plan_study(exp, out, seeds=[0, 1], overrides=overrides)
    assert [r.out_dir.name for r in plan][:4] == [
        "CEP_digits_paper_seed0",
        "TBP_digits_paper_seed0",
        "CEP_digits_T9_seed0",
        "TBP_digits_T9_seed0",
    ]
    assert len(plan) == 8 and {r.seed for r in plan[4:]} == {1}
    iterations = {(r.algorithm, r.variant): (r.config.free_iterations, r.config.nudged_iterations) for r in plan}
    assert iterations == {
        ("CEP", "paper"): (4, 2),
        ("TBP", "paper"): (4, 5),  # TBP's own setting
        ("CEP", "T9"): (9, 4),
        ("TBP", "T9"): (9, 4),  # the variant's keys over the algorithm's own
    }
    for run in plan:
        Trainer(run.config, log=lambda s: None).fit()
    assert {r["state"] for r in study_status(exp, out, seeds=[0, 1], overrides=overrides)} == {"finished"}
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 1)
    assert main(["study", str(exp), *overrides, "--seeds", "0", "1", "--out", str(out)]) == 0 and calls == []
    table = (out / "table.md").read_text().splitlines()
    rows = [line.split(" | ")[0] for line in table if line.startswith(("| CEP", "| TBP"))]
    assert sorted(rows) == [
        "| CEP (free_iterations=4, nudged_iterations=2)",
        "| CEP (free_iterations=9, nudged_iterations=4)",
        "| TBP (free_iterations=4, nudged_iterations=5)",
        "| TBP (free_iterations=9, nudged_iterations=4)",
    ]
    capsys.readouterr()

    common = ["study", str(exp), *overrides, "--out", str(tmp_path / "other")]
    exp.write_text("study:\n  variants:\n    a/b: {free_iterations: 9}\n")
    assert main(common) == 2
    assert "study.variants names ['a/b'] are not usable in a folder name" in capsys.readouterr().err
    exp.write_text("study:\n  variants:\n    T0: {free_iterations: 0}\n")
    assert main(common) == 2
    assert "study variant 'T0': config key 'free_iterations' must be >= 1, got 0" in capsys.readouterr().err
    exp.write_text("study:\n  variants: [free_iterations=9]\n")
    assert main(common) == 2
    assert "study.variants must map a name to its settings" in capsys.readouterr().err
