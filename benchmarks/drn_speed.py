"""Time per C-EP training step of eqprop's DRN on this CPU (one thread), and optionally of the public code's or of
another eqprop version's.

    python benchmarks/drn_speed.py [--sizes 784 1024 10] [--batch 4 32] [--steps 200] [--public PATH] [--against DIR]

``--public PATH`` (a checkout of rain-neuromorphics/energy-based-learning, outside this repository) times its
DeepResistiveEnergy + QuadraticMinimizer + centered EquilibriumProp + SGD on the same network, batch, iterations and
beta, interleaved with eqprop's. ``--against DIR`` (another eqprop checkout, e.g. ``git worktree add /tmp/old REV``)
times that version in its own process, round by round alternating with this one's, for a before/after figure from
one sitting. Prints one line per (batch, implementation): ms per step.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch


def eqprop_step(sizes, batch, gain, iterations, beta):
    from eqprop import get_algorithm
    from eqprop.models.resistive import drn
    from eqprop.training.optim import make_optimizer

    net = drn(sizes, gain)
    alg = get_algorithm(
        "CEP",
        beta=beta,
        cost="half_squared_error",
        free_iterations=iterations,
        nudged_iterations=iterations,
        solver="coordinate-descent",
        first="odd",
        init="persistent",
    )
    opt = make_optimizer(net, [0.006], momentum=0.0, weight_decay=0.0)
    x, labels = torch.rand(batch, sizes[0]), torch.randint(0, sizes[-1], (batch,))

    def step():
        alg.step(net, x, labels)
        opt.step()

    return step


def public_step(path, sizes, batch, gain, iterations, beta):
    sys.path.insert(0, path)
    from model.function.cost import SquaredError
    from model.function.network import Network
    from model.resistive.minimizer import QuadraticMinimizer
    from model.resistive.network import DeepResistiveEnergy
    from training.monitor import Optimizer
    from training.sgd import AugmentedFunction, EquilibriumProp

    energy = DeepResistiveEnergy([(2 * sizes[0],)] + [(n,) for n in sizes[1:]], [1.0] * (len(sizes) - 1), gain)
    energy.set_device("cpu")
    cost = SquaredError(energy.layers()[-1])
    network = Network(energy)
    augmented = AugmentedFunction(energy, cost)
    free = QuadraticMinimizer(energy, network.free_layers())
    free.num_iterations = iterations
    train = QuadraticMinimizer(augmented, network.free_layers())
    train.num_iterations = iterations
    est = EquilibriumProp(energy.params(), energy.layers(), augmented, cost, train)
    est.nudging, est.variant = beta, "centered"
    params = energy.params()
    opt = Optimizer(energy, cost, [0.006] * len(params), 0.0, 0.0)
    x, y = torch.rand(batch, sizes[0]), torch.randint(0, sizes[-1], (batch,))

    def step():
        network.set_input(x, reset=False)
        free.compute_equilibrium()
        cost.set_target(y)
        for p, g in zip(params, est.compute_gradient()):
            p.state.grad = g
        opt.step()
        for p in params:
            p.clamp_()

    return step


def timed(step, steps):
    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[784, 1024, 10])
    ap.add_argument("--batch", type=int, nargs="+", default=[4, 32])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--gain", type=float, default=480.0)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--public", default=None)
    ap.add_argument("--against", default=None, help="another eqprop checkout, timed in its own processes")
    ap.add_argument("--one-round", action="store_true", help=argparse.SUPPRESS)  # a child process of --against
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.one_round:
        step = eqprop_step(args.sizes, args.batch[0], args.gain, args.iterations, args.beta)
        print(timed(step, args.steps))
        return
    if args.against:
        compare_versions(args)
        return
    for batch in args.batch:
        runs = {"eqprop": eqprop_step(args.sizes, batch, args.gain, args.iterations, args.beta)}
        if args.public:
            runs["public"] = public_step(args.public, args.sizes, batch, args.gain, args.iterations, args.beta)
        times = {name: [] for name in runs}
        for _ in range(3):  # interleaved rounds
            for name, step in runs.items():
                times[name].append(timed(step, max(1, args.steps // (1 if name == "eqprop" else 10))))
        for name, ts in times.items():
            print(f"sizes={args.sizes} batch={batch} {name}: {min(ts):.2f} ms/step (best of 3 rounds)")


def compare_versions(args: argparse.Namespace) -> None:
    """This checkout against ``args.against``: per batch, 3 rounds, each a fresh process of either version in turn
    (its own imports, one thread); the best round of each."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    versions = {"this": here, "against": os.path.abspath(args.against)}
    common = ["--sizes", *map(str, args.sizes), "--steps", str(args.steps), "--gain", str(args.gain)]
    common += ["--iterations", str(args.iterations), "--beta", str(args.beta), "--one-round"]
    for batch in args.batch:
        times: dict[str, list[float]] = {name: [] for name in versions}
        for _ in range(3):
            for name, root in versions.items():
                env = {**os.environ, "PYTHONPATH": os.path.join(root, "src"), "OMP_NUM_THREADS": "1"}
                cmd = [sys.executable, os.path.abspath(__file__), *common, "--batch", str(batch)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                times[name].append(float(out.split()[-1]))
        for name, ts in times.items():
            print(f"sizes={args.sizes} batch={batch} {name} ({versions[name]}): {min(ts):.2f} ms/step (best of 3)")


if __name__ == "__main__":
    main()
