"""Oracle: SGD and the learning-rate schedules written out here by hand. What the Trainer builds from a config's
optim keys (momentum, Nesterov, coupled or decoupled weight decay, per-layer weight and bias rates) must move the
weights exactly as the hand-written update, and the rate used at every optimiser step of a run must be the
closed-form schedule of its epoch (PyTorch's "scheduler stepped before the optimiser" warning is an error here)."""

import math
import warnings

import pytest
import torch

from eqprop.training.callbacks import Callback
from eqprop.training.config import parse_overrides
from eqprop.training.trainer import Trainer

TINY = ["model=mlp", "hidden=[8]", "image_size=8", "limit_train=96", "limit_test=32", "batch_size=32", "progress=false"]


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("decoupled", [False, True])
def test_the_optimiser_a_config_builds_is_the_hand_written_sgd_step(nesterov, decoupled):
    lrs, bias_lrs, mu, wd = [0.1, 0.05], [0.02, 0.01], 0.9, 1e-2
    cfg = parse_overrides(
        [
            *TINY,
            f"lrs={lrs}",
            f"bias_lrs={bias_lrs}",
            f"momentum={mu}",
            f"weight_decay={wd}",
            f"nesterov={str(nesterov).lower()}",
            f"decoupled_weight_decay={str(decoupled).lower()}",
        ]
    )
    trainer = Trainer(cfg, log=lambda s: None)
    layers = trainer.network.layer_parameters()
    rate = {id(p): (bias_lrs if p.dim() == 1 else lrs)[k] for k, group in enumerate(layers) for p in group}
    params = [p for group in layers for p in group]
    assert len(params) == 4 and len(rate) == 4  # two weights, two biases
    theta = [p.detach().clone().double() for p in params]
    buffers: list[torch.Tensor | None] = [None] * len(params)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        trainer.optimizer.step()
        for i, (p, g) in enumerate(zip(params, grads)):
            lr, g = rate[id(p)], g.double()
            if decoupled:
                theta[i] = theta[i] * (1 - lr * wd)
            else:
                g = g + wd * theta[i]
            buffers[i] = g.clone() if buffers[i] is None else mu * buffers[i] + g
            step = g + mu * buffers[i] if nesterov else buffers[i]
            theta[i] = theta[i] - lr * step
        for p, t in zip(params, theta):
            assert torch.allclose(p.detach().double(), t, rtol=0, atol=1e-6)


class RatesUsed(Callback):
    """The rate of every group at each optimiser step (after_step runs just before ``optimizer.step()``)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, list[float]]] = []

    def after_step(self, trainer, epoch, batch, result):
        self.rows.append((epoch, [g["lr"] for g in trainer.optimizer.param_groups]))


@pytest.mark.parametrize(
    "schedule, closed_form",
    [
        ("lr_schedule=cosine", lambda lr, t, T: 1e-3 + (lr - 1e-3) * (1 + math.cos(math.pi * t / T)) / 2),
        ("eta_min_ratio=0.1", lambda lr, t, T: lr * (0.1 + 0.9 * (1 + math.cos(math.pi * t / T)) / 2)),
        ("lr_schedule=exponential", lambda lr, t, T: lr * 0.8**t),
        ("lr_schedule=constant", lambda lr, t, T: lr),
    ],
)
def test_the_rate_at_every_step_is_the_closed_form_schedule_of_its_epoch(tmp_path, schedule, closed_form):
    epochs, lrs = 4, [0.1, 0.05]
    cfg = parse_overrides(
        [*TINY, f"epochs={epochs}", f"lrs={lrs}", "eta_min=1e-3", "gamma=0.8", schedule, f"out_dir={tmp_path}"]
    )
    rates = RatesUsed()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r".*lr_scheduler\.step\(\)` before `optimizer\.step\(\)")
        Trainer(cfg, log=lambda s: None, callbacks=[rates]).fit()
    assert len(rates.rows) == epochs * 3  # 96 images, batch 32
    for epoch, used in rates.rows:
        expected = [closed_form(lr, epoch - 1, epochs) for lr in lrs]
        assert used == pytest.approx(expected, rel=1e-12, abs=1e-15), (epoch, used, expected)


@pytest.mark.parametrize("rule", ["CEP", "TBP", "CL"])
def test_accumulated_half_batches_add_up_to_twice_the_whole_batch_estimate(rule):
    """Each sample relaxes on its own and a step's estimate is the batch mean, so two half batches accumulated into
    ``.grad`` (``accumulate=True``, as ``backward()`` does) sum to twice the whole batch's estimate; the default
    replaces ``.grad``."""
    from eqprop import get_algorithm, hopfield_mlp

    torch.manual_seed(0)
    net = hopfield_mlp([12, 10, 4], gains=0.8).double()
    x, labels = torch.rand(8, 12, dtype=torch.float64), torch.randint(0, 4, (8,))
    alg = get_algorithm(rule, ignore_unknown=True, beta=0.1, free_iterations=30, nudged_iterations=10)
    alg.step(net, x, labels)
    whole = [p.grad.clone() for p in net.parameters()]
    alg.step(net, x[:4], labels[:4])
    alg.step(net, x[4:], labels[4:], accumulate=True)
    for p, g in zip(net.parameters(), whole):
        assert torch.allclose(p.grad, 2 * g, rtol=0, atol=1e-12)
    alg.step(net, x, labels)  # the default replaces
    for p, g in zip(net.parameters(), whole):
        assert torch.equal(p.grad, g)
