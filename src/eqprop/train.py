"""Training: a typed experiment config, the model/algorithm/optimiser it describes, and the epoch loop.

A run prints per-epoch train/test error; with ``out_dir`` it also writes ``config.json``, ``metrics.jsonl``
and ``checkpoint_last.pt``. A run whose states, loss or weights turn non-finite stops with a clear error
and keeps its last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, TensorDataset

from .algorithms import LearningAlgorithm, get_algorithm
from .data import load_dataset
from .models import dchn, hopfield_mlp
from .network import EnergyNetwork
from .optim import make_optimizer, make_scheduler

__all__ = ["TrainConfig", "Trainer", "build_network", "build_algorithm", "DivergenceError", "evaluate"]


@dataclass
class TrainConfig:
    """One experiment. The defaults train a small DCHN with C-EP on scikit-learn's digits (16x16)."""

    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int = 16
    model: str = "dchn"
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    hidden: list[int] = field(default_factory=lambda: [256])
    gains: list[float] = field(default_factory=lambda: [0.8, 0.8, 0.8, 0.8])
    activation: str = "hard_sigmoid"
    algorithm: str = "CEP"
    beta: float = 0.1
    cost: str = "squared_error"
    free_iterations: int = 20
    nudged_iterations: int = 8
    schedule: str = "asynchronous"
    dtype: str = "float32"
    init: str = "zeros"
    lrs: list[float] = field(default_factory=lambda: [0.25, 0.15, 0.1, 0.05])
    momentum: float = 0.9
    weight_decay: float = 3e-4
    epochs: int = 12
    batch_size: int = 64
    eta_min: float = 2e-6
    seed: int = 0
    device: str = "auto"
    out_dir: str | None = None

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _num_classes(dataset: TensorDataset) -> int:
    return int(dataset.tensors[1].max()) + 1


def build_network(cfg: TrainConfig, in_shape: tuple[int, ...], num_classes: int) -> EnergyNetwork:
    """The network a config describes ("dchn" or "mlp")."""
    if cfg.model == "dchn":
        if len(in_shape) != 3:
            raise ValueError(f"model 'dchn' needs image inputs (C, H, W), got shape {in_shape}")
        return dchn(in_shape[0], num_classes, input_size=in_shape[-1], channels=cfg.channels, gains=cfg.gains,
                    activation=cfg.activation)
    if cfg.model == "mlp":
        sizes = [math.prod(in_shape)] + list(cfg.hidden) + [num_classes]
        return hopfield_mlp(sizes, gains=cfg.gains, activation=cfg.activation)
    raise ValueError(f"unknown model {cfg.model!r}; valid models are ['dchn', 'mlp']")


def build_algorithm(cfg: TrainConfig) -> LearningAlgorithm:
    return get_algorithm(cfg.algorithm, beta=cfg.beta, free_iterations=cfg.free_iterations,
                         nudged_iterations=cfg.nudged_iterations, cost=cfg.cost, schedule=cfg.schedule,
                         dtype=None if cfg.dtype == "float32" else cfg.dtype, init=cfg.init)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class DivergenceError(RuntimeError):
    """Raised when states, loss or weights become NaN/inf; the last good checkpoint is kept."""


@torch.no_grad()
def evaluate(network: EnergyNetwork, algorithm: LearningAlgorithm, loader: DataLoader,
             device: torch.device) -> dict[str, float]:
    """Free-phase error rate (top-1) and mean cost over a data set."""
    wrong, total, loss = 0, 0, 0.0
    for x, labels in loader:
        x, labels = x.to(device), labels.to(device)
        out = algorithm.free_phase(network, x).states[-1].float()
        y = algorithm.targets(network, labels)
        loss += float(algorithm.cost(out, y).sum())
        wrong += int((out.argmax(1) != labels).sum())
        total += len(labels)
    return {"error": wrong / max(total, 1), "loss": loss / max(total, 1)}


class Trainer:
    """Runs the epochs of one experiment."""

    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] = print) -> None:
        self.cfg, self.log = cfg, log
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.train_set, self.test_set = load_dataset(cfg.dataset, cfg.data_dir, image_size=cfg.image_size,
                                                     flatten=cfg.model == "mlp", seed=cfg.seed)
        in_shape = tuple(self.train_set.tensors[0].shape[1:])
        self.network = build_network(cfg, in_shape, _num_classes(self.train_set)).to(self.device)
        self.algorithm = build_algorithm(cfg)
        self.optimizer = make_optimizer(self.network, cfg.lrs, cfg.momentum, cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg.epochs, cfg.eta_min)
        gen = torch.Generator().manual_seed(cfg.seed)
        self.train_loader = DataLoader(self.train_set, batch_size=cfg.batch_size, shuffle=True, generator=gen)
        self.test_loader = DataLoader(self.test_set, batch_size=512)
        self.out = Path(cfg.out_dir) if cfg.out_dir else None
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        self.history: list[dict[str, float]] = []

    def save_checkpoint(self, epoch: int) -> None:
        if not self.out:
            return
        state = {"epoch": epoch, "network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "config": dataclasses.asdict(self.cfg)}
        tmp = self.out / "checkpoint_last.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.out / "checkpoint_last.pt")

    def _check_finite(self, epoch: int, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss).all())
        bad = bad or any(not bool(torch.isfinite(p).all()) for p in self.network.parameters())
        if bad:
            where = f" (last good checkpoint: {self.out / 'checkpoint_last.pt'})" if self.out else ""
            raise DivergenceError(f"training diverged in epoch {epoch}: non-finite loss or weights{where}; "
                                  "try smaller learning rates, a smaller beta or more iterations")

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.network.train()
        wrong, total, loss_sum, iters = 0, 0, 0.0, 0
        for x, labels in self.train_loader:
            x, labels = x.to(self.device), labels.to(self.device)
            result = self.algorithm.step(self.network, x, labels)
            self._check_finite(epoch, result.loss)
            self.optimizer.step()
            wrong += int((result.output.argmax(1) != labels).sum())
            total += len(labels)
            loss_sum += float(result.loss.sum())
            iters += result.free.iterations
        self.scheduler.step()
        return {"train_loss": loss_sum / total, "train_error": wrong / total,
                "free_iterations": iters / max(len(self.train_loader), 1)}

    def fit(self) -> list[dict[str, float]]:
        cfg = self.cfg
        self.log(f"eqprop: {cfg.algorithm} on {cfg.dataset} ({len(self.train_set)} train / {len(self.test_set)} test), "
                 f"model={cfg.model}, device={self.device}, algorithm={self.algorithm}")
        self.save_checkpoint(0)
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            row = {"epoch": epoch, **self.train_epoch(epoch)}
            self._check_finite(epoch, torch.tensor(row["train_loss"]))  # never checkpoint non-finite weights
            test = evaluate(self.network, self.algorithm, self.test_loader, self.device)
            row.update(test_error=test["error"], test_loss=test["loss"], time=time.perf_counter() - t0)
            self.history.append(row)
            self.log(f"epoch {epoch:3d}  train loss {row['train_loss']:.4f}  train error {100 * row['train_error']:6.2f}%  "
                     f"test error {100 * row['test_error']:6.2f}%  ({row['time']:.1f}s)")
            if self.out:
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            self.save_checkpoint(epoch)
        return self.history
