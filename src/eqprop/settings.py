"""Typed, validated config sections: the base class each owner module's section derives from.

A section is a dataclass whose fields carry a one-line description (``setting(default, "doc")``). Values are
checked against the field types (ints widen to floats, numbers must be finite; ``~`` and ``$VARS`` are expanded in
path keys, declared with ``setting(..., path=True)``) when the section is built, and
then by the section's own :meth:`Section.validate`, written in the module that owns the setting (the data sets,
the model registry, the relaxation phases, the rule registry, the signals, the optimiser).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import ConfigError, Problems
from .registry import canonical_name

__all__ = [
    "Section",
    "setting",
    "check_type",
    "check_choice",
    "type_name",
    "expand_path",
    "SECTION_REGISTRY",
    "register_section",
]


def setting(default: Any, doc: str, path: bool = False) -> Any:
    """A section field with its default and a one-line description (shown by ``--help-config``); ``path``: a file
    or folder, in which ``~`` and environment variables are expanded."""
    metadata = {"doc": doc, "path": path}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def expand_path(key: str, value: str) -> str:
    """``~`` and ``$VAR``/``${VAR}`` expanded; an unset variable is a ConfigError naming the key."""
    unset = [m for m in re.findall(r"\$\{?(\w+)\}?", value) if m not in os.environ]
    if unset:
        raise ConfigError(f"config key {key!r}: {value!r} uses the environment variable {unset[0]}, which is not set")
    return os.path.expandvars(os.path.expanduser(value))


def type_name(typ: Any) -> str:
    """A readable type: int, float, str or null, list of int, ..."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    return getattr(typ, "__name__", str(typ))


def check_type(key: str, value: Any, typ: Any) -> Any:
    """Return ``value`` as ``typ`` (ints widen to floats), or raise a ConfigError naming the key."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return check_type(key, value, inner[0])
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list of {type_name(args[0])}, got {value!r}")
        return [check_type(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if typ is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"config key {key!r}: expected a finite number, got {value!r}")
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"config key {key!r}: expected {type_name(typ)}, got {value!r} ({type(value).__name__})")


def check_choice(key: str, value: str, valid: list[str]) -> str:
    """The canonical spelling of ``value`` among ``valid`` ("C-EP" -> "CEP"), or a ConfigError listing them."""
    match = canonical_name(value, valid)
    if match is None:
        raise ConfigError(f"config key {key!r}: {value!r} is not valid; choose one of {valid}")
    return match


@dataclass
class Section:
    """A config section; subclasses declare fields with :func:`setting` and override :meth:`validate`."""

    name: ClassVar[str] = "section"
    # sections whose YAML mapping held these keys before they moved here: ``model: {hru: ...}`` in an older config
    # or run directory still reaches the ``hssm`` section
    moved_from: ClassVar[tuple[str, ...]] = ()
    # for a learning rule's section: field -> the keyword the rule's factory takes it as (what the Trainer passes
    # to a rule whose registration lists that keyword in ``options``)
    options: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        problems = Problems()  # every problem at once: a mistyped key is reported and its default is range-checked
        for f in dataclasses.fields(self):
            try:
                value = check_type(f.name, getattr(self, f.name), hints[f.name])
                if f.metadata.get("path") and isinstance(value, str):
                    value = expand_path(f.name, value)
            except ConfigError as exc:
                problems.found.extend(exc.problems)
                value = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            setattr(self, f.name, value)
        with problems.check():
            self.validate()
        problems.raise_any()

    def validate(self) -> None:
        """Check ranges and choices (the owner module's rules); raise ConfigError naming the key."""

    def check_config(self, cfg: Any) -> None:
        """Checks that need the other sections (``cfg``: the whole config, every section built and validated)."""

    def at_least(self, minimum: float, *keys: str) -> None:
        """Each of ``keys`` (None allowed) is >= ``minimum`` (every key that is not is named)."""
        problems = Problems()
        for key in keys:
            value = getattr(self, key)
            if value is not None and value < minimum:
                with problems.check():
                    raise ConfigError(f"config key {key!r} must be >= {minimum:g}, got {value}")
        problems.raise_any()

    def positive(self, *keys: str) -> None:
        """Each of ``keys`` is > 0 (or null, where its type allows null)."""
        hints = typing.get_type_hints(type(self))
        problems = Problems()
        for key in keys:
            value = getattr(self, key)
            if value is not None and not value > 0:
                optional = type(None) in typing.get_args(hints[key])
                with problems.check():
                    raise ConfigError(f"config key {key!r} must be > 0{' or null' if optional else ''}, got {value}")
        problems.raise_any()

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """(key, type, default, description) of every field."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            rows.append((f.name, type_name(hints[f.name]), default, f.metadata.get("doc", "")))
        return rows


# Sections that model families, rules or extensions declare next to their code (``register_section``); the
# config (:mod:`eqprop.training.config`) lists them after its own seven, by ``name``.
SECTION_REGISTRY: dict[str, type[Section]] = {}
SECTION_OWNERS: dict[str, str] = {}  # section name -> who reads it (e.g. "model family resistive")


def register_section(cls: type[Section], owner: str = "") -> type[Section]:
    """Add a config section (``cls.name``: its YAML mapping and ``section.key`` prefix; its fields are also flat
    keys) owned by a model family, rule or extension; ``owner`` is shown by ``--help-config``. A field name that
    another section already uses is refused (flat keys must stay unambiguous)."""
    taken = {f.name: name for name, c in SECTION_REGISTRY.items() if name != cls.name for f in dataclasses.fields(c)}
    clash = sorted({f.name for f in dataclasses.fields(cls)} & set(taken) - {"kind"})  # ``kind``: the section's own
    if clash:
        raise ValueError(f"section {cls.name!r}: key(s) {clash} already belong to section {taken[clash[0]]!r}")
    SECTION_REGISTRY[cls.name] = cls
    SECTION_OWNERS[cls.name] = owner
    return cls
