"""Faults and bad input (issue 18): a run directory belongs to one run, and every damaged file, unwritable path or
bad value ends in one line naming it (exit code 2) with no earlier run's files changed."""

import gzip
import json
import math
import os
import pickle
import re
import subprocess
import sys
import textwrap
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from eqprop.cli import main, parse_args
from eqprop.errors import ConfigError, DataError, RunError
from eqprop.training.config import TrainConfig, load_config, parse_overrides
from eqprop.training.results import plot_runs, read_run, results_table
from eqprop.training.study import run_study
from eqprop.training.trainer import Trainer

FAST = [
    "free_iterations=4",
    "nudged_iterations=2",
    "channels=[4,8,8]",
    "limit_train=64",
    "limit_test=32",
    "batch_size=32",
    "progress=false",
    "tensorboard=false",
]


def snapshot(folder):
    """Every file under ``folder`` with its bytes (the .lock file's pid aside)."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-epoch run; tests copy it before damaging it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *FAST, "epochs=2", f"out_dir={out}"]) == 0
    return out


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------- a run directory, one run
def test_an_existing_run_directory_is_refused_and_left_unchanged(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    assert main(["train", *FAST, "epochs=1", f"out_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert str(run) in err and "--resume" in err and "--overwrite" in err and err.count("\n") == 1
    assert snapshot(run) == before

    # other files than a run: refused too, and --overwrite does not clear a folder that is not a run
    other = tmp_path / "notes"
    other.mkdir()
    (other / "paper.tex").write_text("keep me")
    assert main(["train", *FAST, "epochs=1", f"out_dir={other}", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite deletes only a run directory that eqprop made" in err and "nothing was deleted" in err
    assert str(other) in err and (other / "paper.tex").read_text() == "keep me"

    # --overwrite replaces an earlier run with a fresh one
    assert main(["train", *FAST, "epochs=1", f"out_dir={run}", "--overwrite"]) == 0
    assert [r["epoch"] for r in read_run(run).metrics] == [1]


def test_a_directory_in_use_by_another_process_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from pathlib import Path
                from eqprop.training.run_directory import lock_directory
                lock = lock_directory(Path({str(run)!r}))
                print("locked", flush=True)
                sys.stdin.readline()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", *FAST, "epochs=1", f"out_dir={run}"]) == 2
        err = capsys.readouterr().err
        assert f"{run} is in use by another eqprop process (pid {holder.pid})" in err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
        (tmp_path / "exp.yaml").write_text("epochs: 1\n")
        with pytest.raises(RunError, match="in use by another eqprop study"):
            run_study(tmp_path / "exp.yaml", run, overrides=FAST, log=lambda s: None)
    finally:
        holder.communicate("\n", timeout=30)
    # the lock goes with the process that held it: the directory is usable again
    assert main(["train", *FAST, "epochs=1", f"out_dir={run}"]) == 0


@pytest.mark.slow
def test_two_processes_started_at_once_on_one_directory(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "eqprop", "train", *FAST, "epochs=1", f"out_dir={run}"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    err = next(e for p, (_, e) in zip(procs, outs) if p.returncode == 2)
    assert str(run) in err and ("in use" in err or "already holds" in err)
    assert [r["epoch"] for r in read_run(run).metrics] == [1]  # one run's epochs, not two


def test_an_unfinished_checkpoint_write_is_cleaned_up_on_resume(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["optim"]["epochs"] = 3  # an unfinished run (a finished one is not resumed)
    (run / "config.json").write_text(json.dumps(config))
    (run / "checkpoint_last.pt.tmp").write_bytes(b"half a checkpoint")
    lines = []
    Trainer.resume(run, log=lines.append)
    assert not (run / "checkpoint_last.pt.tmp").exists() and any("unfinished checkpoint" in s for s in lines)


# ------------------------------------------------------------------------------------- damaged checkpoints
@pytest.mark.parametrize("damage", ["truncate", "text"])
def test_a_damaged_last_checkpoint_is_named_and_the_best_one_offered(finished, tmp_path, capsys, damage):
    run = copy_run(finished, tmp_path / "run")
    last = run / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[:1000] if damage == "truncate" else b"not a checkpoint\n")
    before = snapshot(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{last} is damaged or not a checkpoint" in err and f"--resume {run} --checkpoint best" in err
    assert err.count("\n") == 1 and snapshot(run) == before
    assert main(["eval", str(run), "--checkpoint", "last"]) == 2
    assert f"eqprop eval {run} --checkpoint best" in capsys.readouterr().err

    # resuming from the best checkpoint cuts the metrics back to its epoch, then trains on
    best_epoch = torch.load(run / "checkpoint_best.pt", weights_only=False)["epoch"]
    assert main(["train", "--resume", str(run), "--checkpoint", "best", "epochs=2"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, best_epoch + 1)) + list(range(best_epoch + 1, 3))


def test_both_checkpoints_damaged_and_no_checkpoint_at_all(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        (run / name).write_bytes(b"\x80\x02garbage")
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint_best.pt is damaged" in err and "intact" not in err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_resume_of_a_run_whose_config_no_longer_builds_its_network(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["model"]["channels"] = [4, 8, 16]
    config["optim"]["epochs"] = 3  # unfinished, so that it would resume
    (run / "config.json").write_text(json.dumps(config))
    before = snapshot(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint_last.pt does not fit the network" in err and "size mismatch" in err
    assert snapshot(run) == before


# ------------------------------------------------------------------------------------- data files
def _write_idx(path, arr):
    import struct

    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(header + arr.tobytes())


def _mnist(root, n_images=6, n_labels=6, gz=False):
    rng = np.random.default_rng(0)
    root.mkdir(exist_ok=True)
    sfx = ".gz" if gz else ""
    for split in ("train", "t10k"):
        _write_idx(root / f"{split}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_images, 28, 28), dtype=np.uint8))
        _write_idx(root / f"{split}-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_labels, dtype=np.uint8))


@pytest.mark.parametrize("short", ["labels", "images"])
def test_images_and_labels_must_agree_in_count(tmp_path, capsys, short):
    _mnist(tmp_path / "mnist", n_images=6 if short == "labels" else 5, n_labels=5 if short == "labels" else 6)
    out = tmp_path / "run"
    assert main(["train", "dataset=mnist", f"data_dir={tmp_path / 'mnist'}", *FAST, f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert f"train-{short}-idx" in err and "is short" in err and "5 entries" in err
    assert not out.exists()  # found before the run directory is made


def test_a_truncated_gz_file_is_named(tmp_path, capsys):
    _mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    assert main(["train", "dataset=mnist", f"data_dir={tmp_path}", *FAST, f"out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert f"{path} is truncated or damaged" in err and err.count("\n") == 1


def test_a_damaged_cifar_batch_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            x = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
            pickle.dump({"data": x, "labels": [1, 2, 3]}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f, protocol=2)
    damaged = folder / "data_batch_3"
    damaged.write_bytes(damaged.read_bytes()[:500])
    cfg = parse_overrides(["dataset=cifar10", f"data_dir={tmp_path}", "verify_checksums=false"])
    with pytest.raises(DataError, match=f"{damaged} is truncated or damaged"):
        Trainer(cfg)


def test_download_without_network_names_the_cause(tmp_path, monkeypatch, capsys):
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "dataset=mnist", "download=true", f"data_dir={tmp_path}", *FAST]) == 2
    err = capsys.readouterr().err
    assert "download" in err and "name resolution" in err and "copy the files" in err
    assert list((tmp_path / "runs").iterdir()) == []  # the run never started: no empty run directory is left


# ------------------------------------------------------------------------------------- paths and the command line
def test_unwritable_output_paths_are_one_line_errors(finished, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["train", *FAST, f"out_dir={blocker / 'run'}"]) == 2
    assert f"cannot create the run directory {blocker / 'run'}" in capsys.readouterr().err
    assert main(["plot", str(finished), "-o", str(blocker / "curves.png")]) == 2
    assert "-o" in capsys.readouterr().err
    assert main(["table", str(finished), "-o", str(blocker / "t.md")]) == 2
    assert "cannot create" in capsys.readouterr().err
    assert main(["study", "nonexistent.yaml"]) == 2


def test_home_and_environment_variables_are_expanded_in_path_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("EQPROP_DATA", str(tmp_path / "sets"))
    cfg = parse_overrides(["data_dir=~/data", "out_dir=$EQPROP_DATA/runs/a", "teacher=${EQPROP_DATA}/t.pt"])
    assert cfg.data_dir == f"{tmp_path}/data" and cfg.out_dir == f"{tmp_path}/sets/runs/a"
    assert cfg.teacher == f"{tmp_path}/sets/t.pt"
    (tmp_path / "exp.yaml").write_text("data: {data_dir: ~/mnist}\n")
    assert load_config(tmp_path / "exp.yaml").data_dir == f"{tmp_path}/mnist"
    with pytest.raises(ConfigError, match="'data_dir'.*EQPROP_UNSET"):
        parse_overrides(["data_dir=$EQPROP_UNSET/x"])


def test_overrides_may_come_before_and_after_options(tmp_path):
    args = parse_args(["train", "dataset=mnist", "--data-dir", "D", "out_dir=X", "epochs=2"])
    assert args.items == ["dataset=mnist", "out_dir=X", "epochs=2"] and args.data_dir == "D"
    args = parse_args(["train", "--data-dir", "D", "exp.yaml", "epochs=2"])
    assert args.items == ["exp.yaml", "epochs=2"]
    args = parse_args(["eval", "RUN", "--checkpoint", "last", "device=cpu"])
    assert args.overrides == ["device=cpu"]
    with pytest.raises(SystemExit) as exc:
        parse_args(["train", "epochs=2", "--no-such-option"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "item, key",
    [
        ("beta=.nan", "beta"),
        ("lrs=[0.1,.inf]", "lrs[1]"),
        ("gains=[-.inf]", "gains[0]"),
        ("momentum=.nan", "momentum"),
        ("eta_min=.inf", "eta_min"),
    ],
)
def test_non_finite_values_are_rejected_at_validation(item, key):
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'") + ".*finite"):
        parse_overrides([item])


def test_help_config_shows_readable_types(capsys):
    assert main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "<class" not in out and "list of float" in out and "int or null" in out and "threads" in out


def test_help_and_the_parser_do_not_import_torch():
    code = textwrap.dedent(
        """
        import sys
        from eqprop.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        import eqprop
        assert "torch" not in sys.modules, "torch was imported"
        assert eqprop.TrainConfig.__name__ == "TrainConfig" and "torch" in sys.modules  # names load on use
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_counting_parameters_on_the_meta_device_imports_no_dynamo():
    """Every run counts its model's parameters on the meta device before building it (the memory check). An
    operation with a Python meta kernel there (torch.cat, a division) imports torch._dynamo, seconds of every start;
    the count itself is checked against the layer sizes written out by hand."""
    code = textwrap.dedent(
        """
        import sys
        from eqprop.training.config import TrainConfig, load_config, parse_overrides
        from eqprop.training.trainer import count_parameters
        drn = count_parameters(load_config("configs/resistive/fast_drn/1h_ep.yaml"), (1, 28, 28), 10)
        assert drn == 2 * 784 * 1024 + 1024 + 1024 * 10 + 10, drn  # conductances and biases, sources (x, -x)
        fhn_config = parse_overrides(["model=fhn", "hidden=[64]", "gains=[0.5,0.5]"], TrainConfig())
        fhn = count_parameters(fhn_config, (1, 8, 8), 10)
        assert fhn == 64 * 64 + 64 + 64 * 10 + 10, fhn  # weights and bias currents (a, b, eps are buffers)
        count_parameters(load_config("configs/rhel/digits_rhel.yaml"), (1, 8, 8), 10)
        count_parameters(TrainConfig(), (1, 8, 8), 10)
        assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported"
        """
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]


# ------------------------------------------------------------------------------------- what a user misses
def test_a_run_ends_with_a_summary_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST, "epochs=2", f"out_dir={out}"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    rows = read_run(out).metrics
    best = min(rows, key=lambda r: r["test_error"])
    assert last.startswith("eqprop: done after 2 epochs: best test error")
    assert f"{100 * best['test_error']:.2f}% (epoch {best['epoch']})" in last
    assert f"final {100 * rows[-1]['test_error']:.2f}%" in last and "wall time" in last and str(out) in last


def test_extend_trains_a_finished_run_further_as_a_new_run(finished, tmp_path):
    src = copy_run(finished, tmp_path / "run")
    before = snapshot(src)
    lines = []
    trainer = Trainer.extend(src, ["epochs=4"], log=lines.append)
    # the cosine schedule of the new config (T_max = 4), positioned after the 2 epochs trained
    cfg = trainer.cfg
    for group, lr0 in zip(trainer.optimizer.param_groups, trainer.cfg.lrs * 4):
        want = cfg.eta_min + (lr0 - cfg.eta_min) * (1 + math.cos(math.pi * 2 / 4)) / 2
        assert group["lr"] == pytest.approx(want, rel=1e-9)
    trainer.fit()
    new = tmp_path / "run_extended_4ep"
    assert trainer.out == new and snapshot(src) == before
    old_rows, new_rows = read_run(src).metrics, read_run(new).metrics
    assert [r["epoch"] for r in new_rows] == [1, 2, 3, 4] and new_rows[:2] == old_rows
    record = json.loads((new / "extends.json").read_text())
    assert record["extends"] == str(src) and record["epoch"] == 2 and record["changed"] == {"epochs": [2, 4]}

    with pytest.raises(ConfigError, match="'epochs' must exceed the 2 epochs"):
        Trainer.extend(src, ["epochs=2", f"out_dir={tmp_path / 'x'}"])


def test_table_groups_by_data_set_and_counts_each_seed_once(tmp_path):
    def run(name, algorithm, dataset, seed, error, epochs=2):
        d = tmp_path / name
        d.mkdir()
        config = {"algorithm": algorithm, "dataset": dataset, "seed": seed, "epochs": epochs, "out_dir": str(d)}
        (d / "config.json").write_text(json.dumps(config))
        row = dict(epoch=1, test_error=error, train_error=error, test_loss=1.0, train_loss=1.0)
        (d / "metrics.jsonl").write_text(json.dumps(row) + "\n")
        return d

    dirs = [
        run("a", "CEP", "digits", 0, 0.10),
        run("b", "CEP", "digits", 1, 0.20),
        run("c", "CEP", "mnist", 0, 0.05),
        run("d", "CEP", "mnist", 0, 0.03),  # seed 0 again: counted once, the newest
        run("e", "NEP", "mnist", 1, 0.04, epochs=5),
    ]
    os.utime(dirs[2] / "metrics.jsonl", (1, 1))
    table = results_table(dirs)
    assert "| CEP | 15.00 ± 7.07 | 15.00 ± 7.07 | 3.00 | 3.00 |" in table
    assert "- digits: seeds per cell: CEP 2 (0, 1)" in table
    assert "- mnist: seeds per cell: NEP 1 (1); CEP 1 (0)" in table  # rows in Table 1 order
    assert f"seed 0 of CEP on mnist ran 2 times ({dirs[2]}, {dirs[3]}); the table counts it once" in table
    assert f"- CEP on digits merges {dirs[0]}, {dirs[1]}" in table
    # runs that differ in a setting besides the seed are rows of their own, never repeats of one seed
    mixed = results_table([dirs[0], dirs[1], run("f", "CEP", "digits", 2, 0.3, epochs=9)])
    assert "| CEP (epochs=2) | 15.00 ± 7.07 | 15.00 ± 7.07 |" in mixed and "| CEP (epochs=9) | 30.00 | 30.00 |" in mixed
    assert "- CEP has 2 rows: its runs differ in ['epochs'], not only in the seed" in mixed
    assert "- digits: seeds per cell: CEP (epochs=2) 2 (0, 1); CEP (epochs=9) 1 (2)" in mixed


def test_table_keeps_models_apart_and_names_them(tmp_path):
    """``eqprop table runs/dchn runs/mlp`` with the same algorithm, data set and seed: two rows, labelled by model."""

    def run(name, model, hidden, seed, error):
        d = tmp_path / name
        d.mkdir()
        config = {"algorithm": "CEP", "dataset": "digits", "seed": seed, "model": model, "hidden": hidden}
        (d / "config.json").write_text(json.dumps(config))
        row = dict(epoch=1, test_error=error, train_error=error / 2, test_loss=1.0, train_loss=1.0)
        (d / "metrics.jsonl").write_text(json.dumps(row) + "\n")
        return d

    dchn, mlp = run("dchn", "dchn", [256], 0, 0.04), run("mlp", "mlp", [64], 0, 0.08)
    table = results_table([dchn, mlp])
    assert "| CEP (model=dchn, hidden=[256]) | 4.00 | 2.00 |" in table
    assert "| CEP (model=mlp, hidden=[64]) | 8.00 | 4.00 |" in table
    assert "ran 2 times" not in table and "merges" not in table


def test_plots_show_zero_errors_single_epochs_and_whole_epochs(tmp_path, monkeypatch):
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"algorithm": "CEP", "dataset": "digits", "seed": 0}))
    row = dict(epoch=1, test_error=0.0, train_error=0.0, test_loss=0.1, train_loss=0.1)
    (d / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    figures = []
    monkeypatch.setattr("eqprop.training.results._save", lambda fig, path: figures.append(fig) or path)
    plot_runs([d], tmp_path / "c.png")
    ax_err = figures[0].axes[0]
    assert ax_err.get_yscale() == "symlog"
    assert all(line.get_marker() == "o" for line in ax_err.get_lines())  # one epoch still shows
    assert ax_err.xaxis.get_major_locator()._integer


def test_threads_and_deterministic_mode(tmp_path):
    threads, flag = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        cfg = parse_overrides([*FAST, "epochs=1", "threads=1", "deterministic=true"])
        runs = [Trainer(cfg, log=lambda s: None) for _ in range(2)]
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        histories = [t.fit() for t in runs]
        drop = ("time", "train_time")
        assert [{k: v for k, v in r.items() if k not in drop} for r in histories[0]] == [
            {k: v for k, v in r.items() if k not in drop} for r in histories[1]
        ]
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(flag)
    with pytest.raises(ConfigError, match="'threads' must be >= 1"):
        TrainConfig(threads=0)


# ------------------------------------------------------------------------------------- studies
def test_a_study_rerun_with_a_changed_override_is_refused_or_rerun_explicitly(tmp_path, monkeypatch):
    (tmp_path / "exp.yaml").write_text("epochs: 2\n")
    study = tmp_path / "study"
    run_dir = study / "CEP_digits_seed0"
    run_dir.mkdir(parents=True)
    saved = parse_overrides([*FAST, "epochs=2", f"out_dir={run_dir}"])
    (run_dir / "config.json").write_text(json.dumps(saved.to_dict()))
    (run_dir / "checkpoint_last.pt").write_bytes(b"stand-in")
    before = snapshot(study)
    with pytest.raises(RunError, match=r"CEP_digits_seed0 \(epochs: 2 -> 3\).*--overwrite"):
        run_study(tmp_path / "exp.yaml", study, overrides=[*FAST, "epochs=3"], log=lambda s: None)
    assert snapshot(study) == before

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 1)
    run_study(tmp_path / "exp.yaml", study, overrides=[*FAST, "epochs=3"], log=lambda s: None, overwrite=True)
    assert "--overwrite" in calls[0] and "--resume" not in calls[0]
    calls.clear()
    run_study(tmp_path / "exp.yaml", study, overrides=[*FAST, "epochs=2"], log=lambda s: None)
    assert "--resume" in calls[0]  # the same config: the run resumes


@pytest.mark.parametrize("content", ["{not json", '{"algorithm": "XEP"}'])
def test_a_study_over_a_run_with_an_unreadable_config_names_it_and_touches_nothing(tmp_path, content):
    (tmp_path / "exp.yaml").write_text("epochs: 2\n")
    study = tmp_path / "study"
    run_dir = study / "CEP_digits_seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(content)
    before = snapshot(study)
    with pytest.raises(RunError, match=r"CEP_digits_seed0/config.json.*move that run out of the study"):
        run_study(tmp_path / "exp.yaml", study, overrides=FAST, log=lambda s: None)
    assert snapshot(study) == before


# ------------------------------------------------------------------------------------- what --overwrite may delete
def test_overwrite_never_deletes_a_folder_that_eqprop_did_not_make(tmp_path, capsys):
    """A project that happens to hold a config.json is not a run: --overwrite refuses it and deletes nothing."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('hello')\n")
    (project / "config.json").write_text('{"name": "web app"}\n')
    (project / "notes.txt").write_text("keep\n")
    before = snapshot(project)
    assert main(["train", *FAST, "epochs=1", f"out_dir={project}", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert str(project) in err and ".eqprop-run" in err and "nothing was deleted" in err and err.count("\n") == 1
    assert snapshot(project) == before


def test_overwrite_deletes_only_what_eqprop_wrote_in_its_own_run(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    assert (run / ".eqprop-run").is_file()
    (run / "my_analysis.ipynb").write_text("{}")
    (run / "figures").mkdir()
    (run / "figures" / "fig1.pdf").write_bytes(b"%PDF")
    assert main(["train", *FAST, "epochs=1", f"out_dir={run}", "--overwrite"]) == 0
    assert (run / "my_analysis.ipynb").read_text() == "{}" and (run / "figures" / "fig1.pdf").read_bytes() == b"%PDF"
    assert [r["epoch"] for r in read_run(run).metrics] == [1]  # the new run's files replaced the old ones


# ------------------------------------------------------------------------------------- bad values and files
def test_a_section_given_a_scalar_says_it_is_a_section(capsys):
    assert main(["train", "relax=5"]) == 2
    err = capsys.readouterr().err
    assert "'relax' is a config section" in err and "relax.KEY=VALUE" in err and "free_iterations" in err


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["image_size=100000"], "image_size=100000"),
        (["channels=[1000000000000,8,8]"], "channels=[1000000000000, 8, 8]"),
        (["model=mlp", "hidden=[100000000000]", "gains=[1,1]"], "hidden=[100000000000]"),
    ],
)
def test_sizes_beyond_the_machines_memory_are_refused_before_allocation(tmp_path, capsys, overrides, named):
    out = tmp_path / "run"
    assert main(["train", *overrides, "epochs=1", f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert named in err and "more than this machine's" in err and "GiB of memory" in err and err.count("\n") == 1
    assert not out.exists()


def test_a_config_file_that_is_not_utf8_or_is_a_directory(tmp_path, capsys):
    bad = tmp_path / "exp.yaml"
    bad.write_bytes(b"epochs: 2\nalgorithm: C\xe9P\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not UTF-8" in err and "byte 22 (0xe9)" in err
    assert main(["train", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"config file {tmp_path} is a directory" in err and err.count("\n") == 1


def test_plot_and_table_into_an_existing_directory(finished, tmp_path, capsys):
    folder = tmp_path / "figures"
    folder.mkdir()
    assert main(["plot", str(finished), "-o", str(folder)]) == 0
    assert f"wrote {folder / 'curves.png'}" in capsys.readouterr().out and (folder / "curves.png").stat().st_size > 0
    assert main(["table", str(finished), "-o", str(folder)]) == 0
    captured = capsys.readouterr()
    assert f"wrote {folder / 'table.md'}" in captured.err and (folder / "table.md").read_text() == captured.out


def test_an_images_file_of_the_wrong_shape_is_named(tmp_path, capsys):
    _mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    _write_idx(images, np.zeros(6, dtype=np.uint8))  # a 1-D array where the images belong
    out = tmp_path / "run"
    assert main(["train", "dataset=mnist", f"data_dir={tmp_path}", *FAST, f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert str(images) in err and "(N, rows, columns)" in err and "shape (6,)" in err and not out.exists()


def test_a_label_out_of_range_is_named_before_any_run_directory_exists(tmp_path, capsys):
    _mnist(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    _write_idx(labels, np.array([1, 2, 3, 200, 4, 5], dtype=np.uint8))
    out = tmp_path / "run"
    assert main(["train", "dataset=mnist", f"data_dir={tmp_path}", *FAST, f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert str(labels) in err and "label 200 at index 3" in err and "0..9" in err and not out.exists()


# ------------------------------------------------------------------------------------- finished runs, full disks
def test_resume_of_a_finished_run_points_to_extend_and_changes_nothing(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is finished" in err and f"--extend {run} epochs=N" in err and err.count("\n") == 1
    assert snapshot(run) == before


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, capsys):
    """The checkpoint of epoch 2 is written into /dev/full (a real ENOSPC from the kernel)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    from eqprop.training.callbacks import Callback

    run = tmp_path / "run"

    class FillDisk(Callback):
        def on_epoch_start(self, trainer, epoch):
            if epoch == 2:
                (run / "checkpoint_last.pt.tmp").symlink_to("/dev/full")

    cfg = parse_overrides([*FAST, "epochs=3", f"out_dir={run}"])
    with pytest.raises(RunError) as info:
        Trainer(cfg, log=lambda s: None, callbacks=[FillDisk()]).fit()
    message = str(info.value)
    assert message.startswith("no space left on ") and f"while writing {run / 'checkpoint_last.pt'}" in message
    assert "the previous checkpoint_last.pt is intact" in message and "resume" in message
    assert torch.load(run / "checkpoint_last.pt", weights_only=False)["epoch"] == 1
    assert not (run / "checkpoint_last.pt.tmp").exists()


# ------------------------------------------------------------------------------------- studies and run names
def test_a_study_refuses_zero_jobs_and_a_run_directory_as_its_folder(finished, tmp_path, capsys):
    (tmp_path / "exp.yaml").write_text("epochs: 1\n")
    assert main(["study", str(tmp_path / "exp.yaml"), *FAST, "--jobs", "0", "--out", str(tmp_path / "s")]) == 2
    assert "--jobs" in capsys.readouterr().err and not (tmp_path / "s").exists()
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    assert main(["study", str(tmp_path / "exp.yaml"), *FAST, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run} is a run directory" in err and "not a study" in err and snapshot(run) == before


def test_a_study_leaves_its_finished_runs_as_they_are(finished, tmp_path, monkeypatch):
    study = tmp_path / "study"
    copy_run(finished, study / "CEP_digits_seed0")
    (tmp_path / "exp.yaml").write_text("epochs: 2\n")
    saved = json.loads((finished / "config.json").read_text())
    before = snapshot(study / "CEP_digits_seed0")
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 1)
    runs = run_study(tmp_path / "exp.yaml", study, overrides=[*FAST, "epochs=2"], log=lambda s: None)
    assert saved["optim"]["epochs"] == 2 and calls == [] and [r.returncode for r in runs] == [0]
    assert snapshot(study / "CEP_digits_seed0") == before


def test_a_studys_status_tells_finished_running_stopped_waiting_and_foreign_runs_and_starts_nothing(
    finished, tmp_path, capsys
):
    from eqprop.training.run_directory import lock_directory
    from eqprop.training.study import study_status

    (tmp_path / "exp.yaml").write_text("epochs: 2\n")
    study = tmp_path / "study"
    copy_run(finished, study / "CEP_digits_seed0")
    stopped = copy_run(finished, study / "CEP_digits_seed1")
    rows = (stopped / "metrics.jsonl").read_text().splitlines()
    (stopped / "metrics.jsonl").write_text(rows[0] + "\n")  # one of its two epochs
    cfg = json.loads((stopped / "config.json").read_text())
    cfg["run"]["seed"] = 1
    (stopped / "config.json").write_text(json.dumps(cfg))
    foreign = copy_run(finished, study / "CEP_digits_seed3")
    cfg = json.loads((foreign / "config.json").read_text())
    cfg["optim"]["epochs"] = 5
    (foreign / "config.json").write_text(json.dumps(cfg))
    before = snapshot(study)
    args = ["study", str(tmp_path / "exp.yaml"), *FAST, "epochs=2", "--seeds", "0", "1", "2", "3", "--out", str(study)]
    assert main([*args, "--status"]) == 0
    out = capsys.readouterr().out
    assert "| CEP_digits_seed1 | stopped | 1 / 2 |" in out and "| CEP_digits_seed2 | waiting | 0 / 2 | - |" in out
    assert "4 runs in" in out and "1 finished, 1 stopped, 1 waiting, 1 other config" in out
    assert snapshot(study) == before  # nothing started, nothing written
    held = lock_directory(stopped)  # as a training process holds its run directory
    try:
        states = [r["state"] for r in study_status(tmp_path / "exp.yaml", study, seeds=[0, 1], overrides=FAST)]
    finally:
        held.close()
    assert states == ["finished", "running"]


def test_runs_started_in_the_same_second_get_distinct_directories(tmp_path):
    cmd = [sys.executable, "-m", "eqprop", "train", *FAST, "epochs=1"]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(len(read_run(r).metrics) == 1 for r in runs)


def test_claiming_a_run_name_is_atomic(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from eqprop.cli import _claim

    stem = tmp_path / "runs" / "digits_CEP_seed0_20261206-120000"
    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(lambda _: _claim(stem), range(16)))
    assert len(set(claimed)) == 16 and {p.name for p in claimed} == {stem.name} | {
        f"{stem.name}-{n}" for n in range(2, 17)
    }
