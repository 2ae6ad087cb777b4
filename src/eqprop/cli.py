"""Command line: ``eqprop train | eval | plot | table | study``.

``eqprop train`` with no arguments trains a small DCHN with C-EP on scikit-learn's bundled digits.
``eqprop train CONFIG.yaml key=value ...`` runs an experiment file with overrides (before or after the options);
``--resume RUN_DIR`` continues a stopped run, ``--extend RUN_DIR epochs=N`` trains a finished one further as a new
run; ``--help-config`` lists every key, its type and default. Exit codes: 0 done, 2 bad input (a
:class:`~eqprop.errors.ConfigError`, :class:`~eqprop.errors.DataError`, :class:`~eqprop.errors.RunError` or a missing
file; any other exception is a bug and surfaces with its traceback), 3 diverged, 130 interrupted (SIGINT),
143 terminated (SIGTERM); both leave a checkpoint. Torch is imported only by the commands that need it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .errors import ConfigError, DataError, RunError

__all__ = ["main"]


def _split_config(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """The optional leading CONFIG file and the key=value overrides."""
    items = list(items)
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _data_dir(args: argparse.Namespace) -> list[str]:
    return [f"data_dir={args.data_dir}"] if getattr(args, "data_dir", None) else []


def _writing(path: str | Path, default_name: str) -> Path:
    """``path`` (``~`` expanded; an existing directory, or one written with a trailing ``/``, gets
    ``default_name`` inside it) after checking that its folder can be written (a RunError saying so if not)."""
    given = str(path)
    path = Path(path).expanduser()
    if path.is_dir() or given.endswith(("/", os.sep)):
        path = path / default_name
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create {folder} for {path.name} ({exc.strerror}); choose a writable -o path") from None
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise RunError(f"cannot write {path} (permission denied); choose a writable -o path")
    return path


def _stop_with_launcher() -> None:
    """A run launched by ``eqprop study`` gets SIGTERM (so it checkpoints and stops) when the study process dies,
    even by SIGKILL, instead of training on as an orphan that holds its run directory (Linux; elsewhere a no-op)."""
    from .training.run_directory import PARENT_PID_VAR

    parent = os.environ.pop(PARENT_PID_VAR, None)  # not inherited further
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # the launcher died before the request was in place
        raise RunError(f"the eqprop study process {parent} that launched this run has exited; not starting it")


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.config import load_config
    from .training.trainer import Trainer

    _stop_with_launcher()

    if args.help_config:
        from .models.base import MODELS
        from .settings import SECTION_OWNERS
        from .training.config import SECTIONS

        print("Config keys by section (YAML: `section: {key: value}` or flat `key: value`; overrides: key=value)")
        for name, section in SECTIONS.items():
            owner = SECTION_OWNERS.get(name)
            print(f"\n{name}:" + (f"  (read by {owner})" if owner else ""))
            for key, typ, default, doc in section.describe():
                shown = {"model": "model", "signals": "signals"}.get(name) if key == "kind" else key
                print(f"  {shown:18s} {typ:22s} default {default!r:24s} {doc}")
        print("\nDefaults a model brings (they apply where the config does not set the key):")
        for model, spec in MODELS.items():
            if spec.defaults:
                print(f"  model={model}: " + ", ".join(f"{k}={v}" for k, v in spec.defaults.items()))
        return 0
    config, overrides = _split_config(args.items)
    overrides += _data_dir(args)
    if args.until is not None:
        overrides.append(f"stop_after_epoch={args.until}")
    mode = "overwrite" if args.overwrite else "new"
    if args.resume and args.extend:
        raise ConfigError("give --resume RUN_DIR (continue a stopped run) or --extend RUN_DIR (train more), not both")
    if (args.resume or args.extend) and config is not None:
        raise ConfigError(
            f"--{'resume' if args.resume else 'extend'} takes the run's own config; give only key=value overrides "
            f"(such as device=cpu), not {config!r}"
        )
    if args.checkpoint != "last" and not args.resume:
        raise ConfigError("--checkpoint chooses the checkpoint that --resume continues from; it needs --resume")
    if args.resume:
        if args.overwrite:
            raise ConfigError("--overwrite starts a run afresh; it cannot go with --resume")
        trainer = Trainer.resume(Path(args.resume).expanduser(), overrides, checkpoint=args.checkpoint)
    elif args.extend:
        trainer = Trainer.extend(Path(args.extend).expanduser(), overrides, run_mode=mode)
    else:
        cfg = load_config(config, overrides)
        claimed: Path | None = None
        if cfg.out_dir is None:
            from .training import distributed

            ctx = distributed.setup(cfg.device, cfg.dist_timeout)
            stem = Path("runs") / f"{cfg.dataset}_{cfg.algorithm}_seed{cfg.seed}_{time.strftime('%Y%m%d-%H%M%S')}"
            # under torchrun every rank must name the same directory: rank 0's name
            claimed = _claim(stem) if ctx.main else None
            cfg.out_dir = distributed.broadcast_object(None if claimed is None else str(claimed), ctx)
        try:
            trainer = Trainer(cfg, run_mode=mode)
        except BaseException:
            if claimed is not None:  # a run that never started leaves no empty directory behind
                with contextlib.suppress(OSError):
                    claimed.rmdir()
            raise
    trainer.fit()
    trainer.close()
    return 0


def _claim(stem: Path) -> Path:
    """A new directory named ``stem`` (``stem-2``, ``stem-3``, ... when taken), made here: creating it is atomic, so
    two runs started in the same second in the same folder get distinct directories."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out, n = stem, 1
    while True:
        try:
            out.mkdir()
            return out
        except FileExistsError:
            n += 1
            out = stem.with_name(f"{stem.name}-{n}")


def _cmd_eval(args: argparse.Namespace) -> int:
    from .training.config import override_keys
    from .training.trainer import evaluate, load_run

    if args.split == "val":  # the split the run held out; another fraction or seed would mix in its training images
        moved = sorted(override_keys(args.overrides) & {"validation", "seed"})
        if moved:
            raise ConfigError(
                f"--split val measures the validation split the run held out; {moved} would move it onto images "
                "the run trained on: leave them out"
            )
    trainer, state = load_run(Path(args.run_dir).expanduser(), args.checkpoint, [*args.overrides, *_data_dir(args)])
    if args.split == "val" and trainer.data.val_images is None:
        trainer.close()
        raise ConfigError(
            f"{args.run_dir} held out no validation split (validation=0): --split val needs a run trained with one; "
            "use --split test or train"
        )
    res = evaluate(
        trainer.network,
        trainer.algorithm,
        trainer.data,
        trainer.device,
        flatten=trainer.flatten,
        split=args.split,
        dtype=trainer.dtype,
    )
    what = {"test": "test", "val": "validation", "train": "training"}[args.split]
    print(
        f"{args.run_dir} ({args.checkpoint} checkpoint, epoch {state['epoch']}): {what} error "
        f"{100 * res['error']:.2f}%  top-5 {100 * res['top5_error']:.2f}%  {what} loss {res['loss']:.4f}  "
        f"({len(trainer.data.split(args.split)[1])} images)"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .training.saved import export_model

    written = export_model(args.run_dir, args.output, args.checkpoint)
    print(f"eqprop: wrote {written} (load it with eqprop.load_model({str(written)!r}))")
    return 0


def _cmd_spice_export(args: argparse.Namespace) -> int:
    from .models.spice import IDEAL_DIODE, SMALL_SIGNAL_DIODE, netlist
    from .training.trainer import load_run

    trainer, state = load_run(Path(args.run_dir).expanduser(), args.checkpoint, _data_dir(args))
    images = trainer.data.normalized("test", flatten=trainer.flatten).tensors[0]
    if not 0 <= args.sample < len(images):
        raise ConfigError(
            f"--sample {args.sample} is out of range: the test set has {len(images)} images (0..{len(images) - 1})"
        )
    diode = {"ideal": IDEAL_DIODE, "1n4148": SMALL_SIGNAL_DIODE}[args.diode]
    network = trainer.network.double()
    title = f"{args.run_dir} ({args.checkpoint} checkpoint, epoch {state['epoch']}), test sample {args.sample}"
    text = netlist(network, images[args.sample].double(), diode=diode, title=title)
    output = _writing(args.output, f"sample{args.sample}.cir")
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(output)  # whole or not at all
    print(
        f"eqprop: wrote {output} (label {int(trainer.data.test_labels[args.sample])}; run it with ngspice -b {output})"
    )
    return 0


def _cmd_spice_check(args: argparse.Namespace) -> int:
    from .models.spice import IDEAL_DIODE, SMALL_SIGNAL_DIODE, check_against_ngspice
    from .training.trainer import load_run

    if args.samples < 1 or args.jobs < 1:
        raise ConfigError(f"--samples and --jobs must be >= 1, got {args.samples} and {args.jobs}")
    trainer, state = load_run(Path(args.run_dir).expanduser(), args.checkpoint, _data_dir(args))
    images = trainer.data.normalized("test", flatten=trainer.flatten).tensors[0][: args.samples]
    labels = trainer.data.test_labels[: args.samples]
    diodes = {"ideal": IDEAL_DIODE, "1n4148": SMALL_SIGNAL_DIODE}
    chosen = diodes if args.diode == "both" else {args.diode: diodes[args.diode]}
    check = check_against_ngspice(trainer.network, images, labels, chosen, jobs=args.jobs, keep_dir=Path.cwd())
    print(f"{args.run_dir} ({args.checkpoint} checkpoint, epoch {state['epoch']}):")
    for line in check.summary():
        print("  " + line)
    return 0


def _cmd_robustness(args: argparse.Namespace) -> int:
    from .training.robustness import device_robustness, plot_robustness
    from .training.trainer import load_run

    if args.draws < 1 or any(b < 1 for b in args.bits) or any(s < 0 for s in [*args.sigmas, *args.read_noise]):
        raise ConfigError("--draws and --bits must be >= 1 and the sigmas >= 0")
    if any(v < 0 for v in args.forward_voltage):
        raise ConfigError("--forward-voltage values must be >= 0 volts")
    output = _writing(args.output, "robustness.png")
    trainer, state = load_run(Path(args.run_dir).expanduser(), args.checkpoint, _data_dir(args))
    result = device_robustness(
        trainer, args.bits, [s / 100 for s in args.sigmas], args.forward_voltage, args.read_noise, args.draws
    )
    title = f"{args.run_dir} ({args.checkpoint} checkpoint, epoch {state['epoch']})"
    print(f"eqprop: wrote {plot_robustness(result, output, title)} and {output.with_suffix('.json')}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .training.results import plot_runs

    labels = args.label or None
    if args.names:
        if labels:
            raise ConfigError("give either --names or --label, not both")
        labels = [Path(d).resolve().name for d in args.run_dirs]
    written = plot_runs(args.run_dirs, _writing(args.output, "curves.png"), mean_over_seeds=args.mean, labels=labels)
    print(f"eqprop: wrote {written}")
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from .training.results import results_table

    output = _writing(args.output, "table.md") if args.output else None
    table = results_table(args.run_dirs, metric=args.metric, split=args.split)
    if output is not None:
        output.write_text(table + "\n")
    print(table)
    if output is not None:
        print(f"eqprop: wrote {output}", file=sys.stderr)
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from .training.study import run_study, study_status

    if args.status:
        rows = study_status(
            args.config, args.out, args.algorithms, args.datasets, args.seeds, [*args.overrides, *_data_dir(args)]
        )
        print("| run | state | epochs | last error |\n|---|---|---|---|")
        for r in rows:
            error = "-"
            if r["test_error"] is not None:
                error = f"{100 * r['test_error']:.2f}% (test)"
            elif r.get("val_error") is not None:  # a study on the validation split
                error = f"{100 * r['val_error']:.2f}% (validation)"
            print(f"| {r['run']} | {r['state']} | {r['epochs']} / {r['of']} | {error} |")
        counts = Counter(r["state"] for r in rows)
        print(f"{len(rows)} runs in {args.out}: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
        return 0
    runs = run_study(
        args.config,
        args.out,
        args.algorithms,
        args.datasets,
        args.seeds,
        args.jobs,
        [*args.overrides, *_data_dir(args)],
        overwrite=args.overwrite,
        storage=args.storage,
        study_name=args.study_name,
    )
    failed = [r for r in runs if r.returncode not in (0, None)]  # None: taken by another worker, still running
    if failed:
        print(
            f"eqprop study: {len(failed)} of {len(runs)} runs failed: {[r.out_dir.name for r in failed]} "
            "(see stdout.log in each)",
            file=sys.stderr,
        )
        return 1
    return 0


def _cell(value: object) -> str:
    """A parameter value in a table cell: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else "-" if value is None else str(value)


def _cmd_tune(args: argparse.Namespace) -> int:
    from .training.tune import param_importances, plot_trials, run_tune, tune_status, write_best_config

    if args.status:
        rows = tune_status(args.config, args.out, args.storage, args.study_name)
        keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
        print("| trial | state | " + " | ".join(keys) + " | objective | epochs |")
        print("|---" * (len(keys) + 4) + "|")
        finished = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
        best = min(finished, key=lambda r: r["value"])["trial"] if finished else None
        for r in rows:
            name = str(r["trial"]) + (" (baseline)" if r["baseline"] else "")
            name += f" (retry of {r['retry_of']})" if r["retry_of"] is not None else ""
            name += " **best**" if r["trial"] == best else ""
            values = [_cell(r["params"].get(k)) for k in keys]
            value = "-" if r["value"] is None else f"{100 * r['value']:.2f}%"
            print(f"| {name} | {r['state']} | " + " | ".join(values) + f" | {value} | {r['epochs']} |")
        counts = Counter(r["state"] for r in rows)
        print(f"{len(rows)} trials: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
        importances = param_importances(args.config, args.out, args.storage, args.study_name)
        if importances:
            shares = ", ".join(f"{k} {v:.2f}" for k, v in importances.items())
            print(f"importance (fANOVA over the {len(finished)} finished trials; rough with few): {shares}")
        if args.plot is not None and finished:
            print(f"wrote {plot_trials(args.config, args.out, args.plot, args.storage, args.study_name)}")
        return 0
    if args.plot is not None:
        print("eqprop tune: --plot goes with --status (it draws the study's finished trials)", file=sys.stderr)
        return 2
    if args.best_config is not None:
        path = write_best_config(
            args.config, args.out, args.best_config, args.storage, args.study_name, trial=args.trial
        )
        print(f"eqprop tune: wrote {path}")
        return 0
    if args.trial is not None:
        print("eqprop tune: --trial picks the trial of --best-config", file=sys.stderr)
        return 2
    if args.space is None or args.trials is None:
        print(
            "eqprop tune: --space and --trials are needed to search (only --status and --best-config go without)",
            file=sys.stderr,
        )
        return 2
    run_tune(
        args.config,
        args.space,
        args.trials,
        args.out,
        storage=args.storage,
        study_name=args.study_name,
        pruner=args.pruner,
        sampler_seed=args.seed,
        overrides=[*args.overrides, *_data_dir(args)],
        heartbeat=args.heartbeat or None,
        baseline=args.baseline,
        startup_trials=args.startup_trials,
        prune_every=args.prune_every,
    )
    return 0


def version_line() -> str:
    """``eqprop X (torch Y, torchvision Z, Python W)``, read from the packages' metadata (torch is not imported)."""
    from importlib import metadata

    from . import __version__

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    python = ".".join(map(str, sys.version_info[:3]))
    return f"eqprop {__version__} (torch {installed('torch')}, torchvision {installed('torchvision')}, Python {python})"


def _add_import_option(p: argparse.ArgumentParser) -> None:
    """``--import MODULE`` (repeatable), on every command that reads a config."""
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module (or .py file) that registers your models, rules or data sets (config key imports)",
    )


def _output_options() -> argparse.ArgumentParser:
    """``-q/--quiet`` and ``-v/--verbose``, on every command: the level of eqprop's log (:mod:`eqprop.logs`)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", dest="verbosity", action="store_const", const="WARNING", help="print only warnings and errors"
    )
    group.add_argument(
        "-v", "--verbose", dest="verbosity", action="store_const", const="DEBUG", help="also print debugging details"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eqprop", description="Energy-based learning with equilibrium propagation")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    common = _output_options()

    p = sub.add_parser("train", parents=[common], help="train a model (default: small DCHN, C-EP, digits)")
    p.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] key=value",
        help="an experiment YAML file, then overrides such as algorithm=NEP epochs=3",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument(
        "--checkpoint",
        choices=["last", "best"],
        default="last",
        help="with --resume: the checkpoint to continue from (best: when the last one is damaged)",
    )
    p.add_argument(
        "--extend",
        metavar="RUN_DIR",
        help="train the finished run in RUN_DIR for more epochs (epochs=N) as a new run from its last checkpoint",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="delete the earlier run in out_dir first (default: refuse to reuse it)"
    )
    p.add_argument(
        "--until",
        type=int,
        metavar="N",
        help="end this stretch after epoch N with its checkpoint (stop_after_epoch=N; the schedule still runs to "
        "epochs, and --resume goes on)",
    )
    p.add_argument("--help-config", action="store_true", help="list the config keys, their types and defaults")
    p.add_argument("--data-dir", help="the folder holding the data set's files (same as data_dir=...)")
    _add_import_option(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", parents=[common], help="re-measure a run's test error from a checkpoint")
    p.add_argument("run_dir")
    p.add_argument(
        "overrides", nargs="*", help="key=value, e.g. data_dir=... or device=cpu, or eval_iterations=16 (inference)"
    )
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument(
        "--split",
        choices=["test", "val", "train"],
        default="test",
        help="the split to measure: val is the run's own held-out split (an inference-time setting such as "
        "eval_iterations measured without reading the test set)",
    )
    p.add_argument("--data-dir", help="the folder holding the data set's files (same as data_dir=...)")
    _add_import_option(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "export",
        parents=[common],
        help="write a run's trained weights and config to one file (torch.load weights_only, or safetensors)",
    )
    p.add_argument("run_dir")
    p.add_argument("-o", "--output", required=True, help="FILE.pt or FILE.safetensors (a directory: RUN_NAME.pt in it)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("spice", parents=[common], help="deep resistive networks as SPICE circuits (ngspice)")
    spice = p.add_subparsers(dest="spice_command", required=True)
    q = spice.add_parser(
        "export", parents=[common], help="a trained DRN and one test image as a SPICE netlist, eqprop's outputs inside"
    )
    q.add_argument("run_dir")
    q.add_argument("--sample", type=int, default=0, help="the test-set image that drives the circuit (default 0)")
    q.add_argument("-o", "--output", required=True, help="FILE.cir (a directory: sampleN.cir in it)")
    q.add_argument("--checkpoint", choices=["best", "last"], default="best")
    q.add_argument(
        "--diode",
        choices=["ideal", "1n4148"],
        default="ideal",
        help="the diode model: near-ideal (IS 1e-14 A, N 1e-4) or a 1N4148-like silicon diode",
    )
    q.add_argument("--data-dir", help="the folder holding the data set's files (same as data_dir=...)")
    q.set_defaults(func=_cmd_spice_export)
    q = spice.add_parser(
        "check", parents=[common], help="test images of a trained DRN through eqprop and ngspice, side by side"
    )
    q.add_argument("run_dir")
    q.add_argument("--samples", type=int, default=100, help="the first N test images (default 100)")
    q.add_argument("--diode", choices=["ideal", "1n4148", "both"], default="both")
    q.add_argument("--jobs", type=int, default=1, help="ngspice processes at once (default 1)")
    q.add_argument("--checkpoint", choices=["best", "last"], default="best")
    q.add_argument("--data-dir", help="the folder holding the data set's files (same as data_dir=...)")
    q.set_defaults(func=_cmd_spice_check)

    p = sub.add_parser(
        "robustness", parents=[common], help="a trained DRN's test error under device non-idealities, with curves"
    )
    p.add_argument("run_dir")
    p.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4, 2], help="conductance levels 2^bits")
    p.add_argument("--sigmas", type=float, nargs="+", default=[1, 5, 10, 20], help="device variation, percent")
    p.add_argument("--forward-voltage", type=float, nargs="+", default=[0.05, 0.1, 0.3], help="diode V_F, volts")
    p.add_argument("--read-noise", type=float, nargs="+", default=[0.01, 0.05, 0.1], help="output read noise, volts")
    p.add_argument("--draws", type=int, default=5, help="random draws per variation and read-noise level")
    p.add_argument("-o", "--output", default="robustness.png", help="the PNG (its numbers go to the same name .json)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--data-dir", help="the folder holding the data set's files (same as data_dir=...)")
    p.set_defaults(func=_cmd_robustness)

    p = sub.add_parser("plot", parents=[common], help="PNG learning curves of one or more runs")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("-o", "--output", default="curves.png")
    p.add_argument(
        "--mean",
        action="store_true",
        help="one colour per setting: the mean over its seeds, a min-max band, each seed faint (as eqprop study)",
    )
    p.add_argument(
        "--label",
        action="append",
        metavar="TEXT",
        help="the legend name of a run, once per run in their order (default: what tells the runs' configs apart)",
    )
    p.add_argument("--names", action="store_true", help="name each run in the legend by its directory")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser(
        "table", parents=[common], help="Markdown table (rows: algorithms, columns: data sets; mean ± std over seeds)"
    )
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--metric", choices=["final", "best"], default="final")
    p.add_argument(
        "--split",
        choices=["test", "val"],
        default="test",
        help="the error tabulated: test, or the validation split each run held out (runs that never read the test set)",
    )
    p.add_argument("-o", "--output", help="also write the table to this file")
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser(
        "study", parents=[common], help="run a grid of algorithms x data sets x seeds, then tabulate and plot it"
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    p.add_argument("--algorithms", nargs="+")
    p.add_argument("--datasets", nargs="+")
    p.add_argument("--seeds", nargs="+", type=int)
    p.add_argument("--jobs", type=int, help="runs at once, each its own process (default: the config's, or 1)")
    p.add_argument("--out", default="runs/study", help="the study directory (default: runs/study)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="re-run from scratch the runs whose saved config differs from this command's (default: refuse)",
    )
    p.add_argument(
        "--storage",
        help="share the grid with workers on other machines through this Optuna storage (as for eqprop tune)",
    )
    p.add_argument("--study-name", help="the grid's name in the storage (default: the --out folder's name)")
    p.add_argument(
        "--status",
        action="store_true",
        help="print where each run of this grid stands (finished, running, stopped, waiting) and start nothing",
    )
    p.add_argument("--data-dir", help="the folder holding the data set's files (same as data_dir=...)")
    _add_import_option(p)
    p.set_defaults(func=_cmd_study)

    p = sub.add_parser(
        "tune", parents=[common], help="hyperparameter search on Optuna; workers on many machines share one storage"
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every trial")
    p.add_argument("--space", help="YAML: config key -> {type: float|int|categorical, low, high, ...} (needed)")
    p.add_argument("--trials", type=int, help="finished trials wanted, over all workers (needed)")
    p.add_argument(
        "--storage", help="sqlite:///FILE, postgresql://..., mysql://... or journal:FILE (default: OUT/tune.db)"
    )
    p.add_argument("--study-name", help="the study in the storage (default: the config's file name)")
    p.add_argument(
        "--pruner",
        choices=["median", "hyperband", "none"],
        default="median",
        help="stop poor trials early: median (worse than earlier trials' median at the same epoch), hyperband, none",
    )
    p.add_argument(
        "--prune-every",
        type=int,
        default=1,
        metavar="N",
        help="the pruner looks at a trial at epochs N, 2N, ... only (default 1: every epoch); more for settings "
        "that start slow, such as random translations",
    )
    p.add_argument("--seed", type=int, help="seed of the TPE sampler")
    p.add_argument(
        "--startup-trials",
        type=int,
        default=10,
        help="finished trials drawn at random before TPE models the objective (Optuna's default: 10)",
    )
    p.add_argument("--heartbeat", type=int, default=60, help="seconds between a trial's heartbeats (0: none)")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="queue the config's own values of the searched keys as the first trial (the starting point, ranked "
        "like the others)",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print every trial of the study (state, parameters, objective, epochs) and start nothing",
    )
    p.add_argument(
        "--best-config",
        metavar="PATH",
        help="write the best finished trial's config for its final runs (whole training set, test_once) and start "
        "nothing",
    )
    p.add_argument("--trial", type=int, help="with --best-config: this trial's settings instead of the best's")
    p.add_argument(
        "--plot", metavar="PATH", help="with --status: a PNG of the objective against each searched key (PATH)"
    )
    p.add_argument("--out", default="runs/tune", help="where the trials' run directories go (default: runs/tune)")
    p.add_argument("--data-dir", help="the folder holding the data set's files (same as data_dir=...)")
    _add_import_option(p)
    p.set_defaults(func=_cmd_tune)
    return parser


# the subcommands whose positional ``key=value`` overrides may also come after the options
_OVERRIDES = {"train": "items", "eval": "overrides", "study": "overrides", "tune": "overrides"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with ``key=value`` overrides accepted before and after the options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    target = _OVERRIDES.get(args.command)
    if target == "items" and extra and not args.items and not extra[0].startswith("-") and "=" not in extra[0]:
        args.items, extra = [extra[0]], extra[1:]  # the experiment file, given after an option
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if extra and (target is None or stray):
        parser.parse_args(argv)  # argparse's own message for what it does not know, exit code 2
    if extra:
        setattr(args, target, [*getattr(args, target), *extra])  # type: ignore[arg-type]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from .logs import set_verbosity

    set_verbosity(getattr(args, "verbosity", None) or "INFO")
    try:
        from .registry import import_extensions, load_plugins

        load_plugins()  # installed packages' eqprop.plugins entry points
        imports = getattr(args, "imports", [])
        if imports:  # imported now, and recorded in the run's config so that --resume imports them again
            imports = [str(Path(m).expanduser().resolve()) if m.endswith(".py") else m for m in imports]
            import_extensions(imports)
            target = _OVERRIDES[args.command]
            if not (args.command == "train" and (args.resume or args.extend)):
                setattr(args, target, [*getattr(args, target), f"imports={imports}"])
        return args.func(args)
    except (ConfigError, DataError, RunError, FileNotFoundError) as exc:  # bad input; anything else is a bug
        print(f"eqprop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eqprop: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    except Exception as exc:
        from .training.trainer import DivergenceError, Interrupted

        if isinstance(exc, DivergenceError):
            print(f"eqprop: {exc}", file=sys.stderr)
            return 3
        if isinstance(exc, Interrupted):
            print(f"eqprop: {exc}", file=sys.stderr)
            return 143 if exc.signame == "SIGTERM" else 130
        from .models.spice import SpiceError

        if isinstance(exc, SpiceError):  # ngspice missing or failing: one line, the netlist kept
            print(f"eqprop: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
