"""Sweeps on Optuna (``eqprop tune``): search-space validation, workers in separate processes sharing one storage,
the retry of a killed worker's trial, and the validation split that keeps tuning off the test set."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eqprop.errors import ConfigError, DataError
from eqprop.training.config import parse_overrides
from eqprop.training.results import read_run
from eqprop.training.trainer import Trainer
from eqprop.training.tune import read_space, retried_from

optuna = pytest.importorskip("optuna")

EXPERIMENT = """\
epochs: 2
free_iterations: 4
nudged_iterations: 2
channels: [4, 8, 8]
limit_train: 80
limit_test: 40
batch_size: 40
validation: 0.25
progress: false
tensorboard: false
"""
# beta below 0.4: C-EP's -beta phase needs beta < 0.5 with the squared error, and near 0.5 its output runs off
# (a loss of 4e7 at beta = 0.49: a diverged trial, FAIL)
SPACE = """\
beta: {type: float, low: 0.05, high: 0.4}
lrs: {type: float, low: 0.01, high: 0.2, log: true}
"""


@pytest.fixture
def experiment(tmp_path):
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    (tmp_path / "space.yaml").write_text(SPACE)
    return tmp_path


@pytest.mark.parametrize(
    "space, message",
    [
        ("betta: {type: float, low: 0.1, high: 0.2}", "key 'betta': not a config key"),
        ("beta: {type: uniform, low: 0.1, high: 0.2}", "key 'beta': give a mapping with type one of"),
        ("beta: {type: float, low: 0.3, high: 0.2}", "key 'beta': needs low < high"),
        ("lrs: {type: float, low: 0.0, high: 0.2, log: true}", "key 'lrs': a log scale needs low > 0"),
        ("beta: {type: float, low: 0.1, hi: 0.2}", "key 'beta': unknown fields \\['hi'\\]"),
        ("algorithm: {type: categorical, choices: [CEP, XEP]}", "key 'algorithm': the value 'XEP' is not valid"),
        ("batch_size: {type: int, low: 0, high: 64}", "key 'batch_size': the value 0.0 is not valid"),
        ("- beta", "must map config keys to distributions"),
    ],
)
def test_a_bad_space_file_names_the_key(experiment, space, message):
    path = experiment / "bad.yaml"
    path.write_text(space + "\n")
    with pytest.raises(ConfigError, match=message):
        read_space(path, experiment / "exp.yaml")


def _tune(experiment, trials, storage, heartbeat=60, wait=True):
    cmd = [sys.executable, "-m", "eqprop", "tune", str(experiment / "exp.yaml"), "--space"]
    cmd += [str(experiment / "space.yaml"), "--trials", str(trials), "--storage", storage, "--study-name", "s"]
    cmd += ["--out", str(experiment / "out"), "--heartbeat", str(heartbeat)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    return out


def test_two_workers_share_one_sqlite_storage(experiment):
    storage = f"sqlite:///{experiment / 'tune.db'}"
    workers = [_tune(experiment, 5, storage, wait=False) for _ in range(2)]
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, out[-2000:] + err[-2000:]
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    real = [t for t in trials if not t.user_attrs.get("surplus")]
    finished = [t for t in real if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    diverged = [t for t in real if t.state == optuna.trial.TrialState.FAIL]  # not counted: another trial is run
    assert len(finished) == 5 and len(real) == 5 + len(diverged)  # none lost, none extra
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    dirs = [t.user_attrs["run_dir"] for t in finished]
    assert len(set(dirs)) == 5 and len({t.number for t in finished}) == 5  # no duplicate
    for t in finished:
        assert (experiment / "out" / "s" / f"trial_{t.number:04d}" / "metrics.jsonl").exists()
    for t in [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]:
        rows = [__import__("json").loads(x) for x in open(f"{t.user_attrs['run_dir']}/metrics.jsonl")]
        assert t.value == min(r["val_error"] for r in rows)  # the objective is the validation error
        assert not any("test_error" in r for r in rows)  # and a trial never evaluates the test set


@pytest.mark.slow
def test_a_killed_workers_trial_is_marked_failed_and_retried(experiment):
    (experiment / "exp.yaml").write_text(EXPERIMENT.replace("epochs: 2", "epochs: 200"))
    # learning rates that do not diverge: a diverged trial fails on its own (no retry), which is not under test here
    (experiment / "space.yaml").write_text(SPACE.replace("high: 0.2, log", "high: 0.05, log"))
    storage = f"sqlite:///{experiment / 'tune.db'}"

    def running():
        try:
            return optuna.load_study(study_name="s", storage=storage).get_trials(
                states=(optuna.trial.TrialState.RUNNING,)
            )
        except KeyError:  # the study is not created yet
            return []

    killed = None
    for _ in range(3):  # the worker may be between trials at the kill; then start another and try again
        victim = _tune(experiment, 1, storage, heartbeat=1, wait=False)
        deadline = time.time() + 120
        while time.time() < deadline:
            now = running()
            if now and (experiment / "out" / "s" / f"trial_{now[0].number:04d}" / "metrics.jsonl").exists():
                break  # a trial is training (one epoch done): kill at once
            time.sleep(0.2)
        victim.send_signal(signal.SIGKILL)
        victim.communicate()
        # the dead worker cannot change its trial's state any more: the trial still RUNNING is the killed one
        after = running()
        if after:
            killed = after[0].number
            break
    assert killed is not None, "no trial was training when the worker was killed, in 3 tries"
    time.sleep(3)  # beyond the grace period (2 heartbeats)
    (experiment / "exp.yaml").write_text(EXPERIMENT)
    _tune(experiment, 1, storage, heartbeat=1)
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert trials[killed].state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials if retried_from(t) == killed]
    assert len(retried) == 1 and retried[0].state == optuna.trial.TrialState.COMPLETE
    assert retried[0].params == trials[killed].params


def test_validation_split_is_held_out_and_selects_the_best_checkpoint(tmp_path):
    cfg = parse_overrides(
        [
            *[f"{k}={v}" for k, v in (line.split(": ") for line in EXPERIMENT.splitlines())],
            f"out_dir={tmp_path}",
            "epochs=3",
        ]
    )
    trainer = Trainer(cfg, log=lambda s: None)
    data = trainer.data
    assert len(data.train_labels) == 60 and len(data.val_labels) == 20 and len(data.test_labels) == 40
    train = {tuple(x.flatten().tolist()) for x in data.train_images}
    assert not any(tuple(x.flatten().tolist()) in train for x in data.val_images)  # disjoint
    again = Trainer(parse_overrides([*cfg_items(cfg), f"out_dir={tmp_path / 'again'}"]), log=lambda s: None).data
    assert torch.equal(again.val_labels, data.val_labels)  # seeded
    history = trainer.fit()
    best = torch.load(tmp_path / "checkpoint_best.pt", weights_only=False)
    assert best["epoch"] == min(history, key=lambda r: r["val_error"])["epoch"]
    assert all("val_error" in r and "test_error" in r for r in history)


@pytest.fixture
def splits(monkeypatch):
    """The splits the Trainer evaluates, in order (a spy on its ``evaluate``)."""
    import eqprop.training.trainer as trainer_module

    seen: list[str] = []
    real = trainer_module.evaluate

    def spy(*args, split="test", **kwargs):
        seen.append(split)
        return real(*args, split=split, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate", spy)
    return seen


def test_a_blind_run_never_evaluates_the_test_set(tmp_path, splits):
    """evaluate_test=false (what tuning trials get): every evaluation is on the validation split, the rows and the
    summary hold no test error, the best checkpoint follows the validation error; a table refuses such runs and
    without a validation split the setting is a clear error."""
    from eqprop.training.results import results_table

    items = [f"{k}={v}" for k, v in (line.split(": ") for line in EXPERIMENT.splitlines())]
    lines = []
    cfg = parse_overrides([*items, "epochs=2", "evaluate_test=false", f"out_dir={tmp_path / 'blind'}"])
    trainer = Trainer(cfg, log=lines.append)
    history = trainer.fit()
    assert splits == ["val", "val"] and all("val_error" in r and "test_error" not in r for r in history)
    assert "test error" not in "\n".join(lines) and "best validation error" in lines[-1]
    best = torch.load(tmp_path / "blind" / "checkpoint_best.pt", weights_only=False)
    assert best["epoch"] == min(history, key=lambda r: r["val_error"])["epoch"]
    with pytest.raises(DataError, match="never evaluated the test set"):
        results_table([tmp_path / "blind"])
    table = results_table([tmp_path / "blind"], split="val")  # its validation error instead, said so
    assert "digits validation | digits train" in table and "the validation error of the split" in table
    assert f"| {100 * history[-1]['val_error']:.2f} |" in table
    best = min(r["val_error"] for r in history)
    assert f"| {100 * best:.2f} |" in results_table([tmp_path / "blind"], metric="best", split="val")
    with pytest.raises(ConfigError, match="evaluate_test=false leaves a run nothing to select"):
        parse_overrides([*items, "validation=0", "evaluate_test=false"])


def test_test_once_reads_the_test_set_after_the_last_epoch_only(tmp_path, splits):
    """test_once (the final runs of a tuned setting): no split (or a validation split) along the way, the test set
    once after the last epoch, also when the run is stopped and resumed between; the summary, the table (final and
    best alike) and the plot read that one value."""
    from eqprop.training.results import plot_runs, results_table

    items = [f"{k}={v}" for k, v in (line.split(": ") for line in EXPERIMENT.splitlines())]
    lines = []
    run = tmp_path / "final"
    cfg = parse_overrides(
        [*items, "epochs=3", "validation=0", "test_once=true", "stop_after_epoch=2", f"out_dir={run}"]
    )
    assert [r["epoch"] for r in Trainer(cfg, log=lines.append).fit()] == [1, 2]
    assert splits == [] and not (run / "checkpoint_best.pt").exists()
    history = Trainer.resume(run, log=lines.append).fit()
    assert splits == ["test"] and ["test_error" in r for r in history] == [False, False, True]
    final = history[-1]["test_error"]
    assert lines[-1].startswith(f"eqprop: done after 3 epochs: test error {100 * final:.2f}% (read once)")
    assert torch.load(run / "checkpoint_best.pt", weights_only=False)["epoch"] == 3
    for metric in ("final", "best"):
        assert f"| {100 * final:.2f} |" in results_table([run], metric=metric)
    assert plot_runs([run], tmp_path / "curves.png").exists()

    splits.clear()
    cfg = parse_overrides([*items, "epochs=2", "test_once=true", f"out_dir={tmp_path / 'held_out'}"])
    history = Trainer(cfg, log=lines.append).fit()
    assert splits == ["val", "test", "val"]
    assert "test error after the last epoch" in lines[-1] or "test error at that epoch" in lines[-1]


def test_eval_measures_a_runs_own_validation_split_without_reading_the_test_set(tmp_path, splits, capsys):
    """eqprop eval --split val: the validation error of a checkpoint, on the split the run held out (the last
    checkpoint gives the last row's value), evaluating no other split; an inference-time setting such as
    eval_iterations is measured that way without the test set. Moving the split (validation, seed) or asking a run
    without one is refused."""
    import re

    from eqprop.cli import main

    items = [f"{k}={v}" for k, v in (line.split(": ") for line in EXPERIMENT.splitlines())]
    run = tmp_path / "blind"
    history = Trainer(
        parse_overrides([*items, "epochs=2", "evaluate_test=false", f"out_dir={run}"]), log=lambda s: None
    ).fit()
    splits.clear()
    capsys.readouterr()
    assert main(["eval", str(run), "--checkpoint", "last", "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert splits == ["val"] and "validation error" in out and "(20 images)" in out
    assert float(re.search(r"validation error ([0-9.]+)%", out).group(1)) == pytest.approx(
        100 * history[-1]["val_error"], abs=0.005
    )
    assert main(["eval", str(run), "--checkpoint", "last", "--split", "val", "eval_iterations=1"]) == 0
    assert splits == ["val", "val"]
    assert main(["eval", str(run), "--split", "val", "seed=3"]) == 2
    assert "would move it onto images the run trained on" in capsys.readouterr().err
    plain = tmp_path / "plain"
    Trainer(parse_overrides([*items, "epochs=1", "validation=0", f"out_dir={plain}"]), log=lambda s: None).fit()
    assert main(["eval", str(plain), "--split", "val"]) == 2
    assert "held out no validation split" in capsys.readouterr().err


def cfg_items(cfg):
    return [f"{k}={v}" for k, v in (line.split(": ") for line in EXPERIMENT.splitlines())]


def test_two_study_workers_share_one_grid(experiment):
    (experiment / "grid.yaml").write_text(EXPERIMENT + "study:\n  seeds: [0, 1, 2]\n")
    storage = f"sqlite:///{experiment / 'grid.db'}"
    cmd = [sys.executable, "-m", "eqprop", "study", str(experiment / "grid.yaml"), "--storage", storage]
    cmd += ["--out", str(experiment / "grid")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in "ab"]
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, out[-2000:] + err[-2000:]
    trials = optuna.load_study(study_name="grid", storage=storage).get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["run"] for t in done) == [f"CEP_digits_seed{s}" for s in range(3)]  # each run once
    for seed in range(3):
        run = experiment / "grid" / f"CEP_digits_seed{seed}"
        assert (run / "stdout.log").read_text().count("eqprop: CEP on digits") == 1  # started by one worker
        assert [r["epoch"] for r in read_run(run).metrics] == [1, 2]


def test_a_study_on_the_validation_split_tabulates_its_validation_error(experiment, capsys):
    """An ablation on the validation split (evaluate_test=false, named variants): the study runs its grid and
    writes the table of validation errors, a row per variant, instead of failing on the missing test errors; its
    --status shows each run's last validation error."""
    from eqprop.cli import main
    from eqprop.training.study import run_study

    (experiment / "ablation.yaml").write_text(
        EXPERIMENT + "evaluate_test: false\nstudy:\n  variants:\n    chosen: {}\n    beta2: {beta: 0.2}\n"
    )
    lines = []
    runs = run_study(experiment / "ablation.yaml", experiment / "ablation", log=lines.append)
    assert [r.returncode for r in runs] == [0, 0]
    table = (experiment / "ablation" / "table.md").read_text()
    assert "digits validation" in table and "beta=0.2" in table and "test |" not in table
    for run in runs:
        assert all("test_error" not in m for m in read_run(run.out_dir).metrics)
        assert f"| {100 * read_run(run.out_dir).metrics[-1]['val_error']:.2f} |" in table
    capsys.readouterr()
    assert main(["study", str(experiment / "ablation.yaml"), "--out", str(experiment / "ablation"), "--status"]) == 0
    status = capsys.readouterr().out
    assert status.count("% (validation) |") == 2 and "2 finished" in status


def test_a_study_plans_seed_major_and_its_workers_take_runs_in_that_order(experiment):
    """The first seed of every algorithm comes before any second seed (a study stopped part-way has every cell of
    its table), and a shared grid is queued in that order."""
    from eqprop.training.study import _take_runs_from_storage, plan_study

    (experiment / "grid.yaml").write_text(EXPERIMENT + "study:\n  algorithms: [CEP, NEP]\n  seeds: [0, 1]\n")
    runs = plan_study(experiment / "grid.yaml", experiment / "grid")
    order = ["CEP_digits_seed0", "NEP_digits_seed0", "CEP_digits_seed1", "NEP_digits_seed1"]
    assert [r.out_dir.name for r in runs] == order
    taken = []

    def launch(run):  # stands in for the training process: records the order, writes no run
        taken.append(run.out_dir.name)
        run.returncode = 1
        return run

    storage = f"sqlite:///{experiment / 'grid.db'}"
    _take_runs_from_storage(runs, launch, 1, storage, "grid", None, lambda line: None)
    assert taken == order


def test_a_worker_whose_grid_differs_from_the_storages_is_refused(experiment):
    """Workers of one grid must plan the same runs: one started with other --seeds would take runs it cannot do."""
    from eqprop.training.config import ConfigError
    from eqprop.training.study import run_study

    storage = f"sqlite:///{experiment / 'grid.db'}"
    optuna.create_study(study_name="grid", storage=storage).enqueue_trial({"run": "CEP_digits_seed7"})
    with pytest.raises(ConfigError, match=r"CEP_digits_seed7.*same config, axes"):
        run_study(experiment / "exp.yaml", experiment / "grid", seeds=[0], storage=storage, log=lambda line: None)
    assert not (experiment / "grid" / "CEP_digits_seed0").exists()  # refused before any run started


def test_a_journal_file_storage_and_the_hyperband_pruner(experiment):
    from eqprop.training.tune import run_tune

    journal = experiment / "tune.journal"
    lines = []
    study = run_tune(
        experiment / "exp.yaml",
        experiment / "space.yaml",
        trials=3,
        out=experiment / "out",
        storage=f"journal:{journal}",
        study_name="j",
        pruner="hyperband",
        sampler_seed=0,
        log=lines.append,
    )
    states = [t.state for t in study.get_trials()]
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert len(states) == 3 and all(s in finished for s in states) and journal.stat().st_size > 0
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner) and any("best val_error" in s for s in lines)


def _processes_running(marker):
    """Pids of live processes whose command line mentions ``marker`` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_study_process_leaves_no_run_training_on(experiment):
    """SIGKILL to `eqprop study` (no chance to clean up): the run it launched gets SIGTERM from the kernel,
    checkpoints and stops, instead of training on as an orphan that holds its run directory."""
    (experiment / "long.yaml").write_text(EXPERIMENT.replace("epochs: 2", "epochs: 500") + "study:\n  seeds: [0]\n")
    out = experiment / "long"
    cmd = [sys.executable, "-m", "eqprop", "study", str(experiment / "long.yaml"), "--out", str(out)]
    study = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = out / "CEP_digits_seed0"
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists():
        assert time.monotonic() < deadline and study.poll() is None, "the study's run did not start"
        time.sleep(0.2)
    assert _processes_running(str(experiment / "long.yaml"))  # the run, a child of the study process
    study.kill()
    study.wait()
    deadline = time.monotonic() + 60
    while _processes_running(str(experiment / "long.yaml")):
        assert time.monotonic() < deadline, "the run outlived its study process"
        time.sleep(0.2)
    # the run stopped on the signal, keeping its checkpoint: through the batch-boundary stop ("interrupted by
    # SIGTERM"), or, when a second SIGTERM reaches it before that stop is taken (seen once in a fresh-clone CI run on
    # an epoch of a few milliseconds), through the immediate stop that keeps the last checkpoint
    log = (run / "stdout.log").read_text()
    assert "interrupted by SIGTERM" in log or "interrupted; the last checkpoint is kept" in log, log[-500:]
    assert (run / "checkpoint_last.pt").exists()


def test_a_diverged_trial_is_one_line_and_is_not_counted(experiment, capsys):
    """Learning rates of 1e6 diverge in the first batch: each such trial is one line (no traceback), fails, and
    the study runs on until it has its finished trial."""
    from eqprop.training.tune import run_tune

    (experiment / "space.yaml").write_text("lrs: {type: categorical, choices: [1000000.0, 0.05]}\n")
    (experiment / "out").mkdir()
    storage = f"sqlite:///{(experiment / 'out' / 'tune.db').resolve()}"
    optuna.create_study(study_name="exp", storage=storage).enqueue_trial({"lrs": 1e6})  # the first trial diverges
    lines: list[str] = []
    study = run_tune(
        experiment / "exp.yaml", experiment / "space.yaml", 1, experiment / "out", sampler_seed=0, log=lines.append
    )
    states = [t.state for t in study.get_trials()]
    failed = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 1 and len(failed) >= 1
    assert all(t.params["lrs"] == 1e6 and "diverged" in t.user_attrs["diverged"] for t in failed)
    said = [line for line in lines if " diverged: training diverged in epoch 1" in line]
    assert len(said) == len(failed) and all(line.count("\n") == 0 for line in said)
    assert "Traceback" not in capsys.readouterr().err


def test_the_baseline_is_the_configs_own_settings_queued_once(experiment, capsys):
    """--baseline: trial 0 runs the config's values of the searched keys (a list key's one value), a second worker
    on the same storage does not queue it again, and a config value outside the space is refused by name."""
    from eqprop.cli import main
    from eqprop.training.tune import run_tune, tune_status

    (experiment / "exp.yaml").write_text(EXPERIMENT + "beta: 0.2\nlrs: [0.05, 0.05, 0.05, 0.05]\n")
    storage = f"sqlite:///{experiment / 'tune.db'}"
    lines: list[str] = []
    kwargs = dict(storage=storage, study_name="s", pruner="none", baseline=True, log=lines.append)
    run_tune(experiment / "exp.yaml", experiment / "space.yaml", 2, experiment / "out", **kwargs)
    study = run_tune(experiment / "exp.yaml", experiment / "space.yaml", 3, experiment / "out", **kwargs)
    trials = study.get_trials()
    assert [t.number for t in trials if t.user_attrs.get("baseline")] == [0]
    assert trials[0].params == {"beta": 0.2, "lrs": 0.05}
    assert trials[0].state == optuna.trial.TrialState.COMPLETE
    assert any(line.startswith("eqprop tune: trial 0 (baseline") for line in lines)
    config = __import__("json").loads((experiment / "out" / "s" / "trial_0000" / "config.json").read_text())
    assert config["rule"]["beta"] == 0.2 and config["optim"]["lrs"] == [0.05]  # one rate for every layer group

    # --status: every trial from the storage and its run directory, nothing started
    rows = tune_status(experiment / "exp.yaml", experiment / "out", storage, "s")
    assert [r["trial"] for r in rows] == [t.number for t in trials if not t.user_attrs.get("surplus")]
    assert rows[0]["baseline"] and not any(r["baseline"] for r in rows[1:])
    for row, t in zip(rows, trials):
        assert (row["state"], row["params"], row["value"]) == (t.state.name, t.params, t.value)
        assert row["epochs"] == (2 if t.state == optuna.trial.TrialState.COMPLETE else row["epochs"])
    capsys.readouterr()
    assert (
        main(
            [
                "tune",
                str(experiment / "exp.yaml"),
                "--out",
                str(experiment / "out"),
                "--study-name",
                "s",
                "--storage",
                storage,
                "--status",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "| 0 (baseline)" in table and "| beta | lrs | objective | epochs |" in table and "**best**" in table
    # the storage alone (copied to a machine without the run directories) still tells each trial's epochs
    (experiment / "out").rename(experiment / "elsewhere")
    assert tune_status(experiment / "exp.yaml", experiment / "out", storage, "s") == rows
    (experiment / "elsewhere").rename(experiment / "out")
    with pytest.raises(ConfigError, match="no study in"):
        tune_status(experiment / "exp.yaml", experiment / "nowhere")
    assert main(["tune", str(experiment / "exp.yaml"), "--out", str(experiment / "out")]) == 2  # no --space
    assert "--space and --trials are needed" in capsys.readouterr().err

    (experiment / "flip.yaml").write_text("flip: {type: categorical, choices: [false, true]}\n")
    for extra, space, message in [
        ("beta: 0.45\n", "space.yaml", r"beta=0.45 lies outside the space's \[0.05, 0.4\]"),
        ("beta: 0.2\nlrs: [0.05, 0.02, 0.05, 0.05]\n", "space.yaml", "lrs=.* differ"),
        ("", "flip.yaml", "leaves flip unset .* flip=false"),
    ]:
        (experiment / "bad.yaml").write_text(EXPERIMENT + extra)
        with pytest.raises(ConfigError, match=message):
            run_tune(experiment / "bad.yaml", experiment / space, 1, experiment / "bad", baseline=True)


def test_importance_apportions_the_variance_to_the_key_the_objective_depends_on(tmp_path, capsys):
    """fANOVA over a study whose objective is a function of x alone (y is noise-free and irrelevant, z never
    varies): x takes almost all the importance, z is left out, and fewer than 3 finished trials give nothing."""
    from eqprop.cli import main
    from eqprop.training.tune import param_importances

    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    dists = {
        "x": optuna.distributions.FloatDistribution(0.0, 1.0),
        "y": optuna.distributions.FloatDistribution(0.0, 1.0),
        "z": optuna.distributions.CategoricalDistribution(["a", "b"]),
    }
    rng = __import__("random").Random(0)

    def add(n: int) -> None:
        for _ in range(n):
            x, y = rng.random(), rng.random()
            params = {"x": x, "y": y, "z": "a"}
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=(x - 0.3) ** 2))

    add(2)
    assert param_importances(tmp_path / "s.yaml", tmp_path, storage, "s") == {}
    add(28)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    shares = param_importances(tmp_path / "s.yaml", tmp_path, storage, "s")
    assert set(shares) == {"x", "y"} and abs(sum(shares.values()) - 1.0) < 1e-6
    assert shares["x"] > 0.9 > 0.1 > shares["y"]
    assert (
        main(
            [
                "tune",
                str(tmp_path / "s.yaml"),
                "--out",
                str(tmp_path),
                "--storage",
                storage,
                "--study-name",
                "s",
                "--status",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "importance (fANOVA over the 30 finished trials" in out
    assert __import__("re").search(r": x (0\.9\d|1\.00), y 0\.\d\d$", out.strip())


def test_startup_trials_reach_the_sampler_and_a_negative_count_is_refused(experiment, monkeypatch):
    """--startup-trials N: the TPE sampler draws at random for N finished trials (its n_startup_trials); N < 0 is
    an error naming the option. --prune-every reaches the pruner the same way."""
    from eqprop.cli import main
    from eqprop.training.tune import run_tune

    seen: list[int] = []

    class Stop(Exception):
        pass

    def sampler(**kwargs):
        seen.append(kwargs["n_startup_trials"])
        raise Stop

    looks: list[tuple[int, int]] = []
    median = optuna.pruners.MedianPruner

    def pruner(**kwargs):
        looks.append((kwargs["n_warmup_steps"], kwargs["interval_steps"]))
        return median(**kwargs)

    monkeypatch.setattr(optuna.samplers, "TPESampler", sampler)
    monkeypatch.setattr(optuna.pruners, "MedianPruner", pruner)
    args = [str(experiment / "exp.yaml"), "--space", str(experiment / "space.yaml"), "--trials", "1"]
    for extra, expected in [([], 10), (["--startup-trials", "3", "--prune-every", "2"], 3)]:
        with pytest.raises(Stop):
            main(["tune", *args, "--out", str(experiment / "out"), *extra])
        assert seen[-1] == expected
    assert looks == [(1, 1), (2, 2)]  # --prune-every reaches the pruner (default 1)
    with pytest.raises(ConfigError, match="--startup-trials must be >= 0, got -1"):
        run_tune(experiment / "exp.yaml", experiment / "space.yaml", 1, experiment / "out", startup_trials=-1)


@pytest.mark.parametrize("every", [1, 4])
def test_the_median_pruner_looks_at_every_nth_epoch_only(every):
    """--prune-every N: a trial far worse than both finished ones at every epoch is stopped at epoch N, not
    before; one worse only at the epochs between looks is never stopped; N < 1 is an error naming the option."""
    from eqprop.training.tune import make_pruner, replay_pruner

    finished = [{epoch: error for epoch in range(1, 13)} for error in (0.10, 0.20)]
    worse = {epoch: 0.90 for epoch in range(1, 13)}
    between = {epoch: 0.90 if epoch % 4 else 0.05 for epoch in range(1, 13)}  # good at epochs 4, 8, 12 only
    assert replay_pruner([*finished, worse], "median", 12, every) == [None, None, every]
    assert replay_pruner([*finished, between], "median", 12, every) == [None, None, 1 if every == 1 else None]
    assert replay_pruner([*finished, worse], "none", 12, every) == [None, None, None]
    with pytest.raises(ConfigError, match="--prune-every must be >= 1, got 0"):
        make_pruner("median", 10, 0)
    with pytest.raises(ConfigError, match="--pruner 'mean': choose one of"):
        make_pruner("mean", 10)
    assert isinstance(make_pruner("hyperband", 10, 4), optuna.pruners.HyperbandPruner)


def test_prune_replay_reads_a_searchs_trials_and_reports_what_pruning_would_have_cost(tmp_path):
    """benchmarks/prune_replay.py on trial folders as eqprop tune writes them: per --prune-every, the trials stopped
    (at which epoch), the epochs trained and whether the best trial survives; an unfinished trial is left out."""
    import json

    curves = {0: [0.10] * 6, 1: [0.20] * 6, 2: [0.90, 0.90, 0.05, 0.05, 0.05, 0.05], 3: [0.90] * 6, 4: [0.5] * 2}
    for number, errors in curves.items():
        run = tmp_path / f"trial_{number:04d}"
        run.mkdir()
        rows = [{"epoch": e + 1, "val_error": v, "train_error": v} for e, v in enumerate(errors)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "prune_replay.py"
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "--epochs", "6", "--every", "1", "3"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "4 trials of 6 epochs; best trial_0002 (5.00%)" in out  # trial 4 trained 2 epochs only: left out
    assert "| 1 | 2: 1, 3: 1 | 14 of 24 | no |" in out  # looking every epoch loses the late winner
    assert "| 3 | 3: 3 | 21 of 24 | yes |" in out


def test_best_config_writes_the_chosen_trial_for_its_final_runs(experiment, capsys):
    """--best-config PATH: the search's config as base, the best finished trial's values (or --trial N's), the whole
    training set and test_once; the file loads to exactly those settings from another folder; no finished trial,
    or a trial that did not finish, is a clear error."""
    from eqprop.cli import main
    from eqprop.training.config import load_config
    from eqprop.training.tune import write_best_config

    storage = f"sqlite:///{experiment / 'tune.db'}"
    study = optuna.create_study(study_name="exp", storage=storage)
    dists = {
        "beta": optuna.distributions.FloatDistribution(0.05, 0.4),
        "lrs": optuna.distributions.FloatDistribution(0.01, 0.2, log=True),
        "lr_schedule": optuna.distributions.CategoricalDistribution(["exponential", "cosine"]),
    }
    target = experiment / "finals" / "best.yaml"
    with pytest.raises(ConfigError, match="has no finished trial yet"):
        write_best_config(experiment / "exp.yaml", experiment, target, storage)
    for beta, lrs, schedule, value in [(0.1, 0.02, "cosine", 0.3), (0.3, 0.05, "exponential", 0.2)]:
        params = {"beta": beta, "lrs": lrs, "lr_schedule": schedule}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))

    assert main(["tune", str(experiment / "exp.yaml"), "--out", str(experiment), "--best-config", str(target)]) == 0
    assert f"wrote {target}" in capsys.readouterr().out
    cfg = load_config(target)
    assert (cfg.beta, cfg.lrs, cfg.lr_schedule) == (0.3, [0.05], "exponential")
    assert (cfg.validation, cfg.test_once, cfg.epochs, cfg.limit_train) == (0.0, True, 2, 80)  # the rest: the base's
    assert "Trial 1 of the search 'exp' (validation error 20.00%" in target.read_text()

    other = write_best_config(experiment / "exp.yaml", experiment, experiment / "t0.yaml", storage, trial=0)
    assert (load_config(other).beta, load_config(other).lr_schedule) == (0.1, "cosine")
    with pytest.raises(ConfigError, match=r"--trial 2: not a finished trial of 'exp' \(finished: \[0, 1\]\)"):
        write_best_config(experiment / "exp.yaml", experiment, target, storage, trial=2)
    assert main(["tune", str(experiment / "exp.yaml"), "--out", str(experiment), "--trial", "0"]) == 2
    assert "--trial picks the trial of --best-config" in capsys.readouterr().err


def test_plot_trials_draws_each_key_against_the_objective(tmp_path, monkeypatch, capsys):
    """--status --plot PATH: a panel per searched key with every finished trial's (value, error in %), the best
    ringed and the baseline boxed at their own coordinates, a log axis for a log key, a categorical key's choices
    as ticks; --plot without --status is refused."""
    import matplotlib.figure

    from eqprop.cli import main

    seen = {}
    original = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        seen["panels"] = [
            (
                ax.get_xlabel(),
                ax.get_xscale(),
                [t.get_text() for t in ax.get_xticklabels()],
                [(c.get_offsets().tolist(), c.get_paths()[0].vertices.shape[0]) for c in ax.collections],
            )
            for ax in fig.axes
        ]
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    (tmp_path / "s.yaml").write_text("validation: 0.2\n")
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    dists = {
        "lrs": optuna.distributions.FloatDistribution(0.001, 0.1, log=True),
        "lr_schedule": optuna.distributions.CategoricalDistribution(["exponential", "cosine"]),
    }
    rows = [(0.01, "exponential", 0.30, True), (0.002, "cosine", 0.10, False), (0.05, "cosine", 0.20, False)]
    for lrs, schedule, value, baseline in rows:
        study.add_trial(
            optuna.trial.create_trial(
                params={"lrs": lrs, "lr_schedule": schedule},
                distributions=dists,
                value=value,
                user_attrs={"baseline": True} if baseline else {},
            )
        )
    args = ["tune", str(tmp_path / "s.yaml"), "--out", str(tmp_path), "--storage", storage, "--status"]
    assert main([*args, "--plot", str(tmp_path / "trials")]) == 0
    assert f"wrote {tmp_path / 'trials.png'}" in capsys.readouterr().out and (tmp_path / "trials.png").exists()
    (lr_label, lr_scale, _, lr_marks), (sched_label, _, sched_ticks, sched_marks) = seen["panels"]
    assert (lr_label, lr_scale, sched_label) == ("lrs", "log", "lr_schedule")
    assert sched_ticks == ["exponential", "cosine"]
    points, *marks = lr_marks
    assert points[0] == [[0.01, 30.0], [0.002, 10.0], [0.05, 20.0]]
    square = [offsets for offsets, corners in marks if corners == 5]  # a closed square's path: 5 vertices
    ring = [offsets for offsets, corners in marks if corners != 5]
    assert ring == [[[0.002, 10.0]]] and square == [[[0.01, 30.0]]]
    assert sched_marks[0][0] == [[0, 30.0], [1, 10.0], [1, 20.0]]
    assert sorted(offsets for offsets, _ in sched_marks[1:]) == [[[0, 30.0]], [[1, 10.0]]]
    assert main(["tune", str(tmp_path / "s.yaml"), "--out", str(tmp_path), "--plot", "x.png"]) == 2
    assert "--plot goes with --status" in capsys.readouterr().err
