"""eqprop's messages go through ``logging``: levels, ``--quiet``/``--verbose``, an application's own handlers."""

from __future__ import annotations

import json
import logging

import pytest

import eqprop
from eqprop.cli import main
from eqprop.logs import LOGGER_NAME

TINY = ["model=mlp", "image_size=8", "hidden=[8]", "free_iterations=3", "nudged_iterations=2", "epochs=2",
        "limit_train=64", "limit_test=32", "batch_size=32"]  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_logging():
    """Each test leaves the ``eqprop`` logger as the package set it up."""
    logger = logging.getLogger(LOGGER_NAME)
    level, handlers, propagate = logger.level, list(logger.handlers), logger.propagate
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers
    logger.propagate = propagate


def test_default_level_prints_header_epochs_and_summary_on_stdout(tmp_path, capsys):
    assert main(["train", *TINY, f"out_dir={tmp_path / 'run'}", "progress=false"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("eqprop: CEP on digits") and "done after 2 epochs" in lines[-1]
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert "config:" not in out and err == ""


def test_quiet_prints_nothing_but_the_run_is_complete(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, f"out_dir={run}", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == ""  # no header, epoch lines, summary or progress bars
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and (run / "checkpoint_last.pt").exists()
    # errors are still said under --quiet
    assert main(["train", "batch_size=0", "-q"]) == 2
    assert "batch_size" in capsys.readouterr().err


def test_verbose_adds_the_resolved_config_and_checkpoint_writes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, f"out_dir={run}", "progress=false", "-v"]) == 0
    out = capsys.readouterr().out
    config_line = next(line for line in out.splitlines() if line.startswith("config: "))
    config = json.loads(config_line[len("config: ") :])
    assert config["model"] == "mlp" and config["hidden"] == [8] and config["epochs"] == 2
    assert f"wrote {run / 'checkpoint_last.pt'} and the best checkpoint" in out
    assert "epoch 2 row: {" in out and "parameters in torch.float32" in out
    with pytest.raises(SystemExit):  # one or the other
        main(["train", "-q", "-v"])


def test_python_users_set_the_level_and_can_route_records_to_their_own_handlers(tmp_path, capsys, caplog):
    from eqprop.training.config import parse_overrides

    cfg = parse_overrides([*TINY, "epochs=1", "progress=false"])
    eqprop.set_verbosity(logging.WARNING)
    eqprop.Trainer(cfg).fit()
    assert capsys.readouterr().out == ""
    eqprop.set_verbosity("info")
    eqprop.use_root_logging()  # an application's handlers (here pytest's) receive the records instead of stdout
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        eqprop.Trainer(cfg).fit()
    assert capsys.readouterr().out == ""
    messages = [r.getMessage() for r in caplog.records if r.name.startswith(LOGGER_NAME)]
    assert messages[0].startswith("eqprop: CEP on digits") and any(m.startswith("epoch   1") for m in messages)
    assert {r.name for r in caplog.records} >= {"eqprop.training.trainer"}
    with pytest.raises(ValueError, match="unknown logging level 'loud'"):
        eqprop.set_verbosity("loud")
