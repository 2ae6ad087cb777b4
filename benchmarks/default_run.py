"""Checks the main job's target: `eqprop train` (no arguments) reaches >= 97% test accuracy on digits in
under 3 minutes on the machine it runs on (2 CPU cores in CI). Each seed runs the real command in a fresh
process and is timed end to end, start-up included.

    python benchmarks/default_run.py --seeds 0 1 2 --out benchmarks/results/default_run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--target-accuracy", type=float, default=0.97)
    parser.add_argument("--target-seconds", type=float, default=180.0)
    parser.add_argument("--out", default="benchmarks/results/default_run")
    args = parser.parse_args()
    rows, ok = [], True
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as run_dir:
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "eqprop", "train", f"seed={seed}", f"out_dir={run_dir}", "progress=false"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            seconds = time.perf_counter() - t0
            final = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()][-1]
        acc = 1 - final["test_error"]
        passed = acc >= args.target_accuracy and seconds <= args.target_seconds
        ok &= passed
        rows.append({"seed": seed, "test_accuracy": acc, "seconds": seconds, "epochs": final["epoch"], "pass": passed})
    table = ["| seed | test accuracy | wall-clock (s) | epochs | target met |", "| --- | --- | --- | --- | --- |"]
    table += [
        f"| {r['seed']} | {100 * r['test_accuracy']:.2f}% | {r['seconds']:.0f} | {r['epochs']} | "
        f"{'yes' if r['pass'] else 'NO'} |"
        for r in rows
    ]
    table += ["", f"Target: >= {100 * args.target_accuracy:.0f}% test accuracy in <= {args.target_seconds:.0f} s."]
    write_report(args.out, "cpu", {"runs": rows, "targets_met": ok}, table)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
