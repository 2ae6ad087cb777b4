"""Experiment configs: one typed, validated ``TrainConfig`` per run, read from YAML and ``key=value`` overrides.

A YAML experiment is a flat mapping of config keys. ``base: other.yaml`` (a path relative to the file) starts
from another experiment; a ``study:`` block (algorithms, datasets, seeds, jobs) is read by ``eqprop study``
only. A wrong key, type or choice is a ``ConfigError`` that names it and lists what is valid.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..registry import canonical_name

__all__ = [
    "TrainConfig",
    "ConfigError",
    "load_config",
    "parse_overrides",
    "config_from_dict",
    "read_yaml",
    "STUDY_KEYS",
]

STUDY_KEYS = ("algorithms", "datasets", "seeds", "jobs")


@dataclass
class TrainConfig:
    """One experiment. The defaults train a small DCHN with C-EP on scikit-learn's digits (16x16)."""

    # data
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    verify_checksums: bool = True
    image_size: int = 16  # digits only; the file-based sets have their own size (32x32)
    flip: bool | None = None  # random horizontal flips in training; None: the paper's choice per data set
    crop_padding: int = 0  # random crop after padding by this many pixels; 0 = off
    limit_train: int | None = None  # keep the first N training / test images (quick runs, tests)
    limit_test: int | None = None
    # model
    model: str = "dchn"
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    hidden: list[int] = field(default_factory=lambda: [256])
    gains: list[float] = field(default_factory=lambda: [0.8, 0.8, 0.8, 0.8])
    activation: str = "hard_sigmoid"
    pool_every: int = 1  # model=pcn: a 2x2 max-pool after every n-th conv prediction
    skip: bool = False  # model=pcn: conv predictions with a residual path (the skip variant)
    blocks: list[list[int]] = field(default_factory=lambda: [[64], [128], [256], [512], [512]])  # model=vgg (VGG-7)
    hru: str = "nonlinear"  # model=hssm: the Hamiltonian recurrent unit type; `hidden` lists the unit sizes
    dt: float = 0.1  # model=hssm: leapfrog time step
    # learning algorithm and relaxation
    algorithm: str = "CEP"
    beta: float = 0.1
    cost: str = "squared_error"
    free_iterations: int = 20
    nudged_iterations: int = 8
    schedule: str = "asynchronous"
    first: str = "even"  # asynchronous schedule: which parity of layers is updated first (the paper: even)
    dtype: str = "float32"
    solver: str | None = None  # the relaxation solver; None: the model's default (messages; mod-pgd for pcn)
    nudged_precision: str = "same"  # nudged phases: same (as dtype) | full (float32) | deviation (16-bit on s - s_free)
    refine_iterations: int = 0  # deviation-mode iterations refining a 16-bit free state before the nudged phases
    tol: float | None = None  # stop a phase early once no state unit moves more than this in an iteration
    init: str = "zeros"
    cuda_graphs: bool = False
    channels_last: bool = False
    fused_kernels: bool = False  # torch.compile'd pooling and layer-update kernels on CUDA (set_fused_kernels)
    cudnn_benchmark: bool = True  # on CUDA: cuDNN times its convolution algorithms per shape
    # intermediate learning signals (scalable-EP paper; model=vgg/dchn/mlp with PEP/NEP/CEP)
    signals: str = "none"  # none | le (local error) | kd (knowledge distillation) | kdw (KD with learned maps)
    signal_layers: list[int] | None = None  # None: LE on the block ends of blocks 2.., KD on every block end
    kappa: float = 0.5  # signal strength kappa_init (eq. 9)
    kappa_min: float = 0.0
    kappa_schedule: str = "cosine"  # constant | linear | exponential | cosine (eq. 14)
    kappa_gamma: float = 0.02  # exponential schedule's decay
    tau: float = 4.0  # soft-target temperature
    le_soft_labels: bool = True  # LE target softmax(y/tau) as in eq. 7; false: the one-hot label itself
    teacher: str | None = None  # KD teacher weights (teacher.pt of an earlier run); None: train one first
    teacher_epochs: int = 10
    diagnostics: bool = False  # per-epoch mean activation and gradient norm per layer (Figure 5)
    epsilon: float = 0.01  # RHEL: echo nudging strength, relative to the largest incoming loss gradient
    loss_at: str = "last"  # model=hssm: the loss reads the last step's readout, or the mean over every step
    echo_stack: str = "lockstep"  # RHEL on stacks: all units echo together (memory flat in T) or one after another
    # optimiser and scheduler (Table 5)
    lrs: list[float] = field(default_factory=lambda: [0.1, 0.06, 0.04, 0.02])
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    epochs: int = 20
    batch_size: int = 64
    eta_min: float = 2e-6
    # run
    seed: int = 0
    device: str = "auto"
    out_dir: str | None = None
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _choices() -> dict[str, list[str]]:
    """Valid values of the name keys, read from the registries (models, rules, solvers, data sets, ...)."""
    from ..core.layers import ACTIVATIONS
    from ..core.nudging import COSTS
    from ..core.relaxation import DTYPES, SCHEDULES, SOLVERS
    from ..models.base import model_names
    from ..models.hamiltonian import HRU_TYPES
    from ..rules.base import algorithm_names
    from ..rules.echo_learning import LOSS_AT, STACK_ECHOES
    from ..rules.phases import INITS, NUDGED_PRECISIONS
    from ..rules.signals import KAPPA_SCHEDULES
    from .data import dataset_names

    return {
        "dataset": dataset_names(),
        "model": model_names(),
        "algorithm": algorithm_names(),
        "cost": sorted(COSTS),
        "schedule": list(SCHEDULES),
        "first": ["even", "odd"],
        "dtype": sorted(DTYPES),
        "init": list(INITS),
        "activation": sorted(ACTIVATIONS),
        "hru": sorted(HRU_TYPES),
        "loss_at": list(LOSS_AT),
        "echo_stack": list(STACK_ECHOES),
        "signals": ["none", "le", "kd", "kdw"],
        "kappa_schedule": list(KAPPA_SCHEDULES),
        "nudged_precision": list(NUDGED_PRECISIONS),
        "solver": sorted(SOLVERS),
    }


_POSITIVE = (
    "pool_every",
    "epochs",
    "batch_size",
    "free_iterations",
    "nudged_iterations",
    "image_size",
    "teacher_epochs",
)
_NON_NEGATIVE = (
    "refine_iterations",
    "crop_padding",
    "momentum",
    "weight_decay",
    "eta_min",
    "beta",
    "kappa",
    "kappa_min",
    "kappa_gamma",
)


def validate(cfg: TrainConfig) -> None:
    """Check every value's type and range, and that names are among the registered choices."""
    hints = typing.get_type_hints(TrainConfig)
    for key, typ in hints.items():
        setattr(cfg, key, _check_type(key, getattr(cfg, key), typ))
    for key, valid in _choices().items():
        value = getattr(cfg, key)
        if value is None:  # an optional name key (solver): the default applies
            continue
        match = canonical_name(value, valid)
        if match is None:
            raise ConfigError(f"config key {key!r}: {value!r} is not valid; choose one of {valid}")
        setattr(cfg, key, match)  # canonical spelling: 'C-EP' -> 'CEP', 'CIFAR-10' -> 'cifar10'
    for key in _POSITIVE:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"config key {key!r} must be >= 1, got {getattr(cfg, key)}")
    for key in _NON_NEGATIVE:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {getattr(cfg, key)}")
    if cfg.tol is not None and not cfg.tol > 0:
        raise ConfigError(f"config key 'tol' must be None or > 0, got {cfg.tol}")
    for key in ("limit_train", "limit_test"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise ConfigError(f"config key {key!r} must be None or >= 1, got {getattr(cfg, key)}")
    if any(lr < 0 for lr in cfg.lrs) or any(g <= 0 for g in cfg.gains) or any(c < 1 for c in cfg.channels):
        raise ConfigError(
            f"lrs must be >= 0, gains > 0 and channels >= 1; got lrs={cfg.lrs}, gains={cfg.gains}, "
            f"channels={cfg.channels}"
        )
    from ..models.base import MODELS, model_spec
    from ..rules.base import ALGORITHMS, algorithm_families, algorithm_models

    spec = model_spec(cfg.model)
    if spec.family not in algorithm_families(cfg.algorithm):
        fits = [a for a in ALGORITHMS if spec.family in algorithm_families(a)]
        raise ConfigError(
            f"algorithm {cfg.algorithm!r} does not train model {cfg.model!r} (it trains "
            f"{list(algorithm_models(cfg.algorithm))}); algorithms for model {cfg.model!r}: {fits}"
        )
    if cfg.signals != "none":
        if cfg.algorithm not in ("PEP", "NEP", "CEP"):
            raise ConfigError(
                f"signals={cfg.signals!r} need EP nudging: use algorithm PEP, NEP or CEP, not {cfg.algorithm!r}"
            )
        if cfg.signals in ("kd", "kdw") and not spec.blocks:
            blocky = [m for m, sp in MODELS.items() if sp.blocks]
            raise ConfigError(
                f"signals={cfg.signals!r} distil a conv teacher's block logits: use model={blocky[0]}"
                if len(blocky) == 1
                else f"signals={cfg.signals!r} need a model with blocks: {blocky}"
            )
    if spec.blocks and (not cfg.blocks or any(not b or min(b) < 1 for b in cfg.blocks)):
        raise ConfigError(f"config key 'blocks' must list non-empty lists of conv widths >= 1, got {cfg.blocks}")
    for key in ("dt", "epsilon", "tau"):
        if not getattr(cfg, key) > 0:
            raise ConfigError(f"config key {key!r} must be > 0, got {getattr(cfg, key)}")
    dev = cfg.device
    if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"config key 'device': {dev!r} is not valid; use auto, cpu, cuda, cuda:N or mps")


def _type_name(typ: Any) -> str:
    return getattr(typ, "__name__", str(typ).replace("typing.", ""))


def _check_type(key: str, value: Any, typ: Any) -> Any:
    """Return ``value`` as ``typ`` (ints widen to floats), or raise a ConfigError naming the key."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(key, value, inner[0])
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list of {_type_name(args[0])}, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"config key {key!r}: expected {_type_name(typ)}, got {value!r} ({type(value).__name__})")


def _parse_scalar(raw: str) -> Any:
    """Read a command-line value as YAML (numbers, true/false, null, [lists]); plain words stay strings."""
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def config_from_dict(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A config from a mapping of keys; unknown keys are errors that list the valid ones."""
    valid = TrainConfig.keys()
    unknown = [k for k in values if k not in valid]
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; valid keys are {sorted(valid)}")
    merged = {**(base or TrainConfig()).to_dict(), **dict(values)}
    return TrainConfig(**merged)


def parse_overrides(items: Sequence[str], base: TrainConfig | None = None) -> TrainConfig:
    """Apply ``key=value`` overrides (values read as YAML scalars/lists) to a config."""
    changes: dict[str, Any] = {}
    hints = typing.get_type_hints(TrainConfig)
    for item in items:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if raw.strip().lower() in ("none", "null", "~"):  # null, except for a plain str key (signals=none)
            value = raw.strip() if hints.get(key) is str else None
        else:
            value = _parse_scalar(raw.strip())
        if hints.get(key) in (str, str | None) and value is not None and not isinstance(value, str):
            value = raw.strip()  # e.g. device=0 or dataset=10 stay strings and fail on their choices
        changes[key] = [value] if typing.get_origin(hints.get(key)) is list and not isinstance(value, list) else value
    return config_from_dict(changes, base)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read an experiment YAML (following ``base:`` links); returns the merged mapping, ``study`` included."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config keys, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        parent = read_yaml(path.parent / base)
        study = {**parent.pop("study", {}), **data.pop("study", {})}
        data = {**parent, **data, **({"study": study} if study else {})}
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config of a YAML experiment (or the defaults) with ``key=value`` overrides applied."""
    base = TrainConfig()
    if path is not None:
        data = read_yaml(path)
        study = data.pop("study", None)
        if study is not None and (not isinstance(study, dict) or set(study) - set(STUDY_KEYS)):
            raise ConfigError(f"{path}: the study block takes keys {list(STUDY_KEYS)}, got {study!r}")
        try:
            base = config_from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return parse_overrides(overrides, base)
