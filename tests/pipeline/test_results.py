"""Results: the top-5 test error reaches the tables and plots for 100- and 1000-class data sets (PCN paper)."""

import json

import pytest

from eqprop.training.results import plot_runs, results_table


def fake_run(root, name, dataset, errors):
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"algorithm": "PC-CEP", "dataset": dataset, "seed": 0}))
    rows = [
        dict(epoch=i + 1, test_error=e, test_top5_error=e / 3, train_error=e / 2, test_loss=1.0, train_loss=1.0)
        for i, e in enumerate(errors)
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_table_has_a_top5_column_for_100_and_1000_class_sets_only(tmp_path):
    runs = [fake_run(tmp_path, "a", "cifar100", [0.5, 0.36]), fake_run(tmp_path, "b", "mnist", [0.1, 0.01])]
    table = results_table(runs)
    header = table.splitlines()[0]
    assert header == "| algorithm | mnist test | mnist train | cifar100 test | cifar100 top-5 test | cifar100 train |"
    assert "| PC-CEP | 1.00 | 0.50 | 36.00 | 12.00 | 18.00 |" in table
    imagenet32 = results_table([fake_run(tmp_path, "c", "imagenet32", [0.6])])
    assert "imagenet32 top-5 test" in imagenet32 and "| PC-CEP | 60.00 | 20.00 | 30.00 |" in imagenet32


@pytest.mark.parametrize("dataset, panels", [("cifar100", 3), ("mnist", 2)])
def test_plot_adds_a_top5_panel_for_many_classes(tmp_path, dataset, panels, monkeypatch):
    seen = {}
    import matplotlib.figure

    original = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        seen["titles"] = [ax.get_title() for ax in fig.axes]
        seen["lines"] = [len(ax.lines) for ax in fig.axes]
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    run = fake_run(tmp_path, "a", dataset, [0.5, 0.4])
    out = plot_runs([run], tmp_path / "p.png")
    assert out.read_bytes()[:4] == b"\x89PNG" and len(seen["titles"]) == panels
    if panels == 3:
        assert "top-5" in seen["titles"][2] and seen["lines"][2] == 1


def test_plot_labels_the_error_axis_and_tells_runs_with_one_label_apart(tmp_path, monkeypatch):
    """Curves inside one decade (20 % to 70 %) still get labelled ticks on the log error axis, and two runs of the
    same algorithm, data set and seed get their directories' names in the legend."""
    seen = {}
    import matplotlib.figure

    original = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        fig.canvas.draw()
        ax_err = fig.axes[0]
        lo, hi = ax_err.get_ylim()
        seen["ticks"] = [
            t.get_text() for t in ax_err.get_yticklabels() if t.get_text() and lo <= t.get_position()[1] <= hi
        ]
        (legend,) = fig.legends  # one legend, outside the axes: a colour per run, then the two line styles
        seen["legend"] = [t.get_text() for t in legend.get_texts()]
        seen["styles"] = [h.get_linestyle() for h in legend.legend_handles]
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    runs = [fake_run(tmp_path, name, "mnist", [0.7, 0.45, 0.4]) for name in ("k5", "k6")]
    plot_runs(runs, tmp_path / "p.png")
    assert len(seen["ticks"]) >= 2 and all(float(t) > 0 for t in seen["ticks"])
    assert seen["legend"] == ["PC-CEP mnist seed 0 (k5)", "PC-CEP mnist seed 0 (k6)", "test (solid)", "train (dashed)"]
    assert seen["styles"][-2:] == ["-", "--"]

    # runs of one algorithm that differ in their model are labelled by it
    for name, model in (("dchn", "dchn"), ("mlp", "mlp")):
        d = fake_run(tmp_path, name, "digits", [0.3, 0.2])
        (d / "config.json").write_text(json.dumps({"algorithm": "CEP", "dataset": "digits", "seed": 0, "model": model}))
    plot_runs([tmp_path / "dchn", tmp_path / "mlp"], tmp_path / "m.png")
    assert seen["legend"][:2] == ["CEP (model=dchn) digits seed 0", "CEP (model=mlp) digits seed 0"]


def test_plot_puts_a_diverged_runs_loss_on_a_log_axis(tmp_path, monkeypatch):
    """One run's loss at 1e28 (a collapse) next to losses near 1: the loss axis turns logarithmic, so the other
    curves stay readable; without such a spread it stays linear."""
    import matplotlib.figure

    scales = []
    original = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        scales.append(fig.axes[1].get_yscale())
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    good = fake_run(tmp_path, "good", "mnist", [0.5, 0.4])
    bad = fake_run(tmp_path, "bad", "mnist", [0.5, 0.9])
    rows = [json.loads(line) for line in (bad / "metrics.jsonl").read_text().splitlines()]
    rows[1]["train_loss"] = rows[1]["test_loss"] = 1e28
    (bad / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_runs([good], tmp_path / "a.png")
    plot_runs([good, bad], tmp_path / "b.png")
    assert scales == ["linear", "log"]


def test_mean_over_seeds_draws_one_colour_per_setting_with_the_mean_a_band_and_faint_seeds(tmp_path, monkeypatch):
    """Three seeds of CEP and one of TBP: CEP's bold test curve is the mean of the seeds at each epoch, its band
    spans their min and max, each seed is drawn faint in the same colour; TBP (one seed) is a plain line."""
    import matplotlib.collections
    import matplotlib.figure

    seen = {}
    original = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        ax = fig.axes[0]
        seen["lines"] = [(line.get_color(), line.get_alpha(), line.get_linewidth(), line.get_linestyle(),
                          list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines]  # fmt: skip
        seen["bands"] = [c for c in ax.collections if isinstance(c, matplotlib.collections.PolyCollection)]
        seen["legend"] = [t.get_text() for t in fig.legends[0].get_texts()]
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    errors = {0: [0.5, 0.3, 0.2], 1: [0.6, 0.2, 0.1], 2: [0.4, 0.4, 0.3]}
    runs = []
    for seed, errs in errors.items():
        d = fake_run(tmp_path, f"cep{seed}", "mnist", errs)
        (d / "config.json").write_text(json.dumps({"algorithm": "CEP", "dataset": "mnist", "seed": seed}))
        runs.append(d)
    tbp = fake_run(tmp_path, "tbp", "mnist", [0.5, 0.25, 0.15])
    (tbp / "config.json").write_text(json.dumps({"algorithm": "TBP", "dataset": "mnist", "seed": 0}))
    plot_runs([*runs, tbp], tmp_path / "s.png", mean_over_seeds=True)

    cep_colour = seen["lines"][0][0]
    bold = [line for line in seen["lines"] if line[0] == cep_colour and line[2] == 2.0 and line[3] == "-"]
    (mean,) = bold
    expected = [100 * sum(e[i] for e in errors.values()) / 3 for i in range(3)]
    assert mean[4] == [1, 2, 3] and mean[5] == pytest.approx(expected)
    faint = [line for line in seen["lines"] if line[0] == cep_colour and line[1] == 0.35 and line[3] == "-"]
    assert sorted(tuple(line[5]) for line in faint) == sorted(tuple(100 * e for e in errs) for errs in errors.values())
    # the test-error band of CEP spans the seeds' min and max at every epoch
    band = seen["bands"][0].get_paths()[0].vertices
    for i, epoch in enumerate([1, 2, 3]):
        ys = band[abs(band[:, 0] - epoch) < 1e-9][:, 1]
        assert min(ys) == pytest.approx(100 * min(e[i] for e in errors.values()))
        assert max(ys) == pytest.approx(100 * max(e[i] for e in errors.values()))
    tbp_lines = [line for line in seen["lines"] if line[0] != cep_colour]
    assert len(tbp_lines) == 2 and all(line[1] is None for line in tbp_lines)  # test and train, plain
    assert seen["legend"][:2] == ["CEP mnist (mean of 3 seeds)", "TBP mnist (seed 0)"]
    assert "min-max over seeds (band)" in seen["legend"]


def test_plot_draws_the_validation_curves_of_a_blind_run(tmp_path, monkeypatch):
    """A tuning trial (validation split, evaluate_test=false) has no test curve: its validation error and loss are
    drawn dotted, with a legend entry, beside the training curves."""
    seen = {}
    import matplotlib.figure

    original = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        seen["styles"] = [[line.get_linestyle() for line in ax.lines] for ax in fig.axes]
        seen["values"] = [line.get_ydata().tolist() for line in fig.axes[0].lines if line.get_linestyle() == ":"]
        seen["legend"] = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    d = tmp_path / "trial"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"algorithm": "CEP", "dataset": "mnist28", "seed": 0}))
    rows = [
        dict(epoch=1, train_error=0.2, train_loss=0.5, val_error=0.25, val_loss=0.6),
        dict(epoch=2, train_error=0.1, train_loss=0.3, val_error=0.15, val_loss=0.4),
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_runs([d], tmp_path / "p.png")
    assert seen["styles"] == [["--", ":"], ["--", ":"]]
    assert seen["values"] == [pytest.approx([25.0, 15.0])] and "validation (dotted)" in seen["legend"]


def test_plot_labels_name_the_runs_in_their_order_and_wrong_counts_are_refused(tmp_path, monkeypatch):
    """--label / --names: the legend reads the given names, one per run in order; a count that does not match the
    runs, or labels with --mean, is a clear error, not a silently shifted legend."""
    import matplotlib.figure

    from eqprop.cli import main
    from eqprop.errors import ConfigError

    seen = {}
    original = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        (legend,) = fig.legends
        seen["legend"] = [t.get_text() for t in legend.get_texts()]
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    runs = [fake_run(tmp_path, name, "mnist", [0.7, 0.45]) for name in ("fast_ep", "dhn")]
    plot_runs(runs, tmp_path / "p.png", labels=["fast DRN-1H", "DHN-1H"])
    assert seen["legend"][:3] == ["fast DRN-1H", "DHN-1H", "test (solid)"]
    assert main(["plot", *map(str, runs), "--names", "-o", str(tmp_path / "n.png")]) == 0
    assert seen["legend"][:2] == ["fast_ep", "dhn"]
    with pytest.raises(ConfigError, match="1 labels for 2 runs"):
        plot_runs(runs, tmp_path / "q.png", labels=["only one"])
    with pytest.raises(ConfigError, match="mean"):
        plot_runs(runs, tmp_path / "q.png", mean_over_seeds=True, labels=["a", "b"])
