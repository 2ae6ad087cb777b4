"""Command line: ``eqprop train [key=value ...]`` trains the experiment the overrides describe.

With no arguments it trains a small DCHN with C-EP on scikit-learn's bundled digits and prints per-epoch
train/test error. ``eqprop train --help-config`` lists every key, its type and default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import Any, Sequence

from .train import DivergenceError, TrainConfig, Trainer

__all__ = ["main", "parse_overrides"]


def _coerce(key: str, raw: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if raw.lower() in ("none", "null"):
            return None
        typ = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(typ), typing.get_args(typ)
    try:
        if origin is list:
            value = json.loads(raw)
            value = value if isinstance(value, list) else [value]
            return [args[0](v) for v in value]
        if typ is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        return typ(raw)
    except (ValueError, TypeError, json.JSONDecodeError):
        name = getattr(typ, "__name__", str(typ))
        raise ValueError(f"config key {key!r}: cannot read {raw!r} as {name}") from None


def parse_overrides(items: Sequence[str], base: TrainConfig | None = None) -> TrainConfig:
    """Apply ``key=value`` overrides to a config; unknown keys and bad values are errors naming them."""
    cfg = base or TrainConfig()
    types = typing.get_type_hints(TrainConfig)
    changes: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in types:
            raise ValueError(f"unknown config key {key!r}; valid keys are {sorted(types)}")
        changes[key] = _coerce(key, raw.strip(), types[key])
    return dataclasses.replace(cfg, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eqprop", description="Energy-based learning with equilibrium propagation")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model (default: small DCHN, C-EP, digits)")
    train.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. algorithm=NEP epochs=3")
    train.add_argument("--help-config", action="store_true", help="list the config keys and their defaults")
    args = parser.parse_args(argv)

    if args.command == "train":
        if args.help_config:
            for f in dataclasses.fields(TrainConfig):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                print(f"{f.name:20s} {str(f.type):24s} {default!r}")
            return 0
        try:
            cfg = parse_overrides(args.overrides)
            Trainer(cfg).fit()
        except (ValueError, FileNotFoundError) as exc:
            print(f"eqprop: error: {exc}", file=sys.stderr)
            return 2
        except DivergenceError as exc:
            print(f"eqprop: {exc}", file=sys.stderr)
            return 3
        except KeyboardInterrupt:
            print("eqprop: interrupted; the last epoch's checkpoint is kept", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
