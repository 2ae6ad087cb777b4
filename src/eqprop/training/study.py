"""Studies: a grid of runs (algorithms x data sets x seeds) from one config, run as separate processes,
summarised at the end by ``table.md`` (Table 1 layout) and ``curves.png``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunError
from .config import ConfigError, TrainConfig, config_from_dict, load_config, parse_overrides, read_yaml
from .results import INCIDENTAL, plot_runs, results_table
from .run_directory import lock_directory

__all__ = ["StudyRun", "plan_study", "run_study"]


@dataclass
class StudyRun:
    algorithm: str
    dataset: str
    seed: int
    out_dir: Path
    config: TrainConfig | None = None
    returncode: int | None = None

    @property
    def overrides(self) -> list[str]:
        return [
            f"algorithm={self.algorithm}",
            f"dataset={self.dataset}",
            f"seed={self.seed}",
            f"out_dir={self.out_dir}",
        ]


def plan_study(
    config: str | Path,
    out_dir: str | Path,
    algorithms: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
) -> list[StudyRun]:
    """The runs of a study; unset axes come from the config's ``study:`` block, else the config itself.
    Every run's config is validated before any run starts."""
    study = read_yaml(config).get("study", {})
    base = load_config(config, overrides)
    algorithms = list(algorithms or study.get("algorithms") or [base.algorithm])
    datasets = list(datasets or study.get("datasets") or [base.dataset])
    seeds = [int(s) for s in (seeds or study.get("seeds") or [base.seed])]
    runs = []
    for algorithm, dataset, seed in itertools.product(algorithms, datasets, seeds):
        run = StudyRun(algorithm, dataset, seed, Path(out_dir) / f"{algorithm}_{dataset}_seed{seed}")
        cfg = parse_overrides(run.overrides, base)  # raises ConfigError naming a bad value
        run.algorithm, run.dataset, run.config = cfg.algorithm, cfg.dataset, cfg
        runs.append(run)
    return runs


def config_changes(saved: TrainConfig, planned: TrainConfig, ignore: tuple[str, ...] = INCIDENTAL) -> dict[str, Any]:
    """{key: (saved, planned)} for every setting that differs (lists and tuples compare alike)."""
    a, b = (json.loads(json.dumps(c.flat())) for c in (saved, planned))
    return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}


def saved_config(run_dir: Path) -> TrainConfig | None:
    """The config a run directory was started with (None when it has none)."""
    path = run_dir / "config.json"
    if not path.exists():
        return None
    try:
        return config_from_dict(json.loads(path.read_text()))
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError, as is a JSON decoding error
        raise RunError(f"{path} cannot be read as a run's config ({exc}); move that run out of the study") from None


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
) -> list[StudyRun]:
    """Run every run of the grid (``jobs`` at a time, each in its own ``eqprop train`` process), resuming
    runs already in ``out_dir`` that have this command's config (``overwrite``: re-running those that do not;
    otherwise they are a RunError); then write ``table.md`` and ``curves.png`` over the study's finished runs."""
    runs = plan_study(config, out_dir, algorithms, datasets, seeds, overrides)
    jobs = jobs or int(read_yaml(config).get("study", {}).get("jobs", 1))
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create the study directory {out} ({exc.strerror}); choose a writable --out") from None
    lock = lock_directory(out, "eqprop study")
    try:
        return _run(runs, config, out, jobs, overrides, log, overwrite)
    finally:
        lock.close()


def _run(
    runs: list[StudyRun],
    config: str | Path,
    out: Path,
    jobs: int,
    overrides: Sequence[str],
    log: Callable[[str], None],
    overwrite: bool,
) -> list[StudyRun]:
    fresh: set[Path] = set()  # runs to start afresh over what their directory holds
    changed = []
    for run in runs:
        saved = saved_config(run.out_dir)
        if saved is None:
            continue
        assert run.config is not None
        diff = config_changes(saved, run.config)
        if diff:
            changed.append(
                f"{run.out_dir.name} (" + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()) + ")"
            )
            fresh.add(run.out_dir)
        elif not (run.out_dir / "checkpoint_last.pt").exists():
            fresh.add(run.out_dir)  # started with this config but stopped before its first checkpoint
    if changed and not overwrite:
        raise RunError(
            f"{out} holds runs made with another config than this command's: {'; '.join(changed[:3])}"
            + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            + "; re-run them from scratch with --overwrite (their files are deleted), or choose another --out"
        )
    log(f"eqprop study: {len(runs)} runs, {jobs} at a time, in {out}")

    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:  # share the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))

    def launch(run: StudyRun) -> StudyRun:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        if (run.out_dir / "checkpoint_last.pt").exists() and run.out_dir not in fresh:
            cmd = [sys.executable, "-m", "eqprop", "train", "--resume", str(run.out_dir), "progress=false"]
        else:
            cmd = [sys.executable, "-m", "eqprop", "train", str(config), *overrides, *run.overrides, "progress=false"]
            cmd += ["--overwrite"] if run.out_dir in fresh else []
        with open(run.out_dir / "stdout.log", "w" if run.out_dir in fresh else "a") as logfile:
            run.returncode = subprocess.call(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env)
        log(f"  {'done' if run.returncode == 0 else f'FAILED (exit {run.returncode})'}: {run.out_dir.name}")
        return run

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = list(pool.map(launch, runs))
    finished = [r.out_dir for r in runs if (r.out_dir / "metrics.jsonl").exists()]
    finished += _earlier_runs(out, runs)
    if finished:
        (out / "table.md").write_text(results_table(finished) + "\n")
        plot_runs(finished, out / "curves.png")
        log(f"eqprop study: wrote {out / 'table.md'} and {out / 'curves.png'}")
    return runs


def _earlier_runs(out: Path, runs: list[StudyRun]) -> list[Path]:
    """Finished runs of earlier commands in the study directory (other algorithms, data sets or seeds) whose config
    matches this command's in everything else: they belong in the same table."""
    planned = {r.out_dir for r in runs}
    reference = runs[0].config
    found = []
    for path in sorted(out.glob("*/config.json")):
        run_dir = path.parent
        if run_dir in planned or not (run_dir / "metrics.jsonl").exists():
            continue
        saved = saved_config(run_dir)
        if (
            saved is not None
            and reference is not None
            and not config_changes(saved, reference, INCIDENTAL + ("algorithm", "dataset", "seed"))
        ):
            found.append(run_dir)
    return found
