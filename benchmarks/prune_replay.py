"""What a pruner would have done to a finished search: its trials' curves replayed, in trial order, through
``eqprop tune``'s pruner at several ``--prune-every`` values. Prints, per value, the epoch each trial would have
been stopped at, the epochs the search would have trained (of those it did train) and whether its best trial
survives.

    python benchmarks/prune_replay.py docs/reproductions/beyond/tune_mnist_1h --epochs 30 --every 1 5 10

DIR holds the trials' run directories (``trial_0000``, ...); each one's ``metrics.jsonl`` gives its curve (the
validation error, else the test error). Trials that did not finish all ``--epochs`` are left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eqprop.training.tune import PRUNERS, replay_pruner


def read_curves(folder: Path, epochs: int) -> dict[str, dict[int, float]]:
    """trial folder name -> {epoch: objective}, for the trials that trained all ``epochs``, in trial order."""
    curves = {}
    for run in sorted(folder.glob("trial_*")):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        key = "val_error" if rows and "val_error" in rows[0] else "test_error"
        curve = {int(r["epoch"]): float(r[key]) for r in rows if key in r}
        if len(curve) >= epochs:
            curves[run.name] = {e: v for e, v in curve.items() if e <= epochs}
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--epochs", type=int, required=True, help="the trials' epochs")
    parser.add_argument("--every", type=int, nargs="+", default=[1], help="--prune-every values to replay")
    parser.add_argument("--pruner", default="median", choices=[p for p in PRUNERS if p != "none"])
    args = parser.parse_args()
    curves = read_curves(args.folder, args.epochs)
    if not curves:
        raise SystemExit(f"no trial in {args.folder} trained {args.epochs} epochs")
    names = list(curves)
    best = min(names, key=lambda n: min(curves[n].values()))
    print(f"{len(names)} trials of {args.epochs} epochs; best {best} ({100 * min(curves[best].values()):.2f}%)")
    print("| --prune-every | stopped (trial: epoch) | epochs trained | best trial kept |")
    print("|---|---|---|---|")
    for every in args.every:
        stops = replay_pruner([curves[n] for n in names], args.pruner, args.epochs, every)
        stopped = ", ".join(f"{n.split('_')[-1].lstrip('0') or '0'}: {s}" for n, s in zip(names, stops) if s)
        trained = sum(args.epochs if s is None else s for s in stops)
        kept = "yes" if stops[names.index(best)] is None else "no"
        print(f"| {every} | {stopped or 'none'} | {trained} of {args.epochs * len(names)} | {kept} |")


if __name__ == "__main__":
    main()
