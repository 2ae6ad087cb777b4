"""Studies: a grid of runs (algorithms x data sets x seeds) from one config, run as separate processes,
summarised at the end by ``table.md`` (Table 1 layout) and ``curves.png``."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, load_config, parse_overrides, read_yaml
from .results import plot_runs, results_table

__all__ = ["StudyRun", "plan_study", "run_study"]


@dataclass
class StudyRun:
    algorithm: str
    dataset: str
    seed: int
    out_dir: Path
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
        run.algorithm, run.dataset = cfg.algorithm, cfg.dataset
        runs.append(run)
    return runs


def run_study(
    config: str | Path,
    out_dir: str | Path,
    algorithms: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    jobs: int | None = None,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> list[StudyRun]:
    """Run every run of the grid (``jobs`` at a time, each in its own ``eqprop train`` process), resuming
    runs already in ``out_dir``; then write ``table.md`` and ``curves.png`` for the runs that finished."""
    runs = plan_study(config, out_dir, algorithms, datasets, seeds, overrides)
    jobs = jobs or int(read_yaml(config).get("study", {}).get("jobs", 1))
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log(f"eqprop study: {len(runs)} runs, {jobs} at a time, in {out}")

    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:  # share the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))

    def launch(run: StudyRun) -> StudyRun:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        if (run.out_dir / "checkpoint_last.pt").exists():
            cmd = [sys.executable, "-m", "eqprop", "train", "--resume", str(run.out_dir), "progress=false"]
        else:
            cmd = [sys.executable, "-m", "eqprop", "train", str(config), *overrides, *run.overrides, "progress=false"]
        with open(run.out_dir / "stdout.log", "a") as logfile:
            run.returncode = subprocess.call(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env)
        log(f"  {'done' if run.returncode == 0 else f'FAILED (exit {run.returncode})'}: {run.out_dir.name}")
        return run

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = list(pool.map(launch, runs))
    finished = [r.out_dir for r in runs if (r.out_dir / "metrics.jsonl").exists()]
    if finished:
        (out / "table.md").write_text(results_table(finished) + "\n")
        plot_runs(finished, out / "curves.png")
        log(f"eqprop study: wrote {out / 'table.md'} and {out / 'curves.png'}")
    return runs
