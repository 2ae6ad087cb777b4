"""Studies: a grid of runs (algorithms x data sets x seeds, and the study block's named ``variants`` of the config)
from one config, run as separate processes, summarised at the end by ``table.md`` (Table 1 layout; a variant's row
is labelled with the settings that set it apart) and ``curves.png``.

With ``storage`` (an Optuna storage URL, as for ``eqprop tune``), ``eqprop study`` processes on any number of
machines share one grid: each run is an enqueued trial that exactly one worker takes; the run of a killed worker is
retried (and resumes from its checkpoint) by another; every worker of a grid plans the same runs (a worker with
other axes or overrides is refused). Without it one process runs the grid, ``jobs`` at a time. Either way the grid
runs seed-major: the first seed of every algorithm and data set before any second seed.

Re-running a study resumes its unfinished runs. A run already in the study directory under another config (say
the command now has ``epochs=3``) is refused, or re-run from scratch with ``overwrite``: a run is never reported
under a config it did not use. One study process at a time holds the study directory (``.lock``).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RunError
from .config import ConfigError, TrainConfig, load_config, parse_overrides, read_yaml
from .results import INCIDENTAL, plot_runs, read_run, results_table
from .run_directory import PARENT_PID_VAR, RunDirectory, is_run_directory, lock_directory, lock_file
from .trainer import read_run_config, run_finished

__all__ = ["StudyRun", "plan_study", "run_study", "study_status", "study_variants"]


@dataclass
class StudyRun:
    algorithm: str
    dataset: str
    seed: int
    out_dir: Path
    config: TrainConfig | None = None
    returncode: int | None = None
    settings: list[str] = field(default_factory=list)  # this algorithm's own settings (the study's ``settings:``)
    variant: str | None = None  # the name of this run's variant (the study's ``variants:``), if it has any
    variant_settings: list[str] = field(default_factory=list)

    @property
    def overrides(self) -> list[str]:
        return [
            f"algorithm={self.algorithm}",
            f"dataset={self.dataset}",
            f"seed={self.seed}",
            *self.settings,
            *self.variant_settings,  # last: a variant's keys override the algorithm's own
            f"out_dir={self.out_dir}",
        ]


def _as_overrides(keys: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else v}" for k, v in keys.items()]


def algorithm_settings(study: dict[str, Any], config: str | Path = "the config") -> dict[str, list[str]]:
    """The study block's per-algorithm settings as ``key=value`` overrides, e.g. ``settings: {TBP:
    {nudged_schedule: forward}}``: a baseline that relaxes differently shares the grid and its table."""
    raw = study.get("settings") or {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(
            f"{config}: study.settings must map an algorithm to its settings, e.g. "
            "settings: {TBP: {nudged_schedule: forward}}; got " + repr(raw)
        )
    return {str(algorithm): _as_overrides(keys) for algorithm, keys in raw.items()}


def study_variants(study: dict[str, Any], config: str | Path = "the config") -> dict[str | None, list[str]]:
    """The study block's named variants of the config as ``key=value`` overrides, e.g. ``variants: {paper: {},
    T8: {free_iterations: 8}}`` (an ablation: each variant a row of the table, for every algorithm, data set and
    seed); ``{None: []}`` without the block. A name becomes part of its runs' folder names."""
    raw = study.get("variants")
    if raw is None:
        return {None: []}
    example = "variants: {paper: {}, T8: {free_iterations: 8}}"
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, dict) or v is None for v in raw.values()):
        raise ConfigError(f"{config}: study.variants must map a name to its settings, e.g. {example}; got {raw!r}")
    bad = [str(name) for name in raw if not str(name) or not all(c.isalnum() or c in "-._" for c in str(name))]
    if bad:
        raise ConfigError(
            f"{config}: study.variants names {bad} are not usable in a folder name: use letters, digits, '-', '_' "
            f"and '.' (e.g. {example})"
        )
    return {str(name): _as_overrides(keys or {}) for name, keys in raw.items()}


def plan_study(
    config: str | Path,
    out_dir: str | Path,
    algorithms: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
) -> list[StudyRun]:
    """The runs of a study; unset axes come from the config's ``study:`` block, else the config itself, and
    each algorithm's own settings from the block's ``settings:``. Every run's config is validated before any run
    starts."""
    study = read_yaml(config).get("study", {})
    base = load_config(config, overrides)
    algorithms = list(algorithms or study.get("algorithms") or [base.algorithm])
    datasets = list(datasets or study.get("datasets") or [base.dataset])
    seeds = [int(s) for s in (seeds or study.get("seeds") or [base.seed])]
    own = algorithm_settings(study, config)
    listed = set(study.get("algorithms") or []) | set(algorithms)
    unknown = sorted(set(own) - listed)
    if unknown:
        raise ConfigError(
            f"{config}: study.settings names {', '.join(unknown)}, which the study does not run "
            f"(its algorithms: {', '.join(sorted(listed))})"
        )
    variants = study_variants(study, config)
    runs = []
    # seed-major: the first seed of every variant, algorithm and data set before any second seed, so that a study
    # stopped part-way (or still running) has every cell of its table
    for seed, variant, algorithm, dataset in itertools.product(seeds, variants, algorithms, datasets):
        name = (
            f"{algorithm}_{dataset}_{variant}_seed{seed}"
            if variant is not None
            else f"{algorithm}_{dataset}_seed{seed}"
        )
        run = StudyRun(algorithm, dataset, seed, Path(out_dir) / name, variant=variant)
        run.settings, run.variant_settings = own.get(algorithm, []), variants[variant]
        try:
            cfg = parse_overrides(run.overrides, base)  # raises ConfigError naming a bad value
        except ConfigError as exc:
            if variant is None:
                raise
            raise ConfigError(f"{config}: study variant {variant!r}: {exc}") from None
        run.algorithm, run.dataset, run.config = cfg.algorithm, cfg.dataset, cfg
        runs.append(run)
    return runs


def config_changes(saved: TrainConfig, planned: TrainConfig, ignore: tuple[str, ...] = INCIDENTAL) -> dict[str, Any]:
    """{key: (saved, planned)} for every setting that differs (lists and tuples compare alike)."""
    a, b = (json.loads(json.dumps(c.flat())) for c in (saved, planned))
    return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}


def saved_config(run_dir: Path) -> TrainConfig | None:
    """The config a run directory was started with (None when it has none); an unreadable one is a RunError."""
    if not (run_dir / "config.json").exists():
        return None
    try:
        return read_run_config(run_dir)
    except (RunError, ConfigError) as exc:
        raise RunError(f"{exc}; move that run out of the study") from None


def run_study(
    config: str | Path,
    out_dir: str | Path,
    algorithms: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    jobs: int | None = None,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
    overwrite: bool = False,
    storage: str | None = None,
    study_name: str | None = None,
    heartbeat: int | None = 60,
) -> list[StudyRun]:
    """Run every run of the grid (``jobs`` at a time, each in its own ``eqprop train`` process), resuming
    runs already in ``out_dir`` that have this command's config (``overwrite``: re-running those that do not;
    otherwise they are a RunError); then write ``table.md`` and ``curves.png`` over the study's finished runs."""
    runs = plan_study(config, out_dir, algorithms, datasets, seeds, overrides)
    if jobs is None:
        jobs = int(read_yaml(config).get("study", {}).get("jobs", 1))
    if jobs < 1:
        raise ConfigError(f"--jobs (the study's jobs) is the number of runs at once and must be >= 1, got {jobs}")
    out = Path(out_dir)
    if is_run_directory(out):
        raise RunError(
            f"{out} is a run directory (it holds one run's config.json), not a study: a study's --out holds one "
            "folder per run; choose another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create the study directory {out} ({exc.strerror}); choose a writable --out") from None
    if storage:  # workers share the directory; each run's own lock keeps it to one process
        return _run(runs, config, out, jobs, overrides, log, overwrite, (storage, study_name or out.name, heartbeat))
    lock = lock_directory(out, "eqprop study")
    try:
        return _run(runs, config, out, jobs, overrides, log, overwrite)
    finally:
        lock.close()


def study_status(
    config: str | Path,
    out_dir: str | Path,
    algorithms: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Where each planned run of a study stands, without starting anything: per run (in plan order) its ``state``
    (finished, running: another process holds it, stopped: it has a checkpoint to resume, waiting: not begun, or
    other config: made with another config than this command's), ``epochs`` done of ``of``, and its last test
    error (``None`` before its first epoch)."""
    rows = []
    for run in plan_study(config, out_dir, algorithms, datasets, seeds, overrides):
        saved = saved_config(run.out_dir)
        assert run.config is not None
        metrics = read_run(run.out_dir).metrics if saved is not None else []
        last = metrics[-1] if metrics else {}
        if saved is None:
            state = "waiting"
        elif config_changes(saved, run.config):
            state = "other config"
        elif _held(run.out_dir):
            state = "running"
        elif run_finished(run.out_dir):
            state = "finished"
        else:
            state = "stopped"
        rows.append(
            {
                "run": run.out_dir.name,
                "state": state,
                "epochs": int(last.get("epoch", 0)),
                "of": run.config.epochs,
                "test_error": last.get("test_error"),
                "val_error": last.get("val_error"),
            }
        )
    return rows


def _held(run_dir: Path) -> bool:
    """Whether another process holds the run directory's lock (a training process is running in it)."""
    path = run_dir / RunDirectory.LOCK
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        return not lock_file(handle)  # closing the file releases a lock taken here


def _run(
    runs: list[StudyRun],
    config: str | Path,
    out: Path,
    jobs: int,
    overrides: Sequence[str],
    log: Callable[[str], None],
    overwrite: bool,
    shared: tuple[str, str, int | None] | None = None,
) -> list[StudyRun]:
    changed = []
    for run in runs:
        saved = saved_config(run.out_dir)
        assert run.config is not None
        diff = config_changes(saved, run.config) if saved is not None else {}
        if diff:
            changed.append(
                f"{run.out_dir.name} (" + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()) + ")"
            )
    if changed and not overwrite:
        raise RunError(
            f"{out} holds runs made with another config than this command's: {'; '.join(changed[:3])}"
            + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            + "; re-run them from scratch with --overwrite (their files are deleted), or choose another --out"
        )
    log(f"eqprop study: {len(runs)} runs, {jobs} at a time, in {out}")

    env = dict(os.environ)
    env[PARENT_PID_VAR] = str(os.getpid())  # the runs stop (with a checkpoint) if this worker is killed
    if jobs > 1 and "OMP_NUM_THREADS" not in env:  # share the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))

    def launch(run: StudyRun) -> StudyRun:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        saved = saved_config(run.out_dir)  # decided now: another worker may have run it meanwhile
        assert run.config is not None
        fresh = saved is not None and (
            bool(config_changes(saved, run.config)) or not (run.out_dir / "checkpoint_last.pt").exists()
        )
        if not fresh and run_finished(run.out_dir):  # nothing to resume: its files stay as they are
            run.returncode = 0
            log(f"  finished before: {run.out_dir.name}")
            return run
        if (run.out_dir / "checkpoint_last.pt").exists() and not fresh:
            cmd = [sys.executable, "-m", "eqprop", "train", "--resume", str(run.out_dir), "progress=false"]
        else:
            cmd = [sys.executable, "-m", "eqprop", "train", str(config), *overrides, *run.overrides, "progress=false"]
            cmd += ["--overwrite"] if fresh else []
        with open(run.out_dir / "stdout.log", "w" if fresh else "a") as logfile:
            run.returncode = subprocess.call(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env)
        log(f"  {'done' if run.returncode == 0 else f'FAILED (exit {run.returncode})'}: {run.out_dir.name}")
        return run

    if shared is not None:
        _take_runs_from_storage(runs, launch, jobs, *shared, log)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            runs = list(pool.map(launch, runs))
    finished = [r.out_dir for r in runs if (r.out_dir / "metrics.jsonl").exists()]
    finished += _earlier_runs(out, runs, config, overrides)
    if finished:
        # a study on the validation split (evaluate_test=false: an ablation, tuning) tabulates its validation error
        (out / "table.md").write_text(results_table(finished, split=None) + "\n")
        plot_runs(finished, out / "curves.png", mean_over_seeds=True)
        log(f"eqprop study: wrote {out / 'table.md'} and {out / 'curves.png'}")
    return runs


def _take_runs_from_storage(
    runs: list[StudyRun],
    launch: Callable[[StudyRun], StudyRun],
    jobs: int,
    storage: str,
    name: str,
    heartbeat: int | None,
    log: Callable[[str], None],
) -> None:
    """Work through the grid with the other workers of the storage: every run is an enqueued Optuna trial, taken
    by one worker (its value: the run's final test error); stops when no run is left waiting."""
    import optuna

    from .tune import fail_stale_trials, make_storage, quiet_optuna

    quiet_optuna()
    by_name = {r.out_dir.name: r for r in runs}
    names = sorted(by_name)
    study = optuna.create_study(study_name=name, storage=make_storage(storage, heartbeat), load_if_exists=True)
    fail_stale_trials(study)  # runs of killed workers: failed, queued again, resumed by us
    trials = study.get_trials(deepcopy=False)
    foreign = sorted(
        {str(t.params.get("run", t.system_attrs.get("fixed_params", {}).get("run"))) for t in trials} - {"None", *names}
    )
    if foreign:
        raise ConfigError(
            f"the grid {name!r} in {storage} holds runs this command does not plan ({', '.join(foreign[:4])}"
            f"{', ...' if len(foreign) > 4 else ''}): every worker of a grid needs the same config, axes "
            "(--algorithms, --datasets, --seeds) and overrides; for another grid give another --study-name"
        )
    taken = {t.params.get("run") for t in trials if t.state != optuna.trial.TrialState.FAIL}
    for run_name in (r.out_dir.name for r in runs):  # in plan order (seed-major): waiting trials are taken oldest first
        if run_name not in taken:
            study.enqueue_trial({"run": run_name}, skip_if_exists=True)
    waiting = (optuna.trial.TrialState.WAITING,)
    log(f"eqprop study: taking runs of {name!r} from {storage} ({len(study.get_trials(states=waiting))} waiting)")

    def objective(trial: Any) -> float:
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        if "fixed_params" not in frozen.system_attrs:  # not a queued run: the grid is done
            trial.set_user_attr("surplus", True)
            study.stop()
            raise optuna.TrialPruned("no run of the grid is waiting")
        run_name = trial.suggest_categorical("run", names)
        busy = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING
        earlier = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.number < trial.number and t.params.get("run") == run_name and t.state in busy
        ]
        if earlier:  # queued twice by workers that started together: the earlier trial has it
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned(f"{run_name} is trial {earlier[0].number}'s")
        run = launch(by_name[run_name])
        if run.returncode != 0:
            raise RuntimeError(f"run {run_name} exited with {run.returncode} (see its stdout.log)")
        final = read_run(run.out_dir).final
        return float(final.get("test_error", final.get("val_error", float("nan"))))  # a study on the validation split

    def done(study: Any, trial: Any) -> None:
        if not study.get_trials(deepcopy=False, states=waiting):
            study.stop()

    if study.get_trials(deepcopy=False, states=waiting):
        study.optimize(objective, n_jobs=jobs, callbacks=[done], catch=(RuntimeError,))
    for run in runs:  # the runs other workers did, for the table
        if run.returncode is None and (run.out_dir / "metrics.jsonl").exists():
            run.returncode = 0


def _earlier_runs(out: Path, runs: list[StudyRun], config: str | Path, overrides: Sequence[str]) -> list[Path]:
    """Finished runs of earlier commands in the study directory (other algorithms, data sets or seeds) whose config
    is the one this study gives their algorithm and data set (its own ``settings:`` included): they belong in the
    same table."""
    planned = {r.out_dir for r in runs}
    base = load_config(config, overrides)
    study = read_yaml(config).get("study", {})
    own, variants = algorithm_settings(study, config), study_variants(study, config)
    found = []
    for path in sorted(out.glob("*/config.json")):
        run_dir = path.parent
        if run_dir in planned or not (run_dir / "metrics.jsonl").exists():
            continue
        saved = saved_config(run_dir)
        if saved is None:
            continue
        for variant in variants.values():
            try:
                reference = parse_overrides(
                    [
                        f"algorithm={saved.algorithm}",
                        f"dataset={saved.dataset}",
                        *own.get(saved.algorithm, []),
                        *variant,
                    ],
                    base,
                )
            except ConfigError:  # a run this study could not make
                continue
            if not config_changes(saved, reference, INCIDENTAL + ("seed",)):
                found.append(run_dir)
                break
    return found
