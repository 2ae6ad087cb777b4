"""Holomorphic EP through the interface: configs, the CLI's run directory, resume, and config errors."""

import pytest
import torch

from eqprop import hopfield_mlp, make_optimizer
from eqprop.cli import main
from eqprop.training.config import ConfigError, parse_overrides
from eqprop.training.results import read_run
from eqprop.training.trainer import Interrupted, Trainer
from helpers import sigterm_at

HEP_TINY = [
    "model=mlp",
    "hidden=[16]",
    "gains=[1.5,1.0]",
    "activation=holo_hard_sigmoid",
    "readout=true",
    "algorithm=HEP",
    "points=3",
    "beta=1.0",
    "cost=cross_entropy",
    "free_iterations=8",
    "nudged_iterations=4",
    "lrs=[0.2,0.05]",
    "limit_train=128",
    "limit_test=64",
    "batch_size=32",
    "progress=false",
]


def test_cli_trains_hep_and_an_interrupted_run_resumes_exactly(tmp_path):
    assert main(["train", *HEP_TINY, "epochs=2", f"out_dir={tmp_path / 'a'}"]) == 0
    run = read_run(tmp_path / "a")
    assert [r["epoch"] for r in run.metrics] == [1, 2] and run.config["points"] == 3

    cfg = parse_overrides([*HEP_TINY, "epochs=2", f"out_dir={tmp_path / 'b'}"])
    with pytest.raises(Interrupted):
        Trainer(cfg, log=lambda s: None, callbacks=[sigterm_at(2, 1)]).fit()
    resumed = Trainer.resume(tmp_path / "b", log=lambda s: None)
    resumed.fit()
    straight = torch.load(tmp_path / "a" / "checkpoint_last.pt", weights_only=False)["network"]
    for key, value in straight.items():
        assert torch.equal(value, resumed.network.state_dict()[key]), key


def test_config_errors_name_what_to_change(tmp_path):
    with pytest.raises(ConfigError, match="hard_sigmoid.*holo_hard_sigmoid"):
        Trainer(parse_overrides([*HEP_TINY, "activation=hard_sigmoid", "out_dir=none"]), log=lambda s: None)
    with pytest.raises(ConfigError, match="points"):
        parse_overrides([*HEP_TINY, "points=1"])
    with pytest.raises(ConfigError, match="pooling"):
        parse_overrides(["pooling=average"])
    with pytest.raises(ConfigError, match="paddings"):
        parse_overrides(["channels=[8,8]", "paddings=[1]"])
    with pytest.raises(ConfigError, match="periods"):
        parse_overrides([*HEP_TINY, "periods=-1"])


def test_the_online_variant_trains_through_the_cli(tmp_path):
    """periods=P reaches the rule (its repr says so) and a short online run learns on digits."""
    out = tmp_path / "online"
    cfg = parse_overrides([*HEP_TINY, "periods=2", "epochs=3", f"out_dir={out}"])
    trainer = Trainer(cfg, log=lambda s: None)
    assert trainer.algorithm.periods == 2 and "online over 2 periods" in repr(trainer.algorithm)
    history = trainer.fit()
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]


def test_decoupled_weight_decay_shrinks_before_the_momentum_step():
    """The HEP code's SGD: v <- mu v + g; theta <- (1 - lr wd) theta - lr v (weight decay outside the momentum)."""
    torch.manual_seed(0)
    net = hopfield_mlp([4, 3, 2], gains=1.0)
    theta = [p.detach().clone() for p in net.parameters()]
    grads = [torch.randn_like(p) for p in net.parameters()]
    opt = make_optimizer(net, [0.1, 0.2], momentum=0.9, weight_decay=0.05, decoupled=True)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for _ in range(2):
        for p, g in zip(net.parameters(), grads):
            p.grad = g.clone()
        opt.step()
    for p, t, g in zip(net.parameters(), theta, grads):
        lr = lrs[id(p)]
        once = (1 - lr * 0.05) * t - lr * g
        twice = (1 - lr * 0.05) * once - lr * (0.9 * g + g)
        assert torch.allclose(p.detach(), twice, atol=1e-6)


def test_hep_normalization_covers_the_papers_data_sets_only():
    assert parse_overrides(["dataset=cifar100", "normalization=hep"]).normalization == "hep"
    with pytest.raises(ConfigError, match="HEP code has no statistics for digits"):
        parse_overrides(["dataset=digits", "normalization=hep"])


def test_the_fallback_reaches_the_rule_and_counts_its_samples_per_epoch(tmp_path):
    """fallback_tol reaches the rule; each epoch's row sums the samples that fell back, checked against a count
    made here from every step's residuals (with 4 nudged iterations almost no complex phase settles within 1e-12,
    so nearly all 128 samples fall back each epoch; exactly how many depends on the platform's rounding)."""
    cfg = parse_overrides([*HEP_TINY, "fallback_tol=1e-12", "epochs=2", f"out_dir={tmp_path / 'a'}"])
    steps: dict[int, list[tuple[int, torch.Tensor]]] = {1: [], 2: []}

    def record(trainer, epoch, batch):
        algorithm = trainer.algorithm
        steps[epoch].append((algorithm.last_fallbacks, algorithm.last_residual.detach().clone()))

    trainer = Trainer(cfg, log=lambda s: None, callbacks=[record])
    assert trainer.algorithm.fallback_tol == 1e-12 and "fallback_tol=1e-12" in repr(trainer.algorithm)
    history = trainer.fit()
    assert [len(steps[e]) for e in (1, 2)] == [4, 4]  # 128 samples in batches of 32
    for epoch, row in zip((1, 2), history, strict=True):
        residuals = torch.cat([r for _, r in steps[epoch]])
        assert residuals.shape == (128,) and bool(torch.isfinite(residuals).any())
        independent = int((~(residuals <= 1e-12)).sum())  # nan/inf residuals fall back too
        assert row["hep_fallbacks"] == sum(n for n, _ in steps[epoch]) == independent
        assert independent >= 120
    assert [r["hep_fallbacks"] for r in read_run(tmp_path / "a").metrics] == [row["hep_fallbacks"] for row in history]
    loose = Trainer(parse_overrides([*HEP_TINY, "fallback_tol=1e9", "epochs=1", "out_dir=none"]), log=lambda s: None)
    assert loose.fit()[0]["hep_fallbacks"] == 0
    plain = Trainer(parse_overrides([*HEP_TINY, "epochs=1", "out_dir=none"]), log=lambda s: None)
    assert "hep_fallbacks" not in plain.fit()[0]
    with pytest.raises(ConfigError, match="fallback_tol"):
        parse_overrides([*HEP_TINY, "fallback_tol=0"])
