"""A sweep: three learning rules x two seeds on the digits, one table and one plot.

    python examples/sweep.py [OUT]              # OUT: where the runs go (default runs/sweep)

The same as `eqprop study configs/default.yaml --algorithms PEP NEP CEP --seeds 0 1 --out OUT` with a short
schedule; each run is its own `eqprop train` process, rerunning the script resumes unfinished runs and leaves
finished ones as they are. For a search over hyperparameters (Optuna), see `eqprop tune` in the README.
"""

import sys
from pathlib import Path

from eqprop.training.study import run_study

ROOT = Path(__file__).resolve().parents[1]


def main(out: str = "runs/sweep", epochs: int = 3, extra: tuple[str, ...] = (), jobs: int = 1) -> Path:
    overrides = [f"epochs={epochs}", "channels=[8,16,16]", "free_iterations=15", "nudged_iterations=5", *extra]
    run_study(
        ROOT / "configs" / "default.yaml",
        out,
        algorithms=["PEP", "NEP", "CEP"],
        seeds=[0, 1],
        jobs=jobs,  # runs at once, one thread each
        overrides=[*overrides, "progress=false", "tensorboard=false", "threads=1"],
    )
    table = Path(out) / "table.md"
    print(table.read_text())
    return table


if __name__ == "__main__":
    main(*sys.argv[1:2])
