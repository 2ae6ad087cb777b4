"""Experiment configs: one typed, validated ``TrainConfig`` per run, read from YAML and ``key=value`` overrides.

A config has seven core sections, each a dataclass validated by the module that owns it:
``data`` (:class:`~eqprop.training.data.DataSection`), ``model`` (:class:`~eqprop.models.base.ModelSection`),
``relax`` (:class:`~eqprop.rules.phases.RelaxSection`), ``rule`` (:class:`~eqprop.rules.base.RuleSection`),
``signals`` (:class:`~eqprop.rules.signals.SignalsSection`), ``optim`` (:class:`~eqprop.training.optim.OptimSection`)
and ``run`` (:class:`RunSection`), then the sections that model families and rules declare in their own files
(``dchn``, ``vgg``, ``pcn``, ``hssm``, ``resistive``, ``hep``, ``echo``, ``rbp``; see
:func:`eqprop.settings.register_section`). A key that moved to its family's section is still read from the
section that held it before (``model: {hru: linear}`` reaches ``hssm.hru``).

A YAML experiment writes the sections as mappings (``relax: {free_iterations: 60}``) or, as every earlier file
and run directory did, as flat keys (``free_iterations: 60``); ``model: NAME`` and ``signals: KIND`` are the flat
spellings of ``model.kind`` and ``signals.kind``. Overrides take either form
(``beta=0.2``, ``rule.beta=0.2``). Flat names also read and write the config's attributes (``cfg.beta``).

``base: other.yaml`` (a path relative to the file) starts from another experiment; a ``study:`` block
(algorithms, datasets, seeds, jobs) is read by ``eqprop study`` only. A wrong key, type or choice is a
``ConfigError`` that names it and lists what is valid.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError, Problems
from ..models.base import MODELS, ModelSection, model_spec
from ..registry import canonical_name
from ..rules.base import ALGORITHMS, RuleSection, algorithm_models, trains
from ..rules.phases import RelaxSection
from ..rules.signals import SignalsSection
from ..settings import SECTION_OWNERS, SECTION_REGISTRY, Section, check_choice, register_section, setting
from .data import DataSection
from .optim import OptimSection

__all__ = [
    "TrainConfig",
    "RunSection",
    "SECTIONS",
    "ConfigError",
    "load_config",
    "parse_overrides",
    "config_from_dict",
    "flat_dict",
    "read_yaml",
    "STUDY_KEYS",
    "INCIDENTAL",
]

STUDY_KEYS = ("algorithms", "datasets", "seeds", "jobs", "settings", "variants")
# settings that do not change what a run computes: a resume may change them, and runs that differ only in these
# (and in out_dir and seed) are the same experiment
INCIDENTAL = (
    "device",
    "progress",
    "tensorboard",
    "data_dir",
    "download",
    "threads",
    "dist_timeout",
    "max_loss",
    "stop_after_epoch",
)


@dataclass
class RunSection(Section):
    """The ``run`` section: seed, device, where the run directory goes, and what it logs."""

    name: ClassVar[str] = "run"
    seed: int = setting(0, "seed of the initialisation, shuffling and augmentation")
    imports: list[str] = setting(
        [], "modules (or .py files) imported before the config is read: your own models, rules, solvers, data sets"
    )
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda, cuda:N or mps")
    out_dir: str | None = setting(
        None, "the run directory; null: runs/<dataset>_<algorithm>_seed<seed>_<time>", path=True
    )
    tensorboard: bool = setting(True, "write TensorBoard logs into the run directory")
    progress: bool = setting(True, "show progress bars")
    diagnostics: bool = setting(False, "per-epoch mean activation and update norm per layer (Figure 5)")
    threads: int | None = setting(
        None, "CPU threads (torch.set_num_threads); null: PyTorch's default (OMP_NUM_THREADS)"
    )
    deterministic: bool = setting(False, "deterministic kernels only (torch.use_deterministic_algorithms)")
    dist_timeout: float = setting(1800.0, "torchrun runs: seconds a collective waits for the other ranks")
    precision: str = setting("float32", "dtype of parameters, inputs and states: float32 or float64 (for checks)")
    stop_after_epoch: int | None = setting(
        None,
        "end this stretch of the run after that epoch, with its checkpoint; the schedule still runs to `epochs`, "
        "and --resume goes on from there",
    )
    max_loss: float | None = setting(
        1e6, "stop as diverged when a batch's mean training loss exceeds this; null: only NaN/inf stop a run"
    )

    def validate(self) -> None:
        self.at_least(1, "threads", "dist_timeout", "stop_after_epoch")
        self.positive("max_loss")
        self.precision = check_choice("precision", self.precision, ["float32", "float64"])
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"config key 'device': {dev!r} is not valid; use auto, cpu, cuda, cuda:N or mps")


CORE_SECTIONS: dict[str, type[Section]] = {
    "data": DataSection,
    "model": ModelSection,
    "relax": RelaxSection,
    "rule": RuleSection,
    "signals": SignalsSection,
    "optim": OptimSection,
    "run": RunSection,
}
# Every section: the seven above, then those that model families, rules and extensions register next to their
# code (eqprop.settings.register_section), in registration order. SECTIONS is that registry itself, so a section
# registered later (a plugin) is part of every config built after it.
_later = dict(SECTION_REGISTRY)
SECTION_REGISTRY.clear()
for _cls in [*CORE_SECTIONS.values(), *_later.values()]:
    register_section(_cls, SECTION_OWNERS.get(_cls.name, ""))
SECTIONS: dict[str, type[Section]] = SECTION_REGISTRY


class _FlatKeys(dict):
    """flat key -> (section, field), rebuilt whenever a section is registered; ``model`` and ``signals`` name the
    sections' ``kind``."""

    _count = -1

    def _fresh(self) -> _FlatKeys:
        if self._count != len(SECTIONS):
            super().clear()
            for section, cls in SECTIONS.items():
                for f in dataclasses.fields(cls):
                    if f.name != "kind":
                        super().__setitem__(f.name, (section, f.name))
            super().update(model=("model", "kind"), signals=("signals", "kind"))
            self._count = len(SECTIONS)
        return self

    def __getitem__(self, key: str) -> tuple[str, str]:
        return dict.__getitem__(self._fresh(), key)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self._fresh(), key)

    def __iter__(self):
        return dict.__iter__(self._fresh())

    def __len__(self) -> int:
        return dict.__len__(self._fresh())

    def items(self):
        return dict.items(self._fresh())

    def keys(self):
        return dict.keys(self._fresh())

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self._fresh(), key, default)


FLAT: dict[str, tuple[str, str]] = _FlatKeys()


@dataclass(init=False)
class TrainConfig:
    """One experiment, in sections. The defaults train a small DCHN with C-EP on scikit-learn's digits (16x16).

    Built from sections (``TrainConfig(relax=RelaxSection(...))``), section mappings or flat keys
    (``TrainConfig(model="mlp", beta=0.2)``). ``cfg.relax.free_iterations`` and the flat ``cfg.free_iterations``
    are the same setting; ``cfg.model`` and ``cfg.signals`` are the sections (``cfg.model.kind``, ...)."""

    data: DataSection
    model: ModelSection
    relax: RelaxSection
    rule: RuleSection
    signals: SignalsSection
    optim: OptimSection
    run: RunSection

    def __init__(self, **settings: Any) -> None:
        given = {k: settings.pop(k) for k in list(settings) if k in SECTIONS and isinstance(settings[k], Section)}
        problems = Problems()  # every unknown key and every section's problems at once, then the checks across
        changes = with_model_defaults(sectioned(settings, problems=problems), given)
        for name, cls in SECTIONS.items():
            with problems.check():
                section = given.get(name) or cls(**changes[name])
                if name in given and changes[name]:
                    section = cls(**{**dataclasses.asdict(section), **changes[name]})
                object.__setattr__(self, name, section)
        problems.raise_any()
        validate(self)

    def __getattr__(self, key: str) -> Any:  # only called for names that are not sections: the flat aliases
        if key in FLAT:
            section, name = FLAT[key]
            return getattr(object.__getattribute__(self, section), name)
        raise AttributeError(f"{type(self).__name__} has no setting {key!r}")

    def __setattr__(self, key: str, value: Any) -> None:
        if key in SECTIONS:
            object.__setattr__(self, key, value)
        elif key in FLAT:
            section, name = FLAT[key]
            setattr(getattr(self, section), name, value)
        else:
            raise AttributeError(f"{type(self).__name__} has no setting {key!r}; valid keys are {sorted(FLAT)}")

    @classmethod
    def keys(cls) -> list[str]:
        """Every setting by its flat name."""
        return list(FLAT)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The sectioned mapping (what config.json and YAML files hold)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name."""
        return {key: getattr(getattr(self, s), n) for key, (s, n) in FLAT.items()}


def with_model_defaults(
    changes: dict[str, dict[str, Any]], given: Mapping[str, Section] | None = None
) -> dict[str, dict[str, Any]]:
    """``changes`` (sectioned) on top of the defaults the chosen model brings (``register_model(defaults=...)``):
    a key the config sets itself always wins. Sections given whole are taken as they are."""
    given = given or {}
    if "model" in given:
        kind = given["model"].kind  # type: ignore[attr-defined]
    else:
        kind = changes.get("model", {}).get("kind", ModelSection.kind)
    canonical = canonical_name(str(kind), MODELS)
    if canonical is None:  # the model section reports the unknown name
        return changes
    defaults = sectioned(model_spec(canonical).defaults, f"model {canonical!r}'s defaults: ")
    return {name: (changes[name] if name in given else {**defaults[name], **changes[name]}) for name in changes}


def validate(cfg: TrainConfig) -> None:
    """What no one section can check: each section's checks against the others (``Section.check_config``), that
    the rule trains the model, and that the signals fit both."""
    problems = Problems()  # every problem at once
    for name in SECTIONS:
        with problems.check():
            getattr(cfg, name).check_config(cfg)
    spec = model_spec(cfg.model.kind)

    def problem(message: str) -> None:
        with problems.check():
            raise ConfigError(message)

    if not trains(cfg.rule.algorithm, cfg.model.kind):
        fits = [a for a in ALGORITHMS if trains(a, cfg.model.kind)]
        problem(
            f"algorithm {cfg.rule.algorithm!r} does not train model {cfg.model.kind!r} (it trains "
            f"{list(algorithm_models(cfg.rule.algorithm))}); algorithms for model {cfg.model.kind!r}: {fits}"
        )
    if cfg.relax.init == "persistent" and not spec.persistent_init:
        able = [m for m, sp in MODELS.items() if sp.persistent_init]
        problem(
            f"config key 'init=persistent' carries a relaxed state between training steps; model "
            f"{cfg.model.kind!r} does not relax its free phase (use one that does: {', '.join(able)})"
        )
    kind = cfg.signals.kind
    if kind != "none" and cfg.run.precision != "float32":
        problem(f"signals={kind!r} run in float32 (the KD teacher and LE readouts); use precision=float32")
    if kind != "none" and cfg.rule.algorithm not in ("PEP", "NEP", "CEP"):
        problem(f"signals={kind!r} need EP nudging: use algorithm PEP, NEP or CEP, not {cfg.rule.algorithm!r}")
    if kind in ("kd", "kdw") and not spec.blocks:
        blocky = [m for m, sp in MODELS.items() if sp.blocks]
        problem(f"signals={kind!r} distil a conv teacher's block logits: use model={' or '.join(blocky)}")
    problems.raise_any()


# keys that no longer exist, with what replaces them
REMOVED = {
    "skip": "config key 'skip' (a residual path around every PCN conv, our pre-paper guess) was removed: declare "
    "the PCN paper's skip connections with skips, e.g. skips: [[2, 5], [5, 8]] for VGG10Skip",
}


def sectioned(
    values: Mapping[str, Any], where: str = "", problems: Problems | None = None
) -> dict[str, dict[str, Any]]:
    """A mapping of flat keys, ``section.key`` keys and section mappings, as {section: {field: value}}. Every
    unknown key is reported at once: raised, or added to ``problems`` (and left out) when given."""
    out: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    found = Problems() if problems is None else problems
    for key, value in values.items():
        with found.check():
            _section_key(out, key, value, where)
    if problems is None:
        found.raise_any()
    return out


def _section_key(out: dict[str, dict[str, Any]], key: str, value: Any, where: str) -> None:
    """Put one key of a mapping (flat, ``section.key`` or a section mapping) into ``out``."""
    name = key.split(".", 1)[-1]
    if name in REMOVED or (key in SECTIONS and isinstance(value, Mapping) and set(value) & set(REMOVED)):
        raise ConfigError(where + REMOVED[name if name in REMOVED else sorted(set(value) & set(REMOVED))[0]])
    if key in SECTIONS and isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(SECTIONS[key])}
        problems = Problems()
        for sub, v in value.items():
            if sub in fields:
                out[key][sub] = v
            elif sub in FLAT and key in SECTIONS[FLAT[sub][0]].moved_from:  # a key that moved to its own section
                out[FLAT[sub][0]][FLAT[sub][1]] = v
            else:
                with problems.check():
                    raise ConfigError(
                        f"{where}unknown key {sub!r} in section {key!r}{_did_you_mean(sub, sorted(fields))}; valid "
                        f"keys are {sorted(fields)}" + _elsewhere(sub)
                    )
        problems.raise_any()
    elif "." in key and key.split(".", 1)[0] in SECTIONS:
        section, sub = key.split(".", 1)
        for name, moved in sectioned({section: {sub: value}}, where).items():
            out[name].update(moved)
    elif key in FLAT:
        section, name = FLAT[key]
        out[section][name] = value
    elif key in SECTIONS:  # a section given a scalar: relax=5
        keys = sorted(f.name for f in dataclasses.fields(SECTIONS[key]))
        raise ConfigError(
            f"{where}{key!r} is a config section, not a key: set one of its keys, {key}.KEY=VALUE (or the flat "
            f"KEY=VALUE; in YAML `{key}: {{KEY: VALUE}}`), got {key}={value!r}; its keys are {keys}"
        )
    else:
        guess = _did_you_mean(key, [*FLAT, *SECTIONS])
        valid = (  # a close match is the likely fix; without one, the whole list
            "`eqprop train --help-config` lists every key"
            if guess
            else f"valid keys are {sorted(FLAT)} (or the sections {list(SECTIONS)})"
        )
        raise ConfigError(f"{where}unknown config key {key!r}{guess}; {valid}")


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    """``; did you mean 'beta'?`` for a misspelt key (the closest known names), else nothing."""
    import difflib

    close = difflib.get_close_matches(key, known, n=3, cutoff=0.75)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _elsewhere(key: str) -> str:
    """Where a key that is not in the section it was written under does live."""
    if key in FLAT:
        section, name = FLAT[key]
        return f"; {key!r} belongs to section {section!r} (write {section}.{name}=... or the flat {key}=...)"
    return ""


def flat_dict(values: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config (sectioned or flat) as flat keys, without validating it (for reading old run directories)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, Mapping):
            out.update({(key if sub == "kind" else sub): v for sub, v in value.items()})
        else:
            out[key] = value
    return out


def _import_named(values: Mapping[str, Any], base: TrainConfig | None) -> None:
    """Import the extension modules a mapping (``imports``, ``run.imports``, ``run: {imports: ...}``) or its base
    names, before its keys and choices are checked: they may register the model, rule or section it uses."""
    from ..registry import import_extensions

    run = values.get("run")
    names = [
        *(base.run.imports if base is not None else []),
        *(values.get("imports") or []),
        *(values.get("run.imports") or []),
        *((run.get("imports") or []) if isinstance(run, Mapping) else []),
    ]
    if isinstance(values.get("imports"), str) or isinstance(values.get("run.imports"), str):
        raise ConfigError("config key 'imports' is a list of module names, e.g. imports=[my_lab.models]")
    import_extensions(names)


def config_from_dict(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A config from a mapping (flat keys, sections or both) applied to ``base`` (default: the defaults, with
    those of the model the mapping names)."""
    _import_named(values, base)
    problems = Problems()  # the unknown keys with the problems of the known ones
    changes = sectioned(values, problems=problems)
    cfg = None
    with problems.check():
        if base is not None:
            current = base.to_dict()
            changes = {name: {**current[name], **changes[name]} for name in SECTIONS}
        cfg = TrainConfig(**changes)
    problems.raise_any()
    assert cfg is not None
    return cfg


def _parse_scalar(raw: str) -> Any:
    """Read a command-line value as YAML (numbers, true/false, null, [lists]); plain words stay strings."""
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _hint(key: str) -> Any:
    """The type of a flat or dotted key (None if unknown: the config reports it)."""
    if "." in key:
        section, name = key.split(".", 1)
    elif key in FLAT:
        section, name = FLAT[key]
    else:
        return None
    cls = SECTIONS.get(section)
    return None if cls is None else typing.get_type_hints(cls).get(name)


def parse_overrides(items: Sequence[str], base: TrainConfig | None = None) -> TrainConfig:
    """Apply ``key=value`` overrides (values read as YAML scalars/lists; keys flat or ``section.key``)."""
    return config_from_dict(override_values(items), base)


def override_values(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` overrides as a mapping of typed values (not yet validated)."""
    changes: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        hint = _hint(key)
        if raw.strip().lower() in ("none", "null", "~"):  # null, except for a plain str key (signals=none)
            value = raw.strip() if hint is str else None
        else:
            value = _parse_scalar(raw.strip())
        if hint in (str, str | None) and value is not None and not isinstance(value, str):
            value = raw.strip()  # e.g. device=0 or dataset=10 stay strings and fail on their choices
        changes[key] = [value] if typing.get_origin(hint) is list and not isinstance(value, list) else value
    return changes


def override_keys(items: Sequence[str]) -> set[str]:
    """The flat config keys that ``key=value`` overrides set (``section.key`` and ``key-name`` forms included)."""
    return {key.split(".")[-1] for key in override_values(items)}


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read an experiment YAML (following ``base:`` links); returns the merged mapping in sections, ``study``
    included."""
    import yaml

    path = Path(path)
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve()))
        raise ConfigError(f"config file {path}: its base: links form a cycle ({chain})")
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give the path of a YAML file (such as {path}/exp.yaml)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text: byte {exc.start} (0x{exc.object[exc.start]:02x}) is not valid "
            "UTF-8; save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config keys, got {type(data).__name__}")
    base = data.pop("base", None)
    study = data.pop("study", None)
    problems = Problems()
    data = sectioned(data, problems=problems)
    if problems:  # the unknown keys, with the problems of the known ones
        with problems.check():
            config_from_dict(data)
        try:
            problems.raise_any()
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}", exc.problems) from None
    if base is not None:
        parent = read_yaml(path.parent / base, (*_seen, path.resolve()))
        study = {**parent.pop("study", {}), **(study or {})} or None
        data = {name: {**parent.get(name, {}), **data[name]} for name in SECTIONS}
    return {**data, **({"study": study} if study is not None else {})}


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config of a YAML experiment (or the defaults) with ``key=value`` overrides applied."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path)
        study = data.pop("study", None)
        if study is not None and (not isinstance(study, dict) or set(study) - set(STUDY_KEYS)):
            raise ConfigError(f"{path}: the study block takes keys {list(STUDY_KEYS)}, got {study!r}")
        try:
            config_from_dict(data)  # the file alone must be valid (its errors name the file)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    # one mapping, so that the model's defaults sit under both the file and the overrides
    problems = Problems()  # the overrides' unknown keys with every other problem
    changes = sectioned(override_values(overrides), problems=problems)
    merged = {name: {**data.get(name, {}), **changes[name]} for name in SECTIONS}
    cfg = None
    with problems.check():
        cfg = config_from_dict(merged)
    problems.raise_any()
    assert cfg is not None
    return cfg
