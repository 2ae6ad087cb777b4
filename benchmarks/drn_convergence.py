"""How far a trained DRN's phases are from their steady states after T iterations: the largest voltage difference
(any layer, any sample) between T block updates and 200, for the free phase from zeros (inference) and the two
nudged phases from the steady free state at +-beta (training), in float64 with the run's schedules, cost and beta.
Tells whether the iterations at training and at inference are a lever at all for that network.

    python benchmarks/drn_convergence.py RUN [--checkpoint last] [--images 512] [--iterations 1 2 3 4 8] \
        [data_dir=DIR]
"""

from __future__ import annotations

import argparse

import torch

from eqprop import one_hot
from eqprop.core.nudging import EPNudge
from eqprop.training.trainer import load_run

REFERENCE = 200  # iterations taken as the steady state


def gaps(run: str, checkpoint: str, images: int, iterations: list[int], overrides: list[str]) -> list[str]:
    """Markdown rows: phase, then the largest difference from the steady state after each number of iterations."""
    trainer, state = load_run(run, checkpoint, overrides)
    net = trainer.network.double()
    phases = trainer.algorithm.phases
    free, nudged = phases.solver_for("free"), phases.solver_for("nudged")  # the run's schedules and parity order
    beta = abs(trainer.algorithm.beta)
    x = trainer.data.prepare(trainer.data.train_images[:images], flatten=True).double()
    y = one_hot(trainer.data.train_labels[:images], net.nodes[-1], torch.float64)
    cost = trainer.algorithm.cost

    def largest(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return max(float((u - v).abs().max()) for u, v in zip(a[1:], b[1:]))

    rows = []
    with torch.no_grad():
        steady = free(net, net.init_state(x), REFERENCE).states
        cells = [largest(free(net, net.init_state(x), t).states, steady) for t in iterations]
        rows.append(f"| free, from zeros ({free.settings.schedule}) | " + " | ".join(f"{c:.1e}" for c in cells) + " |")
        for b in (beta, -beta):
            target = nudged(net, [s.clone() for s in steady], REFERENCE, EPNudge(cost, y, b)).states
            cells = [
                largest(nudged(net, [s.clone() for s in steady], t, EPNudge(cost, y, b)).states, target)
                for t in iterations
            ]
            rows.append(
                f"| nudged at {b:+.3g}, from the free state ({nudged.settings.schedule}) | "
                + " | ".join(f"{c:.1e}" for c in cells)
                + " |"
            )
    print(f"{run} ({checkpoint} checkpoint, epoch {state['epoch']}), {images} training images, float64")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. data_dir=DIR")
    parser.add_argument("--checkpoint", default="last", choices=["last", "best"])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--iterations", type=int, nargs="+", default=[1, 2, 3, 4, 8])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = gaps(args.run, args.checkpoint, args.images, args.iterations, args.overrides)
    print("| phase | " + " | ".join(f"T = {t}" for t in args.iterations) + " |")
    print("|---|" + "---|" * len(args.iterations))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
