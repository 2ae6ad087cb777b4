"""Time per inference of a DRN by eqprop's exact solver and by ngspice, on the same circuits (one thread each).

    python benchmarks/spice_speed.py [--hidden 100 200 400 800] [--repeats 3] [--limit 60]

For each 784 -> H -> 10 network (uniform conductances as initialised, random inputs at input gain 100): ngspice's
DC operating point of the exported netlist (its own process; the netlist's writing not counted), and eqprop's
steady state for one image to a tolerance of 1e-9 V (the iterations it took are printed) and, amortised, per image
of a batch of 100. Stops growing H once ngspice takes longer than ``--limit`` seconds.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[100, 200, 400, 800])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=float, default=60.0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from eqprop.models.resistive import CoordinateDescentSolver, drn
    from eqprop.models.spice import netlist, ngspice_operating_point

    print("hidden resistors ngspice_s eqprop_1_image_ms iterations eqprop_per_image_batch100_ms speedup")
    for hidden in args.hidden:
        torch.manual_seed(0)
        net = drn([784, hidden, 10], input_gain=100.0).double()
        x = torch.rand(1, 784, dtype=torch.float64)
        text = netlist(net, x)
        resistors = sum(1 for line in text.splitlines() if line.startswith("R"))
        spice = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ngspice_operating_point(text)
            spice.append(time.perf_counter() - t0)
        solver = CoordinateDescentSolver(tol=1e-9)
        with torch.no_grad():
            used = solver(net, net.init_state(x), 10_000).iterations
            one, batch = [], torch.rand(100, 784, dtype=torch.float64)
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                solver(net, net.init_state(x), 10_000)
                one.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            solver(net, net.init_state(batch), 10_000)
            per_image = (time.perf_counter() - t0) / 100
        best_spice, best_one = min(spice), min(one)
        print(
            f"{hidden} {resistors} {best_spice:.2f} {1e3 * best_one:.2f} {used} {1e3 * per_image:.3f} "
            f"{best_spice / best_one:.0f}x"
        )
        if best_spice > args.limit:
            break


if __name__ == "__main__":
    main()
