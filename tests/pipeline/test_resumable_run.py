"""benchmarks/resumable_run.py, the procedure of docs/reproductions.md: CIFAR-10 staged from .xz batches, a run
moved as checkpoint parts of bounded size and resumed from them exactly, a background run stopped and resumed."""

import importlib.util
import json
import lzma
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eqprop.errors import ConfigError
from eqprop.training.config import parse_overrides
from eqprop.training.data import load_dataset
from eqprop.training.trainer import Interrupted, Trainer
from helpers import sigterm_at

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("resumable_run", ROOT / "benchmarks" / "resumable_run.py")
rr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rr)

TINY = ["free_iterations=4", "nudged_iterations=2", "channels=[8,16,16]", "limit_train=192", "limit_test=64"]
TINY += ["progress=false", "batch_size=64", "tensorboard=false", "init=persistent", "bias_init=uniform"]
TINY += ["threads=1"]  # one thread per training process: two on a busy 2-core machine made epochs 50x slower


def _xz_cifar(root, n=3):
    """CIFAR-10's python-pickle batches of ``n`` random images each, xz-compressed as in ../shared/data."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = {}
    for name in rr.CIFAR_FILES[:-1]:
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels[name] = rng.integers(0, 10, size=n).tolist()
        with lzma.open(folder / f"{name}.xz", "wb") as f:
            pickle.dump({"data": x, "labels": labels[name], "batch_label": name}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:  # the meta file is stored plain
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f, protocol=2)
    return labels


def test_stage_cifar_decompresses_the_xz_batches_into_the_layout_the_loader_reads(tmp_path):
    labels = _xz_cifar(tmp_path / "src")
    assert rr.main(["stage-cifar", str(tmp_path / "src"), str(tmp_path / "data")]) == 0
    data = load_dataset("cifar10", tmp_path / "data", verify_checksums=False)
    assert data.train_labels.tolist() == sum((labels[f"data_batch_{i}"] for i in range(1, 6)), [])
    assert data.test_labels.tolist() == labels["test_batch"]
    (tmp_path / "src" / "cifar-10-batches-py" / "test_batch.xz").unlink()
    with pytest.raises(rr.StretchError, match="lacks \\['test_batch'\\]"):
        rr.stage_cifar(tmp_path / "src", tmp_path / "other")


def _interrupted_run(out):
    cfg = parse_overrides([*TINY, "epochs=3", f"out_dir={out}"])
    trainer = Trainer(cfg, log=lambda s: None, callbacks=[sigterm_at(2, 1)])
    with pytest.raises(Interrupted):
        trainer.fit()


def test_a_run_packed_into_small_parts_unpacks_and_resumes_exactly(tmp_path):
    straight = Trainer(parse_overrides([*TINY, "epochs=3", f"out_dir={tmp_path / 'straight'}"]), log=lambda s: None)
    straight.fit()
    _interrupted_run(tmp_path / "run")
    chunk = 64 << 10
    manifest = rr.pack(tmp_path / "run", tmp_path / "moved", chunk)
    parts = manifest["checkpoints"]["checkpoint_last.pt"]["parts"]
    assert len(parts) > 1 and all((tmp_path / "moved" / p["name"]).stat().st_size <= chunk for p in parts)
    assert {"config.json", "metrics.jsonl"} <= set(manifest["files"])
    assert "checkpoint_best.pt" not in manifest["checkpoints"]
    assert len(list((tmp_path / "moved").iterdir())) == len(parts) + 2  # the parts, run_files.tar, manifest.json
    assert rr.main(["unpack", str(tmp_path / "moved"), str(tmp_path / "again")]) == 0
    resumed = Trainer.resume(tmp_path / "again", log=lambda s: None)
    resumed.fit()
    for key, value in straight.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[key]), key
    # a damaged or missing part is named, and nothing is rebuilt from it
    part = tmp_path / "moved" / parts[1]["name"]
    data = part.read_bytes()
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # a changed last byte (writing a zero may change none)
    with pytest.raises(rr.StretchError, match=f"{parts[1]['name']} is damaged"):
        rr.unpack(tmp_path / "moved", tmp_path / "third")
    part.unlink()
    with pytest.raises(rr.StretchError, match=f"{parts[1]['name']} is missing"):
        rr.unpack(tmp_path / "moved", tmp_path / "third")
    assert not (tmp_path / "third").exists()
    assert rr.main(["pack", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_a_background_run_is_stopped_with_a_checkpoint_and_resumed_to_the_end(tmp_path):
    run = tmp_path / "run"
    epochs = 30
    began = time.time()
    (tmp_path / "tiny.yaml").write_text(f"epochs: {epochs}\n")
    rr.start(run, str(tmp_path / "tiny.yaml"), TINY)
    with pytest.raises(rr.StretchError, match="already being trained"):
        rr.start(run, None, [])
    deadline = time.monotonic() + 120
    while rr.status(run)["epochs_done"] < 2:
        assert time.monotonic() < deadline, (run / "stdout.log").read_text()
        time.sleep(0.2)
    assert rr.stop(run)
    state = rr.status(run)
    assert not state["running"] and 2 <= state["epochs_done"] < epochs
    assert (run / "checkpoint_last.pt").exists()
    rr.start(run, None, [])
    deadline = time.monotonic() + 240
    while rr.status(run)["running"]:
        assert time.monotonic() < deadline, (run / "stdout.log").read_text()
        time.sleep(0.2)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    log = (run / "stdout.log").read_text()
    assert "continuing" in log and "done after 30 epochs" in log
    starts = [line for line in log.splitlines() if line.startswith("# ") and line.split()[3] == "start"]
    ends = [line for line in log.splitlines() if line.startswith("# ") and line.split()[3] == "end"]
    assert len(starts) == len(ends) == 2 and ends[-1].endswith("(exit status 0)")
    state = rr.status(run)
    assert 0 < state["wall_clock_s"] <= time.time() - began
    assert [s["epoch"] for s in state["stretches"]][0] == 0 and len(state["stretches"]) == 2


def test_stop_after_epoch_ends_a_stretch_and_the_resumed_run_is_the_uninterrupted_one(tmp_path):
    """``stop_after_epoch``: the run stops after that epoch with its checkpoint (no partial epoch), keeps the
    schedule of all its epochs, and a plain resume goes on past it to the same weights as a run never stopped."""
    straight = Trainer(parse_overrides([*TINY, "epochs=3", f"out_dir={tmp_path / 'straight'}"]), log=lambda s: None)
    straight.fit()
    lines = []
    first = Trainer(
        parse_overrides([*TINY, "epochs=3", "stop_after_epoch=1", f"out_dir={tmp_path / 'run'}"]), lines.append
    )
    assert [r["epoch"] for r in first.fit()] == [1]
    assert any("stopped after epoch 1 of 3 (stop_after_epoch); resume with: eqprop train --resume" in x for x in lines)
    ckpt = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["partial"] is None
    resumed = Trainer.resume(tmp_path / "run", log=lambda s: None)  # the saved stop_after_epoch=1 is behind it
    assert [r["epoch"] for r in resumed.fit()] == [1, 2, 3]
    for key, value in straight.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[key]), key
    with pytest.raises(ConfigError, match="config key 'stop_after_epoch' must be >= 1, got 0"):
        parse_overrides([*TINY, "stop_after_epoch=0"])


def test_until_on_the_command_line_runs_stretches_and_refuses_an_epoch_already_done(tmp_path, capsys):
    """``eqprop train --until N``: stretches of one run (stop_after_epoch=N), each resumed with ``--resume``; an N
    the run has already passed is an error that names the epochs done, not a run that silently goes to the end."""
    from eqprop.cli import main

    run = tmp_path / "run"
    assert main(["train", *TINY, "epochs=3", f"out_dir={run}", "--until", "1"]) == 0
    assert main(["train", "--resume", str(run), "--until", "2"]) == 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--until", "2"]) == 2
    err = capsys.readouterr().err
    assert "stop_after_epoch=2 (--until)" in err and "has done 2 epochs already" in err and "epochs=3" in err
    assert main(["train", "--resume", str(run)]) == 0  # the saved stop_after_epoch=2 lies behind it: to the end
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.slow
def test_start_until_runs_a_background_run_in_stretches_of_whole_epochs(tmp_path):
    """``start RUN CONFIG --until 1``, then ``start RUN --until 2``, then ``start RUN``: three stretches, each ending
    at an epoch's end with exit status 0, every epoch once."""
    run = tmp_path / "run"
    (tmp_path / "tiny.yaml").write_text("epochs: 3\n")

    def wait():
        deadline = time.monotonic() + 120
        while rr.status(run)["running"]:
            assert time.monotonic() < deadline, (run / "stdout.log").read_text()
            time.sleep(0.2)

    rr.start(run, str(tmp_path / "tiny.yaml"), TINY, until=1)
    wait()
    assert rr.status(run)["epochs_done"] == 1
    rr.start(run, None, [], until=2)
    wait()
    assert rr.status(run)["epochs_done"] == 2
    rr.start(run, None, [])
    wait()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    log = (run / "stdout.log").read_text()
    assert log.count("(stop_after_epoch)") == 2 and "done after 3 epochs" in log
    ends = [line for line in log.splitlines() if line.startswith("# ") and line.split()[3] == "end"]
    assert len(ends) == 3 and all(e.endswith("(exit status 0)") for e in ends)
    with pytest.raises(rr.StretchError, match="--until must be an epoch >= 1, got 0"):
        rr.start(run, None, [], until=0)


@pytest.mark.slow
def test_a_run_polled_while_it_trains_goes_on_elsewhere_from_the_snapshot(tmp_path):
    """The lent machine is taken back mid-stretch: what the last poll packed (while the run trained) rebuilds
    the run elsewhere, which resumes from the snapshot's checkpoint and ends with every epoch once."""
    run, epochs = tmp_path / "run", 60  # a tiny epoch takes about 0.1 s: the run must outlast the poll's wait
    (tmp_path / "tiny.yaml").write_text(f"epochs: {epochs}\n")
    rr.start(run, str(tmp_path / "tiny.yaml"), TINY)
    try:
        deadline = time.monotonic() + 120
        while rr.status(run)["epochs_done"] < 2:
            assert time.monotonic() < deadline, (run / "stdout.log").read_text()
            time.sleep(0.2)
        state = rr.poll(run, tmp_path / "moved", wait=0.5)
        assert state["running"], "the run ended before the poll; give it more epochs"
        assert rr.main(["pack", str(run), str(tmp_path / "x")]) == 2  # without --live: refused while training
    finally:
        rr.stop(run)  # the machine goes back; only the poll's files remain
    manifest = json.loads((tmp_path / "moved" / "manifest.json").read_text())
    assert "checkpoint_last.pt" in manifest["checkpoints"]
    rr.unpack(tmp_path / "moved", tmp_path / "again")
    snapshot_epoch = torch.load(tmp_path / "again" / "checkpoint_last.pt", weights_only=False)["epoch"]
    assert 2 <= snapshot_epoch < epochs
    rr.start(tmp_path / "again", None, [])
    deadline = time.monotonic() + 240
    while rr.status(tmp_path / "again")["running"]:
        assert time.monotonic() < deadline, (tmp_path / "again" / "stdout.log").read_text()
        time.sleep(0.2)
    rows = [json.loads(line) for line in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    log = (tmp_path / "again" / "stdout.log").read_text()
    assert f"after epoch {snapshot_epoch}" in log and f"done after {epochs} epochs" in log


def test_the_wall_clock_counts_a_lost_stretch_up_to_its_last_snapshot(tmp_path):
    lines = [
        "# 2026-01-01 00:00:00 start 100.0: python -m eqprop train ...",
        "# 2026-01-01 00:00:30 snapshot 130.0",
        "# 2026-01-01 00:00:50 snapshot 150.0",  # the machine went back after this poll: no end marker
        "# 2026-01-01 00:16:40 start 1000.0: python -m eqprop train --resume ...",
        "# 2026-01-01 00:18:20 end 1100.0 (exit status 0)",
    ]
    (tmp_path / "stdout.log").write_text("\n".join(lines) + "\n")
    assert rr.wall_clock(tmp_path) == pytest.approx(50.0 + 100.0)
    (tmp_path / "stdout.log").write_text("\n".join(lines[:1] + lines[3:]) + "\n")  # lost with no snapshot
    assert rr.wall_clock(tmp_path) == pytest.approx(100.0)
