"""Training: the model, algorithm and optimiser a config describes, and the epoch loop that runs them.

With ``out_dir`` the run writes into a :class:`~eqprop.training.run_directory.RunDirectory` (config, per-epoch
metrics with train loss, train/test top-1 and top-5 error, time and iterations, TensorBoard logs, checkpoints).
A checkpoint carries the optimiser, scheduler and RNG states and the rule's own state (a persistent free-phase
start, the random scheme's draws), so :meth:`Trainer.resume` continues a run exactly where it stopped, mid-epoch
included. What is not the loop is a callback
(:mod:`eqprop.training.callbacks`): a diverged run (NaN/inf in output, loss or weights) stops with
:class:`DivergenceError` and keeps its last good checkpoint; the kappa schedule; the diagnostics.
SIGINT/SIGTERM stop at the next batch boundary with a checkpoint (:class:`Interrupted`). A damaged checkpoint,
or one that no longer fits the network its config builds, is a :class:`~eqprop.errors.RunError` naming the file.
:meth:`Trainer.extend` starts a new run from a finished one's checkpoint to train it for more epochs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ..core.network import EnergyNetwork
from ..core.nudging import cost_precision, get_cost
from ..errors import RunError
from ..logs import get_logger
from ..models.base import build_model, model_output, model_spec
from ..rules.base import LearningAlgorithm, algorithm_options, get_algorithm
from ..rules.contrastive import Contrastive
from ..rules.phases import Phases
from ..rules.signals import KnowledgeDistillation, LocalError, WeightedKnowledgeDistillation
from . import distributed
from .callbacks import BatchFunction, Callback, Diagnostics, DivergenceError, DivergenceGuard, KappaSchedule
from .config import INCIDENTAL, SECTIONS, ConfigError, TrainConfig, config_from_dict, override_keys, parse_overrides
from .data import Augmentation, ImageData, epoch_batches, load_dataset, normalize_as
from .memory import require_fits
from .optim import layer_rates, make_optimizer, make_scheduler
from .run_directory import RunDirectory, provenance, read_checkpoint, restore_rng, rng_state
from .teacher import ConvTeacher, TeacherFeatures, load_or_train_teacher

_logger = get_logger(__name__)
TENSORBOARD_POINTS = (
    100  # batch-loss points per epoch in TensorBoard (one per window of batches; every batch on small sets)
)

__all__ = [
    "TrainConfig",
    "Trainer",
    "build_network",
    "build_algorithm",
    "build_phases",
    "load_data",
    "DivergenceError",
    "Interrupted",
    "evaluate",
    "topk_errors",
    "resolve_device",
    "load_run",
    "read_run_config",
    "run_finished",
]


def load_data(cfg: TrainConfig) -> ImageData:
    """The data set a config names, with its subset limits and normalisation."""
    data = load_dataset(
        cfg.dataset,
        cfg.data_dir,
        image_size=cfg.image_size,
        seed=cfg.seed,
        limit_train=cfg.limit_train,
        limit_test=cfg.limit_test,
        download=cfg.download,
        verify_checksums=cfg.verify_checksums,
    )
    data = normalize_as(data, cfg.normalization)
    return data.hold_out(cfg.validation, cfg.seed) if cfg.validation > 0 else data


def training_augmentation(cfg: TrainConfig, data: ImageData) -> Augmentation:
    """The training batches' augmentation: flips (the data set's default from appendix D unless ``flip`` says)
    and random crops (``crop_padding``, ``crop_padding_mode``)."""
    flip = data.flip if cfg.flip is None else cfg.flip
    return Augmentation(flip, cfg.crop_padding, cfg.crop_padding_mode)


def build_network(cfg: TrainConfig, in_shape: tuple[int, ...], num_classes: int) -> Any:
    """The model a config describes (the model registry's builder for ``cfg.model``)."""
    return build_model(cfg, in_shape, num_classes)


class _SkipInPlaceOnMeta(TorchFunctionMode):
    """While a model is built on the meta device only to count its parameters, its in-place initialisers
    (``uniform_``, ``clamp_``, ``normal_``) have no values to fill: skip them. Their meta kernels are written in
    Python, and the first use of one imports torch._dynamo (about 2 s in every run)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__") and args and isinstance(args[0], Tensor):
            if args[0].is_meta:
                return args[0]
        return func(*args, **(kwargs or {}))


def count_parameters(cfg: TrainConfig, in_shape: tuple[int, ...], num_classes: int) -> int | None:
    """The number of parameters of the model ``cfg`` builds, counted on the meta device (no memory); None when its
    builder cannot run there."""
    try:
        with torch.device("meta"), _SkipInPlaceOnMeta():
            return sum(p.numel() for p in build_network(cfg, in_shape, num_classes).parameters())
    except (ConfigError, ValueError):
        raise
    except Exception:
        return None


def build_network_that_fits(cfg: TrainConfig, in_shape: tuple[int, ...], num_classes: int, device: torch.device) -> Any:
    """:func:`build_network`, with a model too large for the device's memory refused before any allocation as a
    ConfigError that says how large it is (``channels=[1000000000000, 8, 8]``): its parameters, their gradients and
    the optimiser's state (three copies) must fit. An allocation that fails all the same is the same error."""
    itemsize = torch.empty((), dtype=getattr(torch, cfg.precision)).element_size()
    keys = ("channels", "hidden", "blocks") if model_spec(cfg.model.kind).blocks else ("channels", "hidden")
    sizes = ", ".join(f"{k}={v}" for k, v in cfg.flat().items() if k in keys)

    def refuse(count: int) -> None:
        require_fits(
            3 * count * itemsize,  # the parameters, their gradients and SGD's momentum
            f"model {cfg.model.kind!r} with {count:,} parameters ({sizes})",
            f"reduce the widths ({', '.join(keys)})",
            device,
        )

    count = count_parameters(cfg, in_shape, num_classes)
    if count is not None:
        refuse(count)
    try:
        return build_network(cfg, in_shape, num_classes)
    except RuntimeError as exc:  # torch.OutOfMemoryError is one
        if "can't allocate memory" not in str(exc) and "out of memory" not in str(exc).lower():
            raise
        raise ConfigError(f"model {cfg.model.kind!r} ({sizes}) cannot be allocated: {str(exc)[:300]}") from None


def default_signal_layers(cfg: TrainConfig, network: EnergyNetwork) -> list[int]:
    """The paper's choice: LE on the last layer of blocks 2.. (section 4.2), KD on every block end; for networks
    without blocks (dchn, mlp), every hidden layer."""
    ends = list(network.block_ends or range(1, network.output_index))
    return ends[1:] if cfg.signals.kind == "le" and len(ends) > 1 else ends


def build_signals(
    cfg: TrainConfig,
    network: EnergyNetwork,
    data: ImageData,
    device: torch.device,
    out: Path | None,
    log: Callable[[str], None],
) -> torch.nn.ModuleList:
    """The intermediate learning signals a config asks for (trains or loads the KD teacher)."""
    if cfg.signals.kind == "none":
        return torch.nn.ModuleList()
    layers = cfg.signal_layers if cfg.signal_layers is not None else default_signal_layers(cfg, network)
    bad = [k for k in layers if not 1 <= k < network.output_index]
    if bad or not layers:
        raise ConfigError(f"signal_layers {layers}: each must be a hidden layer index in 1..{network.output_index - 1}")
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    if cfg.signals.kind == "le":
        return torch.nn.ModuleList(
            LocalError(k, network.layers[k].shape, data.num_classes, cfg.tau, gen, cfg.le_soft_labels) for k in layers
        ).to(device)
    ends = list(network.block_ends or [])
    not_ends = [k for k in layers if k not in ends]
    if not_ends:
        raise ConfigError(f"KD signals attach to block ends {ends} (the teacher's block logits); got {not_ends}")
    teacher = load_or_train_teacher(
        cfg.teacher,
        out / "teacher.pt" if out else None,
        lambda: ConvTeacher(data.image_shape[0], data.num_classes, data.image_shape[-1], cfg.blocks, cfg.hidden),
        data,
        cfg.teacher_epochs,
        device,
        cfg.seed,
        training_augmentation(cfg, data),
        log,
    )
    features = TeacherFeatures(teacher)
    if cfg.signals.kind == "kd":
        return torch.nn.ModuleList(KnowledgeDistillation(k, features.block(ends.index(k)), cfg.tau) for k in layers)
    return torch.nn.ModuleList(
        WeightedKnowledgeDistillation(k, network.layers[k].shape, features.block(ends.index(k)), cfg.tau)
        for k in layers
    ).to(device)


def build_phases(cfg: TrainConfig) -> Phases | None:
    """The relaxation phases a config describes (None for models that do not relax)."""
    default = model_spec(cfg.model.kind).solver
    return None if default is None else cfg.relax.phases(default)


def build_algorithm(cfg: TrainConfig) -> LearningAlgorithm:
    """The learning rule a config describes, given the keywords its registration asks for."""
    values = {
        "cost": get_cost(cfg.cost, cfg.nudged_output),
        "beta": cfg.beta,
        "seed": cfg.seed,
    }
    for name in SECTIONS:  # the keywords that rules' own sections declare (HEP's points, RBP's adjoint, ...)
        section = getattr(cfg, name)
        values.update({keyword: getattr(section, key) for key, keyword in section.options.items()})
    options = algorithm_options(cfg.algorithm)
    if "phases" in options:
        values["phases"] = build_phases(cfg)
    try:
        return get_algorithm(cfg.algorithm, **{k: values[k] for k in options})
    except ValueError as exc:  # an invalid combination of settings is the config's fault
        raise ConfigError(f"algorithm {cfg.algorithm}: {exc}") from None


def resolve_device(name: str, ctx: distributed.Context | None = None) -> torch.device:
    """``auto`` picks CUDA when present; asking for an absent CUDA device is a clear error. Under torchrun each
    rank takes the GPU of its local rank."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use device=cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if ctx is not None and ctx.enabled and name == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return torch.device(name)


class Interrupted(RuntimeError):
    """Raised when SIGINT/SIGTERM stopped a run; ``checkpoint`` (if any) resumes it."""

    def __init__(self, signame: str, checkpoint: Path | None) -> None:
        self.signame, self.checkpoint = signame, checkpoint
        where = f"; resume with: eqprop train --resume {checkpoint.parent}" if checkpoint else ""
        super().__init__(f"interrupted by {signame}{where}")


def topk_errors(output: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Number of samples whose label is not among the top-k outputs, for each k (k capped at #classes)."""
    ranked = output.topk(min(max(ks), output.shape[1]), dim=1).indices
    hits = ranked == labels.view(-1, 1)
    return {k: int((~hits[:, :k].any(1)).sum()) for k in ks}


@torch.no_grad()
def evaluate(
    network: Any,
    algorithm: LearningAlgorithm,
    data: ImageData,
    device: torch.device,
    batch_size: int = 512,
    flatten: bool = False,
    split: str = "test",
    ctx: distributed.Context | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Free-phase top-1 and top-5 error rates and mean cost over a split (``test``, ``val`` or ``train``; no
    augmentation); with several ranks, each evaluates its part of the split and the counts are summed. The model
    is in eval mode meanwhile (free phases from the configured start, never from a carried training state)."""
    training = network.training
    network.eval()
    try:
        return _evaluate(network, algorithm, data, device, batch_size, flatten, split, ctx, dtype)
    finally:
        network.train(training)


def _evaluate(
    network: Any,
    algorithm: LearningAlgorithm,
    data: ImageData,
    device: torch.device,
    batch_size: int,
    flatten: bool,
    split: str,
    ctx: distributed.Context | None,
    dtype: torch.dtype,
) -> dict[str, float]:
    ctx = ctx or distributed.Context()
    images, labels_all = data.split(split)
    total = len(labels_all)
    part = distributed.shard(total, ctx)  # this rank's share (all of it on one rank)
    wrong1 = wrong5 = loss = 0.0
    for start in range(part.start, part.stop, batch_size):
        stop = min(start + batch_size, part.stop)
        x = data.prepare(images[start:stop].to(device), flatten=flatten).to(dtype)
        labels = labels_all[start:stop].to(device)
        out = cost_precision(model_output(network, algorithm.free_phase(network, x).states))
        loss += float(algorithm.cost(out, algorithm.targets(network, labels)).sum())
        errs = topk_errors(out, labels)
        wrong1, wrong5 = wrong1 + errs[1], wrong5 + errs[5]
    wrong1, wrong5, loss = distributed.all_sum([wrong1, wrong5, loss], ctx)
    n = max(total, 1)
    return {"error": wrong1 / n, "top5_error": wrong5 / n, "loss": loss / n}


@contextlib.contextmanager
def _config_errors(what: str) -> Iterator[None]:
    """Report a ValueError raised while building from the config as a ConfigError about ``what``: the library's
    builders raise ValueError only for invalid arguments, and here every argument comes from the config."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from exc


def set_determinism(threads: int | None, deterministic: bool) -> None:
    """Fix the CPU thread count (results at a fixed seed depend on it: float sums split differently) and, with
    ``deterministic``, ask PyTorch for deterministic kernels only (process-wide settings)."""
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


class Trainer:
    """The epoch loop of one experiment: built from a config, writing into a :class:`RunDirectory` (when
    ``out_dir`` is set), with :mod:`callbacks <eqprop.training.callbacks>` for everything besides the loop.
    ``run_mode``: ``new`` refuses an ``out_dir`` that holds files, ``overwrite`` deletes an earlier run there."""

    RESUMABLE_OVERRIDES = INCIDENTAL

    def __init__(
        self,
        cfg: TrainConfig,
        log: Callable[[str], None] | None = None,
        callbacks: Sequence[Callback | Callable[[Trainer, int, int], None]] = (),
        run_mode: str = "new",
    ) -> None:
        self.cfg = cfg
        self.dist = distributed.setup(cfg.device, cfg.dist_timeout)  # one rank unless torchrun started several
        self.log = (log or _logger.info) if self.dist.main else (lambda message: None)
        set_determinism(cfg.threads, cfg.deterministic)
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(cfg.device, self.dist)
        if self.device.type == "cuda":  # fixed shapes all run long: let cuDNN time its algorithms once
            torch.backends.cudnn.benchmark = cfg.cudnn_benchmark and not cfg.deterministic
        self.data = load_data(cfg)
        self.flatten = model_spec(cfg.model.kind).flat_input
        self.augment = training_augmentation(cfg, self.data)
        in_shape = (math.prod(self.data.image_shape),) if self.flatten else self.data.image_shape
        with _config_errors(f"model {cfg.model.kind}"):
            self.network = build_network_that_fits(cfg, in_shape, self.data.num_classes, self.device)
        self.dtype = getattr(torch, cfg.precision)
        self.network = self.network.to(self.device, self.dtype)
        self.algorithm = build_algorithm(cfg)
        with _config_errors(f"algorithm {cfg.algorithm}"):
            self.algorithm.check_model(self.network)
        # only rank 0 writes the run directory
        self.run_dir = (
            RunDirectory(cfg.out_dir, cfg.tensorboard, self.log, run_mode) if cfg.out_dir and self.dist.main else None
        )
        self.signals = build_signals(cfg, self.network, self.data, self.device, self.out, self.log)
        if len(self.signals):
            assert isinstance(self.algorithm, Contrastive)  # the config allows signals with P-/N-/C-EP only
            self.algorithm.signals = list(self.signals)
        with _config_errors("lrs"):
            self.optimizer = make_optimizer(
                self.network,
                cfg.lrs,
                cfg.momentum,
                cfg.weight_decay,
                cfg.nesterov,
                cfg.decoupled_weight_decay,
                cfg.bias_lrs,
            )
            rates = layer_rates(cfg.lrs, len(self.network.layer_parameters()))
        for sig in self.signals:  # KDW maps learn at the rate of the layer they read
            if list(sig.parameters()):
                layer = int(sig.layer)  # type: ignore[arg-type]  # an IntermediateSignal's layer index
                self.optimizer.add_param_group({"params": list(sig.parameters()), "lr": rates[layer - 1]})
        self.scheduler = make_scheduler(
            self.optimizer, cfg.epochs, cfg.eta_min, cfg.eta_min_ratio, cfg.lr_schedule, cfg.gamma
        )
        distributed.broadcast_parameters(
            [*self.network.state_dict().values(), *self.signals.state_dict().values()], self.dist
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation
        self.train_images = self.data.train_images.to(self.device)
        self.train_labels = self.data.train_labels.to(self.device)
        self.history: list[dict[str, float]] = []
        self.epoch = 0  # completed epochs
        self.best_error = math.inf
        self.callbacks = default_callbacks(cfg) + [
            c if isinstance(c, Callback) else BatchFunction(c) for c in callbacks
        ]
        self._partial: dict[str, Any] | None = None  # the unfinished epoch of a resumed, interrupted run
        self._stop: str | None = None
        if _logger.isEnabledFor(logging.DEBUG):
            count = sum(p.numel() for p in self.network.parameters())
            _logger.debug(f"config: {json.dumps(cfg.flat(), default=str)}")
            _logger.debug(
                f"{cfg.model.kind}: {count} parameters in {self.dtype}; {cfg.dataset}: images "
                f"{tuple(self.data.image_shape)}, {len(self.train_labels)} train / {len(self.data.test_labels)} test; "
                f"callbacks {[type(c).__name__ for c in self.callbacks]}"
            )

    @property
    def out(self) -> Path | None:
        """The run directory's path (None without ``out_dir``)."""
        return self.run_dir.path if self.run_dir else None

    @property
    def resuming_batch(self) -> int:
        """The batch a resumed epoch continues from (0 for a fresh epoch)."""
        return self._partial["batch"] if self._partial else 0

    # ------------------------------------------------------------------ checkpoints and resume
    def rule_state(self) -> dict[str, Any]:
        """The rule's state for a checkpoint, its batch tensors gathered into the global batch under several ranks
        (a collective: every rank calls it)."""
        state = dict(self.algorithm.state_dict())
        if self.dist.enabled:
            batch = distributed.gather_batch(state.pop("batch", []), self.dist)
            if batch:
                state["batch"] = batch
        return state

    def checkpoint_state(self, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything a checkpoint holds (a collective under several ranks: see :meth:`rule_state`)."""
        return {
            "epoch": self.epoch,
            "partial": partial,
            "network": self.network.state_dict(),
            "signals": self.signals.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "best_error": self.best_error,
            "rng": rng_state(self.generator),
            "algorithm": self.rule_state(),
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self, partial: dict[str, Any] | None = None, best: bool = False) -> Path | None:
        """Write ``checkpoint_last.pt`` atomically (and ``checkpoint_best.pt`` when ``best``). Every rank calls it
        (the rule's batch state is gathered); rank 0 writes. Without ``out_dir`` (on every rank alike) it builds
        nothing."""
        if not self.cfg.out_dir:
            return None
        state = self.checkpoint_state(partial)
        if not self.run_dir:
            return None
        t0 = time.perf_counter()
        path = self.run_dir.save_checkpoint(state, best)
        _logger.debug(f"wrote {path}{' and the best checkpoint' if best else ''} ({time.perf_counter() - t0:.2f}s)")
        return path

    def load_checkpoint(self, path: str | Path, state: dict[str, Any] | None = None) -> None:
        """Continue from a checkpoint (read from ``path`` unless its ``state`` is given)."""
        state = read_checkpoint(path, self.device) if state is None else state
        self._load_weights(state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history, self.best_error = state["history"], state["best_error"]
        self.epoch, self._partial = state["epoch"], state["partial"]
        for callback, saved in zip(self.callbacks, (self._partial or {}).get("callbacks", [])):
            callback.load_state_dict(saved)
        restore_rng(state["rng"], self.generator)
        self._load_rule_state(state)

    def _load_rule_state(self, state: dict[str, Any]) -> None:
        """The rule's state from a checkpoint, each rank taking its rows of the global batch tensors."""
        rule = dict(state.get("algorithm", {}))
        if rule.get("batch"):
            rule["batch"] = distributed.shard_batch([t.to(self.device) for t in rule["batch"]], self.dist)
        self.algorithm.load_state_dict(rule)

    def _load_weights(self, state: dict[str, Any], path: str | Path) -> None:
        """The network's (and the signals') weights from a checkpoint that must fit the network built here."""
        try:
            self.network.load_state_dict(state["network"])
            self.signals.load_state_dict(state.get("signals", {}))
        except RuntimeError as exc:  # size mismatch, missing or unexpected keys
            detail = " ".join(str(exc).split())
            raise RunError(
                f"{path} does not fit the network its run's config builds now (the model code or config.json "
                f"changed since it was saved): {detail[:300]}"
            ) from None

    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        overrides: Sequence[str] = (),
        log: Callable[[str], None] | None = None,
        callbacks: Sequence[Callback | Callable[[Trainer, int, int], None]] = (),
        checkpoint: str = "last",
    ) -> Trainer:
        """Continue the run in ``run_dir`` from its last checkpoint (or its best, ``checkpoint="best"``) with the
        same optimiser, scheduler and RNG; the metrics files are cut back to the checkpoint's epochs."""
        run_dir = Path(run_dir)
        cfg = read_run_config(run_dir)  # a RunError when run_dir holds no run
        state, ckpt = read_run_checkpoint(run_dir, checkpoint, "resume")
        if state["partial"] is None and state["epoch"] >= cfg.epochs:
            final = state["history"][-1].get("test_error") if state["history"] else None
            shown = f" (final test error {100 * final:.2f}%)" if isinstance(final, float) else ""
            raise RunError(
                f"{run_dir} is finished: it has trained all {cfg.epochs} epochs{shown}, so there is nothing to "
                f"resume and nothing was changed; to train it further, start a new run from it with `eqprop train "
                f"--extend {run_dir} epochs=N` (N > {cfg.epochs})"
            )
        changed = parse_overrides(overrides, cfg)
        bad = [
            k for k in TrainConfig.keys() if getattr(changed, k) != getattr(cfg, k) and k not in cls.RESUMABLE_OVERRIDES
        ]
        if bad:
            raise ConfigError(
                f"cannot change {bad} when resuming (it would not be the same run); "
                f"keys that may change are {list(cls.RESUMABLE_OVERRIDES)}"
            )
        stop, done = changed.stop_after_epoch, state["epoch"]
        asked = "stop_after_epoch" in override_keys(overrides)
        if asked and stop is not None and stop <= done:  # the saved one may lie behind: it is not asked for
            raise ConfigError(
                f"stop_after_epoch={stop} (--until): {run_dir} has done {done} epochs already; give an epoch after "
                f"it (up to epochs={cfg.epochs}), or leave it out to run to the end"
            )
        changed.out_dir = str(run_dir)
        trainer = cls(changed, log=log, callbacks=callbacks, run_mode="resume")
        trainer.load_checkpoint(ckpt, state)
        if trainer.run_dir:
            trainer.run_dir.rewrite_metrics(trainer.history)
        return trainer

    @classmethod
    def extend(
        cls,
        run_dir: str | Path,
        overrides: Sequence[str] = (),
        log: Callable[[str], None] | None = None,
        callbacks: Sequence[Callback | Callable[[Trainer, int, int], None]] = (),
        run_mode: str = "new",
    ) -> Trainer:
        """A new run that continues the finished run in ``run_dir`` from its last checkpoint for more epochs
        (``epochs=N`` among the overrides, N > the epochs trained). It keeps the weights, the optimiser's momentum,
        the metrics so far, the RNG and the rule's state; the learning rates follow the new config's cosine schedule
        from the epoch reached. The new run goes to ``out_dir`` (default: ``<run_dir>_extended_<N>ep``) and records
        where it came from in ``extends.json``."""
        run_dir = Path(run_dir)
        old = read_run_config(run_dir)  # a RunError when run_dir holds no run
        state, ckpt = read_run_checkpoint(run_dir, "last", "extend")
        if state["partial"] is not None:
            raise RunError(
                f"{run_dir} stopped inside epoch {state['epoch'] + 1}: finish it first with `eqprop train --resume "
                f"{run_dir}`, then extend it"
            )
        cfg = parse_overrides(overrides, old)
        if cfg.epochs <= state["epoch"]:
            raise ConfigError(
                f"--extend: config key 'epochs' must exceed the {state['epoch']} epochs {run_dir} has trained, got "
                f"{cfg.epochs} (e.g. epochs={2 * state['epoch']})"
            )
        if cfg.out_dir is None or cfg.out_dir == old.out_dir or Path(cfg.out_dir).resolve() == run_dir.resolve():
            cfg.out_dir = str(run_dir.parent / f"{run_dir.name}_extended_{cfg.epochs}ep")
        trainer = cls(cfg, log=log, callbacks=callbacks, run_mode=run_mode)
        trainer._load_weights(state, ckpt)
        rates = [group["lr"] for group in trainer.optimizer.param_groups]
        trainer.optimizer.load_state_dict(state["optimizer"])  # momentum buffers
        for group, lr in zip(trainer.optimizer.param_groups, rates):
            group["lr"] = group["initial_lr"] = lr
        trainer.scheduler = make_scheduler(
            trainer.optimizer, cfg.epochs, cfg.eta_min, cfg.eta_min_ratio, cfg.lr_schedule, cfg.gamma
        )
        with warnings.catch_warnings():  # stepping the schedule to the epoch reached, before any optimizer step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(state["epoch"]):
                trainer.scheduler.step()
        trainer.history, trainer.best_error, trainer.epoch = list(state["history"]), state["best_error"], state["epoch"]
        restore_rng(state["rng"], trainer.generator)
        trainer._load_rule_state(state)  # e.g. a persistent free-phase start
        new = cfg.flat()
        changed = {k: [v, new[k]] for k, v in old.flat().items() if new[k] != v and k != "out_dir"}
        if trainer.run_dir:
            trainer.run_dir.rewrite_metrics(trainer.history)
            (trainer.run_dir / "extends.json").write_text(
                json.dumps(
                    {"extends": str(run_dir), "checkpoint": ckpt.name, "epoch": state["epoch"], "changed": changed},
                    indent=2,
                )
            )
        return trainer

    # ------------------------------------------------------------------ the loop
    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self._stop = signal.Signals(signum).name

    def train_epoch(self, epoch: int, bar: Any = None) -> dict[str, float]:
        """One pass over the shuffled training set (continuing a partial epoch after resume)."""
        cfg, n = self.cfg, len(self.train_labels)
        self._window = [0.0, 0]  # TensorBoard's batch-loss window: sum, batches
        partial = self._partial or {
            "batch": 0,
            "wrong1": 0,
            "wrong5": 0,
            "loss": 0.0,
            "iters": 0,
            "time": 0.0,
            "epoch_generator": self.generator.get_state(),
        }
        for callback in self.callbacks:
            callback.on_epoch_start(self, epoch)
        self._partial = None
        self.generator.set_state(partial["epoch_generator"])
        batches = math.ceil(n / cfg.batch_size)
        t0 = time.perf_counter() - partial["time"]
        self.network.train()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for b, x, labels in epoch_batches(
            self.data,
            self.train_images,
            self.train_labels,
            cfg.batch_size,
            self.generator,
            augment=self.augment,
            flatten=self.flatten,
            start=partial["batch"],
            resume_generator=partial.get("generator"),
            shard=(lambda size: distributed.shard(size, self.dist)) if self.dist.enabled else None,
        ):
            result = self.algorithm.step(self.network, x.to(self.dtype), labels)
            for callback in self.callbacks:
                callback.after_step(self, epoch, b, result)
            global_batch = min(cfg.batch_size, n - b * cfg.batch_size)
            distributed.average_gradients(params, len(labels), global_batch, self.dist)
            self.optimizer.step()
            errs = topk_errors(cost_precision(result.output), labels)
            for callback in self.callbacks:
                callback.on_batch_end(self, epoch, b, result)
            # one reduction per batch: the global batch's metrics, and whether any rank has been asked to stop
            # (read once here, so every rank takes the same decision at the same batch)
            requested = self._stop
            counts = self.algorithm.step_counts()
            loss, wrong1, wrong5, iters, stop, *summed = distributed.all_sum(
                [float(result.loss.sum()), errs[1], errs[5], result.free.iterations, requested is not None]
                + [float(v) for v in counts.values()],
                self.dist,
            )
            before = partial.get("counts", {})
            partial.update(
                batch=b + 1,
                wrong1=partial["wrong1"] + wrong1,
                wrong5=partial["wrong5"] + wrong5,
                loss=partial["loss"] + loss,
                iters=partial["iters"] + iters / self.dist.world,
                counts={k: before.get(k, 0.0) + v for k, v in zip(counts, summed)},
            )
            seen = min((b + 1) * cfg.batch_size, n)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{partial['loss'] / seen:.4f}", err=f"{100 * partial['wrong1'] / seen:.2f}%")
            if self.run_dir:  # TensorBoard: the mean batch loss over windows of about 1% of an epoch
                window = max(1, batches // TENSORBOARD_POINTS)
                self._window[0] += loss / global_batch
                self._window[1] += 1
                if (b + 1) % window == 0 or b + 1 == batches:
                    step = (epoch - 1) * batches + b
                    self.run_dir.scalar("batch/train_loss", self._window[0] / self._window[1], step)
                    self._window = [0.0, 0]
            if stop and b + 1 < batches:
                partial.update(
                    time=time.perf_counter() - t0,
                    generator=self.generator.get_state(),
                    callbacks=[c.state_dict() for c in self.callbacks],
                )
                raise Interrupted(requested or "SIGTERM", self.save_checkpoint(partial))
        self.scheduler.step()
        return {
            "train_loss": partial["loss"] / n,
            "train_error": partial["wrong1"] / n,
            "train_top5_error": partial["wrong5"] / n,
            "free_iterations": partial["iters"] / batches,
            **partial.get("counts", {}),
            "train_time": time.perf_counter() - t0,
        }

    def fit(self) -> list[dict[str, float]]:
        """Train to ``cfg.epochs``; returns the per-epoch metrics (also written to the run directory)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        started = time.perf_counter()
        if self.run_dir:  # the config is written once the run starts (a resume that fails leaves it as it was)
            self.run_dir.acquire()
            self.run_dir.write_config(cfg.to_dict())
            ranks = {"ranks": self.dist.world}
            self.run_dir.append_jsonl("provenance.jsonl", {**provenance(self.device), **ranks, "epoch": self.epoch})
        if self.epoch == 0 and self._partial is None:
            self.log(
                f"eqprop: {cfg.algorithm} on {cfg.dataset} ({len(self.train_labels)} train / "
                f"{len(self.data.test_labels)} test), model={cfg.model.kind}, device={self.device}"
                + (f" x {self.dist.world} ranks" if self.dist.enabled else "")
                + ", "
                f"algorithm={self.algorithm}" + (f", run dir {self.out}" if self.out else "")
            )
            self.save_checkpoint()
        elif not self.history or self._partial is not None or self.epoch < cfg.epochs:
            self.log(
                f"eqprop: continuing {self.out} after epoch {self.epoch}"
                + (f" (batch {self.resuming_batch} of epoch {self.epoch + 1})" if self._partial else "")
            )
        for note in self.algorithm.notes(self.network):
            self.log(f"eqprop: note: {note}")
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._request_stop)
        if self.run_dir:
            self.run_dir.open_logs()
        # progress bars with the INFO messages: off with --quiet, in other ranks, and when progress=false
        disable = None if cfg.progress and self.dist.main and _logger.isEnabledFor(logging.INFO) else True
        batches = math.ceil(len(self.train_labels) / cfg.batch_size)
        try:
            with tqdm(total=cfg.epochs, initial=self.epoch, desc="epochs", unit="epoch", disable=disable) as ebar:
                for epoch in range(self.epoch + 1, cfg.epochs + 1):
                    with tqdm(
                        total=batches,
                        initial=self.resuming_batch,
                        desc=f"epoch {epoch}",
                        unit="batch",
                        leave=False,
                        disable=disable,
                    ) as bbar:
                        row: dict[str, float] = {"epoch": epoch, **self.train_epoch(epoch, bbar)}
                    self._end_epoch(epoch, row)
                    if epoch == cfg.epochs and self.run_dir:  # finished: its settings beside its results
                        key = "test_error" if "test_error" in row else "val_error"
                        best = min(r[key] for r in self.history if key in r)  # test_once: the last epoch
                        results = {f"best_{key}": best, f"final_{key}": row[key]}
                        self.run_dir.hparams({**cfg.flat(), "ranks": self.dist.world}, results)
                    ebar.update(1)
                    shown = next(k for k in ("test_error", "val_error", "train_error") if k in row)
                    ebar.set_postfix({shown.replace("error", "err"): f"{100 * row[shown]:.2f}%"})
                    if distributed.any_rank(self._stop is not None, self.dist) and epoch < cfg.epochs:
                        raise Interrupted(self._stop or "SIGTERM", self.run_dir.last if self.run_dir else None)
                    if epoch == cfg.stop_after_epoch and epoch < cfg.epochs:  # once: a resume goes on past it
                        where = f"; resume with: eqprop train --resume {self.out}" if self.out else ""
                        self.log(f"eqprop: stopped after epoch {epoch} of {cfg.epochs} (stop_after_epoch){where}")
                        return self.history
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self.run_dir:
                self.run_dir.close()
        self.log(self.summary(time.perf_counter() - started))
        return self.history

    def close(self) -> None:
        """Release the run directory and leave the process group (torchrun runs)."""
        if self.run_dir:
            self.run_dir.close()
        distributed.finish(self.dist)

    def summary(self, wall: float | None = None) -> str:
        """One line: best and final test error, the epoch of the best, wall time, run directory."""
        if not self.history:
            return "eqprop: no epoch finished"
        final = self.history[-1]
        key = "val_error" if "val_error" in final else "test_error" if "test_error" in final else "train_error"
        best = min((r for r in self.history if key in r), key=lambda r: r[key])
        what = {"val_error": "validation", "test_error": "test", "train_error": "training"}[key]
        if key == "test_error" and self.cfg.test_once:
            parts = [f"eqprop: done after {final['epoch']:g} epochs: test error {100 * final[key]:.2f}% (read once)"]
        else:
            parts = [
                f"eqprop: done after {final['epoch']:g} epochs: best {what} error {100 * best[key]:.2f}% "
                f"(epoch {best['epoch']:g}), final {100 * final[key]:.2f}%"
            ]
        if key == "val_error" and "test_error" in best:
            parts.append(f"test error at that epoch {100 * best['test_error']:.2f}%")
        elif key == "val_error" and "test_error" in final:
            parts.append(f"test error after the last epoch {100 * final['test_error']:.2f}% (read once)")
        if wall is not None:
            parts.append(f"wall time {wall:.1f} s")
        if self.out:
            parts.append(f"run directory {self.out}")
        return ", ".join(parts)

    def _end_epoch(self, epoch: int, row: dict[str, float]) -> None:
        """Evaluate, let the callbacks add to the row, record it and checkpoint."""
        t_eval = time.perf_counter()
        # evaluate_test=false: a tuning trial, which never reads the test set; test_once: only after the last epoch
        reads_test = self.cfg.evaluate_test and (not self.cfg.test_once or epoch >= self.cfg.epochs)
        splits = ["test"] if reads_test else []
        if self.data.val_images is not None:  # model selection on the held-out split, never on the test set
            splits.append("val")
        for split in splits:
            result = evaluate(
                self.network,
                self.algorithm,
                self.data,
                self.device,
                flatten=self.flatten,
                split=split,
                ctx=self.dist,
                dtype=self.dtype,
            )
            row.update({f"{split}_{key}": result[key] for key in ("error", "top5_error", "loss")})
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row["time"] = row["train_time"] + time.perf_counter() - t_eval
        for callback in self.callbacks:
            callback.on_epoch_end(self, epoch, row)
        self.history.append(row)
        self.epoch = epoch
        # the checkpoint_best criterion: validation error, else test error (test_once: the last epoch is the best)
        selected = row.get("val_error", row.get("test_error", math.inf))
        best = selected < self.best_error
        self.best_error = min(self.best_error, selected)
        self.log(
            f"epoch {epoch:3d}  train loss {row['train_loss']:.4f}  train error "
            f"{100 * row['train_error']:6.2f}%"
            + (
                f"  test error {100 * row['test_error']:6.2f}%  top-5 {100 * row['test_top5_error']:5.2f}%"
                if "test_error" in row
                else ""
            )
            + (f"  val error {100 * row['val_error']:6.2f}%" if "val_error" in row else "")
            + f"  ({row['time']:.1f}s)"
        )
        _logger.debug("epoch %d row: %s", epoch, json.dumps(row))
        if self.run_dir:
            self.run_dir.write_metrics(row, self.history)
        self.save_checkpoint(best=best)  # on every rank: the rule's batch state is gathered


def default_callbacks(cfg: TrainConfig) -> list[Callback]:
    """The callbacks a config implies: the divergence guard always, the kappa schedule with signals, the
    Figure 5 diagnostics when asked."""
    callbacks: list[Callback] = [DivergenceGuard(cfg.max_loss)]
    if cfg.signals.kind != "none":
        callbacks.append(KappaSchedule(cfg.kappa_schedule, cfg.kappa, cfg.kappa_min, cfg.kappa_gamma, cfg.epochs))
    if cfg.diagnostics:
        callbacks.append(Diagnostics())
    return callbacks


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config a run directory was started with (``config.json``), validated."""
    path = Path(run_dir) / "config.json"
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not a run directory (no config.json)") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"{path} is damaged ({exc})") from None
    try:
        return config_from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def run_finished(run_dir: str | Path) -> bool:
    """Whether the run in ``run_dir`` has trained all its epochs: its last checkpoint closes its last epoch. (The
    metrics are read first: a run whose metrics stop short is unfinished without opening its checkpoint.)"""
    run_dir = Path(run_dir)
    try:
        cfg = read_run_config(run_dir)
        rows = (run_dir / "metrics.jsonl").read_text().splitlines()
        if not rows or json.loads(rows[-1]).get("epoch", 0) < cfg.epochs:
            return False
        state = read_checkpoint(run_dir / "checkpoint_last.pt")
    except (RunError, ConfigError, OSError, ValueError):
        return False
    return state["partial"] is None and state["epoch"] >= cfg.epochs


def read_run_checkpoint(run_dir: Path, which: str, action: str) -> tuple[dict[str, Any], Path]:
    """``checkpoint_{which}.pt`` of a run (``best`` falls back to ``last`` where there is none); a damaged one is a
    RunError that names it and, when the other checkpoint is intact, says how to ``action`` from that one."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    path = run_dir / f"checkpoint_{which}.pt"
    if which == "best" and not path.exists():
        which, path = "last", run_dir / "checkpoint_last.pt"
    try:
        return read_checkpoint(path), path
    except RunError as exc:
        other = "best" if which == "last" else "last"
        try:
            intact = read_checkpoint(run_dir / f"checkpoint_{other}.pt")
        except RunError:
            raise exc from None
        how = {
            "resume": f"resume from it with `eqprop train --resume {run_dir} --checkpoint {other}`",
            "eval": f"evaluate it with `eqprop eval {run_dir} --checkpoint {other}`",
        }.get(action, f"it is checkpoint_{other}.pt")
        raise RunError(f"{exc}; checkpoint_{other}.pt (epoch {intact['epoch']}) is intact: {how}") from None


def load_run(
    run_dir: str | Path, which: str = "best", overrides: Sequence[str] = (), device: str | None = None
) -> tuple[Trainer, dict[str, Any]]:
    """A run's trainer with the weights of ``checkpoint_{which}.pt`` loaded, and that checkpoint."""
    run_dir = Path(run_dir)
    saved = read_run_config(run_dir)  # a RunError when run_dir holds no run
    state, path = read_run_checkpoint(run_dir, which, "eval")
    cfg = parse_overrides(overrides, saved)
    cfg.out_dir, cfg.tensorboard = None, False
    if device is not None:
        cfg.device = device
    trainer = Trainer(cfg, log=lambda s: None)
    trainer._load_weights(state, path)
    return trainer, state
