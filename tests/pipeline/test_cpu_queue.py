"""benchmarks/cpu_queue.sh, the queue of CPU reproductions: runs one after another, a failed run does not stop the
queue, a run stopped by a signal (SIGTERM at the end of a session) does, and a finished run is skipped."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAKE = """#!/usr/bin/env bash
# a stand-in for eqprop: records its arguments; the run named in out_dir=... exits with the code in CODE_<name>
echo "$@" >> "$CALLS"
for a in "$@"; do case "$a" in out_dir=*) name=$(basename "${a#out_dir=}");; esac; done
var="CODE_$name"; exit "${!var:-0}"
"""


def run_queue(tmp_path, codes, *items):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "eqprop").write_text(FAKE)
    (bin_dir / "eqprop").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls")}
    env.update({f"CODE_{name}": str(code) for name, code in codes.items()})
    cmd = ["bash", str(ROOT / "benchmarks" / "cpu_queue.sh"), str(tmp_path / "runs"), "DATA", *items]
    rc = subprocess.run(cmd, env=env, check=False).returncode
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return rc, [c.split("out_dir=")[-1].split()[0].rsplit("/", 1)[-1] for c in calls]


def test_a_signal_stops_the_queue_a_failure_does_not_and_a_finished_run_is_skipped(tmp_path):
    items = ["a=a.yaml", "b=b.yaml", "c=c.yaml"]
    rc, started = run_queue(tmp_path, {"a": 1}, *items)
    assert (rc, started) == (0, ["a", "b", "c"])  # a failed (exit 1): the queue went on

    (tmp_path / "calls").unlink()
    rc, started = run_queue(tmp_path, {"b": 143}, *items)
    assert (rc, started) == (143, ["a", "b"])  # b was stopped by SIGTERM: c waits for the next session
    log = (tmp_path / "runs" / "queue.log").read_text()
    assert "queue stopped: b was interrupted (exit 143)" in log

    done = tmp_path / "runs" / "a"  # a finished run directory: its last epoch is the config's epochs
    done.mkdir(parents=True)
    (done / "config.json").write_text(json.dumps({"optim": {"epochs": 2}}))
    (done / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    (tmp_path / "calls").unlink()
    rc, started = run_queue(tmp_path, {}, *items)
    assert (rc, started) == (0, ["b", "c"]) and "a: finished, skipped" in (tmp_path / "runs" / "queue.log").read_text()
