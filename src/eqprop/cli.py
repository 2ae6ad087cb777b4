"""Command line: ``eqprop train | eval | plot | table | study``.

``eqprop train`` with no arguments trains a small DCHN with C-EP on scikit-learn's bundled digits.
``eqprop train CONFIG.yaml key=value ...`` runs an experiment file with overrides; ``--resume RUN_DIR``
continues a stopped run; ``--help-config`` lists every key, its type and default. Exit codes: 0 done,
2 bad input (a :class:`~eqprop.errors.ConfigError`, :class:`~eqprop.errors.DataError` or a missing file; any other
exception is a bug and surfaces with its traceback), 3 diverged, 130 interrupted (SIGINT), 143 terminated (SIGTERM);
both leave a checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import ConfigError, DataError
from .training.config import load_config

__all__ = ["main"]


def _split_config(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """The optional leading CONFIG file and the key=value overrides."""
    items = list(items)
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _data_dir(args: argparse.Namespace) -> list[str]:
    return [f"data_dir={args.data_dir}"] if getattr(args, "data_dir", None) else []


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.trainer import Trainer

    if args.help_config:
        from .training.config import SECTIONS

        print("Config keys by section (YAML: `section: {key: value}` or flat `key: value`; overrides: key=value)")
        for name, section in SECTIONS.items():
            print(f"\n{name}:")
            for key, typ, default, doc in section.describe():
                shown = {"model": "model", "signals": "signals"}.get(name) if key == "kind" else key
                print(f"  {shown:18s} {typ:22s} default {default!r:24s} {doc}")
        return 0
    config, overrides = _split_config(args.items)
    overrides += _data_dir(args)
    if args.resume:
        if config is not None:
            raise ConfigError(
                "--resume takes the run's own config; give only key=value overrides "
                f"(such as device=cpu), not {config!r}"
            )
        trainer = Trainer.resume(args.resume, overrides)
    else:
        cfg = load_config(config, overrides)
        if cfg.out_dir is None:
            cfg.out_dir = str(
                Path("runs") / f"{cfg.dataset}_{cfg.algorithm}_seed{cfg.seed}_{time.strftime('%Y%m%d-%H%M%S')}"
            )
        trainer = Trainer(cfg)
    trainer.fit()
    if trainer.out:
        print(f"eqprop: run directory {trainer.out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .training.trainer import evaluate, load_run

    trainer, state = load_run(args.run_dir, args.checkpoint, [*args.overrides, *_data_dir(args)])
    res = evaluate(trainer.network, trainer.algorithm, trainer.data, trainer.device, flatten=trainer.flatten)
    print(
        f"{args.run_dir} ({args.checkpoint} checkpoint, epoch {state['epoch']}): test error "
        f"{100 * res['error']:.2f}%  top-5 {100 * res['top5_error']:.2f}%  test loss {res['loss']:.4f}  "
        f"({len(trainer.data.test_labels)} images)"
    )
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .training.results import plot_runs

    print(f"eqprop: wrote {plot_runs(args.run_dirs, args.output)}")
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from .training.results import results_table

    table = results_table(args.run_dirs, metric=args.metric)
    if args.output:
        Path(args.output).write_text(table + "\n")
    print(table)
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from .training.study import run_study

    runs = run_study(
        args.config,
        args.out,
        args.algorithms,
        args.datasets,
        args.seeds,
        args.jobs,
        [*args.overrides, *_data_dir(args)],
    )
    failed = [r for r in runs if r.returncode != 0]
    if failed:
        print(
            f"eqprop study: {len(failed)} of {len(runs)} runs failed: {[r.out_dir.name for r in failed]} "
            "(see stdout.log in each)",
            file=sys.stderr,
        )
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eqprop", description="Energy-based learning with equilibrium propagation")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (default: small DCHN, C-EP, digits)")
    p.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] key=value",
        help="an experiment YAML file, then overrides such as algorithm=NEP epochs=3",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--help-config", action="store_true", help="list the config keys, their types and defaults")
    p.add_argument("--data-dir", help="the folder holding the data set's files (same as data_dir=...)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="re-measure a run's test error from a checkpoint")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. data_dir=... or device=cpu")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--data-dir", help="the folder holding the data set's files (same as data_dir=...)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("plot", help="PNG learning curves of one or more runs")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("-o", "--output", default="curves.png")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("table", help="Markdown table (rows: algorithms, columns: data sets; mean ± std over seeds)")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--metric", choices=["final", "best"], default="final")
    p.add_argument("-o", "--output", help="also write the table to this file")
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser("study", help="run a grid of algorithms x data sets x seeds, then tabulate and plot it")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    p.add_argument("--algorithms", nargs="+")
    p.add_argument("--datasets", nargs="+")
    p.add_argument("--seeds", nargs="+", type=int)
    p.add_argument("--jobs", type=int, help="runs at once, each its own process (default: the config's, or 1)")
    p.add_argument("--out", default="runs/study", help="the study directory (default: runs/study)")
    p.add_argument("--data-dir", help="the folder holding the data set's files (same as data_dir=...)")
    p.set_defaults(func=_cmd_study)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .training.trainer import DivergenceError, Interrupted

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError) as exc:  # bad input; anything else is a bug: traceback
        print(f"eqprop: error: {exc}", file=sys.stderr)
        return 2
    except DivergenceError as exc:
        print(f"eqprop: {exc}", file=sys.stderr)
        return 3
    except Interrupted as exc:
        print(f"eqprop: {exc}", file=sys.stderr)
        return 143 if exc.signame == "SIGTERM" else 130
    except KeyboardInterrupt:
        print("eqprop: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
