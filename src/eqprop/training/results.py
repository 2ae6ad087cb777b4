"""Results of finished runs: learning-curve plots and the Table 1 layout (algorithms x data sets, mean ± std)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from .config import flat_dict

__all__ = ["Run", "read_run", "plot_runs", "results_table", "read_diagnostics", "plot_diagnostics"]


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
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


def plot_runs(run_dirs: Sequence[str | Path], path: str | Path) -> Path:
    """PNG learning curves: train/test error and train/test loss per epoch, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_run(d) for d in run_dirs]
    if not any(r.metrics for r in runs):
        raise DataError(f"no epoch metrics in {[str(r.path) for r in runs]}: nothing to plot")
    top5 = [r for r in runs if r.metrics and _many_classes(r.config["dataset"]) and "test_top5_error" in r.metrics[0]]
    fig, axes = plt.subplots(1, 3 if top5 else 2, figsize=(16.5 if top5 else 11, 4))
    ax_err, ax_loss = axes[0], axes[1]
    for k, run in enumerate(runs):
        if not run.metrics:
            continue
        color = f"C{k % 10}"
        epochs = [m["epoch"] for m in run.metrics]
        ax_err.plot(epochs, [100 * m["test_error"] for m in run.metrics], color=color, label=f"{run.label} test")
        ax_err.plot(
            epochs, [100 * m["train_error"] for m in run.metrics], color=color, ls="--", label=f"{run.label} train"
        )
        ax_loss.plot(epochs, [m["test_loss"] for m in run.metrics], color=color, label=f"{run.label} test")
        ax_loss.plot(epochs, [m["train_loss"] for m in run.metrics], color=color, ls="--", label=f"{run.label} train")
    ax_err.set(xlabel="epoch", ylabel="error rate (%)", title="top-1 error (solid: test, dashed: train)")
    ax_loss.set(xlabel="epoch", ylabel="cost", title="loss (solid: test, dashed: train)")
    if top5:  # 100- and 1000-class sets: the top-5 test error the PCN paper reports
        ax5 = axes[2]
        for k, run in enumerate(runs):
            if run in top5:
                epochs = [m["epoch"] for m in run.metrics]
                ax5.plot(epochs, [100 * m["test_top5_error"] for m in run.metrics], color=f"C{k % 10}", label=run.label)
        ax5.set(xlabel="epoch", ylabel="top-5 error rate (%)", title="top-5 test error (100+ classes)")
        ax5.legend(fontsize=7, loc="best")
    for ax in axes:
        ax.grid(alpha=0.3)
    ax_err.set_yscale("log")
    ax_loss.legend(fontsize=7, loc="best")
    return _save(fig, path)


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def results_table(run_dirs: Sequence[str | Path], metric: str = "final") -> str:
    """Markdown table in Table 1's layout: rows = algorithms, columns = (data set: test, train) error in % (plus
    the top-5 test error for 100- and 1000-class sets), mean ± sample std over seeds, from each run's final epoch
    (``metric='best'``: its lowest test error)."""
    from ..rules.base import algorithm_names
    from .data import dataset_names

    if metric not in ("final", "best"):
        raise ValueError(f"metric must be 'final' or 'best', got {metric!r}")
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    for d in run_dirs:
        run = read_run(d)
        if not run.metrics:
            continue
        row = min(run.metrics, key=lambda m: m["test_error"]) if metric == "best" else run.final
        cell = cells.setdefault((run.config["algorithm"], run.config["dataset"]), {"test": [], "train": [], "top5": []})
        cell["test"].append(row["test_error"])
        cell["train"].append(row["train_error"])
        if "test_top5_error" in row:
            cell["top5"].append(row["test_top5_error"])
    if not cells:
        raise DataError("none of the runs has finished an epoch: nothing to tabulate")
    order_a, order_d = algorithm_names(), dataset_names()
    algos = sorted({a for a, _ in cells}, key=lambda a: order_a.index(a) if a in order_a else len(order_a))
    sets = sorted({d for _, d in cells}, key=lambda d: order_d.index(d) if d in order_d else len(order_d))
    top5 = {d for d in sets if _many_classes(d)}  # 100- and 1000-class sets also get a top-5 test column
    columns = [f"{d} test | {d} top-5 test | {d} train" if d in top5 else f"{d} test | {d} train" for d in sets]
    header = "| algorithm | " + " | ".join(columns) + " |"
    lines = [header, "|" + " --- |" * (1 + 2 * len(sets) + len(top5))]
    for a in algos:
        parts = []
        for d in sets:
            cell = cells.get((a, d), {"test": [], "train": [], "top5": []})
            parts += [_cell(cell["test"])] + ([_cell(cell["top5"])] if d in top5 else []) + [_cell(cell["train"])]
        lines.append(f"| {a} | " + " | ".join(parts) + " |")
    seeds = sorted({len(c["test"]) for c in cells.values()})
    lines.append("")
    lines.append(f"Error rates in % ({metric} epoch), mean ± sample std over {'/'.join(map(str, seeds))} seed(s).")
    return "\n".join(lines)
