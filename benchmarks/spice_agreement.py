"""eqprop's exact DRN solver against ngspice on real MNIST: a DRN-XS (input gain 100) trained for a few C-EP steps,
then test images through both (the near-ideal diode). Prints per image: label, both predictions, the largest node
voltage difference (outputs, hidden) and ngspice's time.

    python benchmarks/spice_agreement.py --data-dir ../shared/data/mnist [--steps 1000] [--images 5]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--steps", type=int, default=1000, help="C-EP steps of batch 4 before the check")
    parser.add_argument("--images", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from eqprop import get_algorithm
    from eqprop.models.resistive import CoordinateDescentSolver, drn_xs
    from eqprop.models.spice import netlist, ngspice_operating_point
    from eqprop.training.data import load_dataset

    data = load_dataset("mnist28", args.data_dir, limit_train=4 * args.steps, limit_test=args.images)
    images = data.train_images.flatten(1).double() / 255
    torch.manual_seed(0)
    net = drn_xs().double()
    rule = get_algorithm(
        "CEP", beta=0.5, cost="half_squared_error", solver="coordinate-descent", first="odd",
        free_iterations=4, nudged_iterations=4,
    )  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.02)
    for step in range(args.steps):
        batch = slice(4 * step, 4 * step + 4)
        rule.step(net, images[batch], data.train_labels[batch])
        opt.step()
        with torch.no_grad():
            net.g1.clamp_(min=0)
            net.g2.clamp_(min=0)
    print("image label eqprop ngspice max|dv|_out max|dv|_hidden ngspice_s")
    for i in range(args.images):
        x = data.test_images[i : i + 1].flatten(1).double() / 255
        text = netlist(net, x)
        with torch.no_grad():
            ours = CoordinateDescentSolver()(net, net.init_state(x), 500).states
        t0 = time.perf_counter()
        volts = ngspice_operating_point(text)
        seconds = time.perf_counter() - t0
        out = torch.tensor([volts[f"out{j}"] for j in range(10)], dtype=torch.float64)
        hidden = torch.tensor([volts[f"h1_{j}"] for j in range(100)], dtype=torch.float64)
        print(
            f"{i} {int(data.test_labels[i])} {int(ours[-1].argmax())} {int(out.argmax())} "
            f"{float((out - ours[-1][0]).abs().max()):.3g} {float((hidden - ours[1][0]).abs().max()):.3g} {seconds:.1f}"
        )


if __name__ == "__main__":
    main()
