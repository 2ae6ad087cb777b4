"""Results of finished runs: learning-curve plots and the Table 1 layout (algorithms x data sets, mean ± std)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, RunError
from .config import INCIDENTAL as RESULT_NEUTRAL
from .config import flat_dict

__all__ = ["Run", "read_run", "plot_runs", "results_table", "read_diagnostics", "plot_diagnostics", "INCIDENTAL"]

# settings that do not change a run's result: runs differing only in these (and the seed) share a table cell
INCIDENTAL = ("out_dir", *RESULT_NEUTRAL)


@dataclass
class Run:
    """A run directory's resolved config and per-epoch metrics."""

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, float]]

    @property
    def label(self) -> str:
        c = self.config
        return f"{c['algorithm']} {c['dataset']} seed {c['seed']}"

    @property
    def final(self) -> dict[str, float]:
        return self.metrics[-1] if self.metrics else {}


def read_run(run_dir: str | Path) -> Run:
    """Read ``config.json`` and ``metrics.jsonl`` from a run directory."""
    run_dir = Path(run_dir)
    cfg_path, metrics_path = run_dir / "config.json", run_dir / "metrics.jsonl"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    metrics = []
    if metrics_path.exists():
        metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    by_epoch = {int(m["epoch"]): m for m in metrics}  # a resumed run may repeat an epoch; keep the last
    config = flat_dict(json.loads(cfg_path.read_text()))
    return Run(run_dir, config, [by_epoch[e] for e in sorted(by_epoch)])


def _many_classes(dataset: str) -> bool:
    """Whether top-5 error is reported for a data set (100 or more classes, as in the PCN paper's tables)."""
    from .data import dataset_spec

    try:
        return dataset_spec(dataset).num_classes >= 100
    except DataError:  # a data set registered by a plugin that is not loaded here: no top-5 column
        return False


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    if not path.suffix:  # what matplotlib would write
        path = path.with_suffix(".png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend outside the axes included
    except OSError as exc:
        raise RunError(f"cannot write {path} ({exc.strerror or exc}); choose a writable output path") from None
    finally:
        plt.close(fig)
    return path


def read_diagnostics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch layer diagnostics (``diagnostics.jsonl``, written when ``diagnostics=true``)."""
    path = Path(run_dir) / "diagnostics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: train with diagnostics=true to record layer diagnostics")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_diagnostics(run_dirs: str | Path | Sequence[str | Path], path: str | Path) -> Path:
    """Figure 5's view: per layer, the mean activation and the update norm at chosen epochs, one panel row
    per run, so signals that vanish with depth show as curves that fall to zero across layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    fig, axes = plt.subplots(len(dirs), 2, figsize=(11, 3.6 * len(dirs)), squeeze=False)
    for row, d in enumerate(dirs):
        diags = read_diagnostics(d)
        picks = sorted({0, len(diags) // 2, len(diags) - 1})
        for j in picks:
            rec = diags[j]
            layers = range(1, len(rec["mean_activation"]) + 1)
            axes[row, 0].plot(layers, rec["mean_activation"], marker="o", label=f"epoch {rec['epoch']}")
            axes[row, 1].plot(layers, rec["grad_norm"], marker="o", label=f"epoch {rec['epoch']}")
        name = read_run(d).config
        title = f"{name['algorithm']} signals={name.get('signals', 'none')} ({Path(d).name})"
        axes[row, 0].set(xlabel="layer", ylabel="mean activation", title=title)
        axes[row, 1].set(xlabel="layer", ylabel="||update estimate||", yscale="log", title=title)
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_runs(
    run_dirs: Sequence[str | Path],
    path: str | Path,
    mean_over_seeds: bool = False,
    labels: Sequence[str] | None = None,
) -> Path:
    """PNG learning curves: train/test error and train/test loss per epoch, one line per run; returns the file
    written (``path``, with ``.png`` added where it has no suffix). With ``mean_over_seeds`` the runs that differ
    only in their seed share one colour: their mean as a bold line, the min-max range as a band, each seed faint.
    ``labels`` (one per run, in order) replace the legend names read from the configs' differences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, SymmetricalLogLocator

    runs = [read_run(d) for d in run_dirs]
    if not any(r.metrics for r in runs):
        raise DataError(f"no epoch metrics in {[str(r.path) for r in runs]}: nothing to plot")
    if labels is not None:
        if mean_over_seeds:
            raise ConfigError("labels name single runs; with mean_over_seeds (--mean) the legend names each setting")
        if len(labels) != len(runs):
            raise ConfigError(f"{len(labels)} labels for {len(runs)} runs: give one label per run, in their order")
    series = list(zip(labels, ([r] for r in runs))) if labels is not None else _series(runs, mean_over_seeds)
    top5 = [r for r in runs if r.metrics and _many_classes(r.config["dataset"]) and "test_top5_error" in r.metrics[0]]
    fig, axes = plt.subplots(1, 3 if top5 else 2, figsize=(16.5 if top5 else 11, 4))
    ax_err, ax_loss = axes[0], axes[1]
    panels = [
        (ax_err, "test_error", 100.0, "-", True),
        (ax_err, "train_error", 100.0, "--", False),
        (ax_loss, "test_loss", 1.0, "-", False),
        (ax_loss, "train_loss", 1.0, "--", False),
        (ax_err, "val_error", 100.0, ":", False),  # runs with a validation split (tuning trials: only these)
        (ax_loss, "val_loss", 1.0, ":", False),
    ]
    if top5:
        panels.append((axes[2], "test_top5_error", 100.0, "-", False))
    for k, (label, group) in enumerate(series):
        group = [r for r in group if r.metrics]
        if not group:
            continue
        color = f"C{k % 10}"
        for ax, key, scale, ls, labelled in panels:
            members = [r for r in group if any(key in m for m in r.metrics)]  # test_once: the last epoch only
            if members:
                _draw(ax, members, key, scale, color, ls, label if labelled else None)
    ax_err.set(xlabel="epoch", ylabel="error rate (%)", title="top-1 error")
    ax_loss.set(xlabel="epoch", ylabel="cost", title="loss")
    if top5:  # 100- and 1000-class sets: the top-5 test error the PCN paper reports
        axes[2].set(xlabel="epoch", ylabel="top-5 error rate (%)", title="top-5 test error (100+ classes)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax_err.set_yscale("symlog", linthresh=0.1)  # log above 0.1 %, linear below: a 0 % error stays on the plot
    # ticks at 1, 2, 3, 5, 7 times each power of ten, so a curve inside one decade (20 % to 70 %, say) has labels
    ax_err.yaxis.set_major_locator(SymmetricalLogLocator(linthresh=0.1, base=10, subs=[1.0, 2.0, 3.0, 5.0, 7.0]))
    ax_err.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_err.yaxis.set_minor_formatter(NullFormatter())
    losses = [y for line in ax_loss.lines for y in line.get_ydata() if y > 0 and math.isfinite(y)]
    if losses and max(losses) > 1e3 * min(losses):  # a diverged run's loss would flatten every other curve
        ax_loss.set_yscale("log")
    # one legend outside the curves: a colour per run (or per setting), then the two line styles
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles, names = ax_err.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", ls="-"), Line2D([], [], color="0.3", ls="--")]
    names += ["test (solid)", "train (dashed)"]
    if any(r.metrics and "val_error" in r.metrics[0] for r in runs):
        handles.append(Line2D([], [], color="0.3", ls=":"))
        names.append("validation (dotted)")
    if any(len(group) > 1 for _, group in series):
        handles += [Line2D([], [], color="0.3", lw=0.8, alpha=0.35), Patch(color="0.3", alpha=0.15)]
        names += ["one seed (faint)", "min-max over seeds (band)"]
    fig.legend(handles, names, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8, frameon=False)
    return _save(fig, path)


def _series(runs: list[Run], mean_over_seeds: bool) -> list[tuple[str, list[Run]]]:
    """(legend label, runs) per colour: each run alone, or the runs that differ only in their seed together."""
    if not mean_over_seeds:
        return [(label, [run]) for label, run in zip(_distinct_labels(runs), runs)]
    rows = _variants(runs)
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(f"{rows[run.path]} {run.config['dataset']}", []).append(run)
    out = []
    for label, group in groups.items():
        seeds = sorted({int(r.config["seed"]) for r in group})
        shown = f"mean of {len(group)} seeds" if len(group) > 1 else f"seed {seeds[0]}"
        out.append((f"{label} ({shown})", group))
    return out


def _draw(ax: Any, runs: list[Run], key: str, scale: float, color: str, ls: str, label: str | None) -> None:
    """One run's curve of ``key``, or, for several, each faint, their mean bold and a min-max band (over the epochs
    every run reached)."""
    curves = [{m["epoch"]: scale * m[key] for m in r.metrics if key in m} for r in runs]
    marker = "o" if min(len(c) for c in curves) == 1 or max(len(c) for c in curves) <= 30 else None
    if len(runs) == 1:
        ax.plot(list(curves[0]), list(curves[0].values()), color=color, ls=ls, marker=marker, markersize=3, label=label)
        return
    for curve in curves:
        ax.plot(list(curve), list(curve.values()), color=color, ls=ls, lw=0.8, alpha=0.35)
    common = sorted(set.intersection(*(set(c) for c in curves)))
    if not common:
        return
    stacked = [[c[e] for c in curves] for e in common]
    ax.fill_between(common, [min(v) for v in stacked], [max(v) for v in stacked], color=color, alpha=0.15, lw=0)
    mean = [statistics.fmean(v) for v in stacked]
    ax.plot(common, mean, color=color, ls=ls, lw=2.0, marker=marker, markersize=3, label=label)


def _distinct_labels(runs: list[Run]) -> list[str]:
    """Each run's legend label: algorithm (with the settings that set it apart from runs of the same algorithm,
    such as its model), data set and seed; its directory's name is added where two runs would still share one."""
    rows = _variants(runs)
    plain = [f"{rows[r.path]} {r.config['dataset']} seed {r.config['seed']}" for r in runs]
    return [f"{p} ({r.path.name})" if plain.count(p) > 1 else p for p, r in zip(plain, runs)]


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f}"


# the settings named first when a row's label says how its runs differ from the others
_LABEL_FIRST = ("model", "epochs", "channels", "hidden", "beta", "lrs")


def _variants(runs: list[Run]) -> dict[Path, str]:
    """Each run's row label: its algorithm, then, where runs of the same algorithm and data set differ in a setting
    that changes results (anything but the seed and the incidental keys), those settings' values, e.g.
    ``CEP (model=mlp, hidden=[64])``. Runs that differ in such a setting are never merged as seeds of one row."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.config["algorithm"], run.config["dataset"]), []).append(run)
    labels: dict[Path, str] = {}
    for (algorithm, _), group in groups.items():
        keys = _differing_keys(group)
        keys.sort(key=lambda k: (_LABEL_FIRST.index(k) if k in _LABEL_FIRST else len(_LABEL_FIRST), k))
        for run in group:
            shown = [f"{k}={_shown(run.config.get(k))}" for k in keys[:3]] + (["..."] if len(keys) > 3 else [])
            labels[run.path] = f"{algorithm} ({', '.join(shown)})" if keys else algorithm
    return labels


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _one_run_per_seed(runs: list[Run], labels: dict[Path, str]) -> tuple[list[Run], list[str]]:
    """The newest run of each (row, data set, seed) and a note for each seed that ran more than once (a repeated
    seed is not another sample)."""
    by_seed: dict[tuple[str, str, int], list[Run]] = {}
    for run in runs:
        c = run.config
        by_seed.setdefault((labels[run.path], c["dataset"], int(c["seed"])), []).append(run)
    kept, notes = [], []
    for (a, d, seed), group in by_seed.items():
        group.sort(key=lambda r: (r.path / "metrics.jsonl").stat().st_mtime)
        kept.append(group[-1])
        if len(group) > 1:
            notes.append(
                f"seed {seed} of {a} on {d} ran {len(group)} times ({', '.join(str(r.path) for r in group)}); "
                f"the table counts it once, from the newest, {group[-1].path}"
            )
    return kept, notes


def _differing_keys(runs: list[Run]) -> list[str]:
    """Config keys (besides the seed and incidental ones) whose values differ among ``runs``."""
    keys = {k for r in runs for k in r.config} - set(INCIDENTAL) - {"seed"}
    return sorted(k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1)


def results_table(run_dirs: Sequence[str | Path], metric: str = "final", split: str | None = "test") -> str:
    """Markdown table in Table 1's layout: rows = algorithms, columns = (data set: test, train) error in % (plus
    the top-5 test error for 100- and 1000-class sets), mean ± sample std over seeds, from each run's final epoch
    (``metric='best'``: its lowest test error). Only runs that differ in nothing but the seed (and settings that
    do not change results) share a cell: runs of one algorithm that differ in another setting get rows of their
    own, labelled with it. Each seed counts once (the newest of repeated runs); the notes under the table say, per
    data set, how many seeds each cell has, which runs were merged, and what set the rows of one algorithm apart.
    ``split='val'``: the validation error instead of the test error (runs that never read the test set: tuning
    trials, an ablation on the validation split); ``split=None``: 'val' when no run read the test set, else 'test'."""
    from ..rules.base import algorithm_names
    from .data import dataset_names

    if metric not in ("final", "best"):
        raise ValueError(f"metric must be 'final' or 'best', got {metric!r}")
    if split not in ("test", "val", None):
        raise ValueError(f"split must be 'test', 'val' or None, got {split!r}")
    finished = [r for r in (read_run(d) for d in run_dirs) if r.metrics]
    if not finished:
        raise DataError("none of the runs has finished an epoch: nothing to tabulate")
    if split is None:
        split = "test" if any("test_error" in m for r in finished for m in r.metrics) else "val"
    key = f"{split}_error"
    blind = [str(r.path) for r in finished if key not in r.metrics[-1]]
    if blind and split == "test":
        raise DataError(
            f"{', '.join(blind)} never evaluated the test set (evaluate_test=false, a tuning trial; or "
            "test_once before the last epoch): a table reports test errors; leave such runs out, or tabulate their "
            "validation error (split 'val', eqprop table --split val)"
        )
    if blind:
        raise DataError(f"{', '.join(blind)} held out no validation split (validation=0): no validation error")
    labels = _variants(finished)
    runs, notes = _one_run_per_seed(finished, labels)
    cells: dict[tuple[str, str], list[Run]] = {}
    for run in sorted(runs, key=lambda r: int(r.config["seed"])):
        cells.setdefault((labels[run.path], run.config["dataset"]), []).append(run)
    order_a, order_d = algorithm_names(), dataset_names()
    algorithm_of = {labels[r.path]: r.config["algorithm"] for r in runs}

    def row_order(row: str) -> tuple[int, str]:
        a = algorithm_of[row]
        return (order_a.index(a) if a in order_a else len(order_a), row)

    algos = sorted({a for a, _ in cells}, key=row_order)
    sets = sorted({d for _, d in cells}, key=lambda d: order_d.index(d) if d in order_d else len(order_d))
    top5 = {d for d in sets if _many_classes(d)}  # 100- and 1000-class sets also get a top-5 test column
    shown = "test" if split == "test" else "validation"
    columns = [
        f"{d} {shown} | {d} top-5 {shown} | {d} train" if d in top5 else f"{d} {shown} | {d} train" for d in sets
    ]
    lines = ["| algorithm | " + " | ".join(columns) + " |", "|" + " --- |" * (1 + 2 * len(sets) + len(top5))]

    def values(group: list[Run], column: str) -> list[float]:
        rows = [
            min((m for m in r.metrics if key in m), key=lambda m: m[key]) if metric == "best" else r.final
            for r in group
        ]  # test_once: only the last epoch has a test error
        return [row[column] for row in rows if column in row]

    for a in algos:
        parts = []
        for d in sets:
            group = cells.get((a, d), [])
            parts.append(_cell(values(group, key)))
            parts += [_cell(values(group, f"{split}_top5_error"))] if d in top5 else []
            parts.append(_cell(values(group, "train_error")))
        lines.append(f"| {a} | " + " | ".join(parts) + " |")
    what = "" if split == "test" else "; the validation error of the split each run held out (no test error)"
    lines += ["", f"Error rates in % ({metric} epoch), mean ± sample std over the seeds of each cell{what}."]
    for d in sets:
        counts = [
            f"{a} {len(cells[a, d])} ({', '.join(str(r.config['seed']) for r in cells[a, d])})"
            for a in algos
            if (a, d) in cells
        ]
        lines.append(f"- {d}: seeds per cell: {'; '.join(counts)}")
    for (a, d), group in sorted(cells.items()):
        if len(group) > 1:
            lines.append(f"- {a} on {d} merges {', '.join(str(r.path) for r in group)}")
    several = sorted({algorithm_of[row] for row in algos if row != algorithm_of[row]})
    for algorithm in several:
        rows = [row for row in algos if algorithm_of[row] == algorithm]
        every = sorted(
            {
                k
                for r in runs
                if r.config["algorithm"] == algorithm
                for k in _differing_keys(
                    [
                        q
                        for q in runs
                        if q.config["algorithm"] == algorithm and q.config["dataset"] == r.config["dataset"]
                    ]
                )
            }
        )
        lines.append(f"- {algorithm} has {len(rows)} rows: its runs differ in {every}, not only in the seed")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines)
