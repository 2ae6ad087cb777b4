"""Iterations to reach a fixed-point residual, synchronous vs asynchronous, on the Table 5 DCHN at init
(CIFAR-shaped random input) or, with ``--checkpoint``, on an MNIST DCHN trained by ``precision.py --save``
(MNIST test images).

Usage: python benchmarks/convergence.py [--device cuda] [--batch 128] [--max-iterations 400]
       [--checkpoint PATH --data-dir ../shared/data/mnist] [--out benchmarks/results/convergence]
The residual is the batch mean of ||s - sigma(dPhi/ds)|| over all free layers (fp32).
"""

from __future__ import annotations

import argparse

import torch
from report import write_report

from eqprop import dchn, relax

TOLS = (1e-1, 1e-2, 1e-3, 1e-4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--max-iterations", type=int, default=400)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--out", default="benchmarks/results/convergence")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.checkpoint:
        from eqprop.training.data import load_mnist

        ckpt = torch.load(args.checkpoint, map_location=args.device)
        net = dchn(1, 10, channel_multiplier=ckpt["width"], gains=ckpt["gains"]).to(args.device)
        net.load_state_dict(ckpt["state_dict"])
        data = load_mnist(args.data_dir, limit_test=args.batch)
        x = data.prepare(data.test_images).to(args.device)
        network = f"MNIST DCHN (width x{ckpt['width']}) after {ckpt['steps']} C-EP training steps"
    else:
        net = dchn(3, 10).to(args.device)
        x = torch.randn(args.batch, 3, 32, 32, device=args.device)
        network = "Table 5 DCHN at init, random CIFAR-shaped input"
    result = {}
    with torch.no_grad():
        for schedule in ("synchronous", "asynchronous"):
            traj = relax(net, net.init_state(x), args.max_iterations, schedule=schedule, record=True).trajectory
            result[schedule] = {str(t): next((i for i, r in enumerate(traj.residual, 1) if r < t), None) for t in TOLS}
            result[schedule]["final_residual"] = traj.residual[-1]
    table = [
        f"{network}, batch {x.shape[0]}:",
        "",
        "| schedule | " + " | ".join(f"iters to {t:g}" for t in TOLS) + " | residual at end |",
        "|---|" + "---|" * (len(TOLS) + 1),
    ]
    for s, r in result.items():
        table.append(f"| {s} | " + " | ".join(str(r[str(t)]) for t in TOLS) + f" | {r['final_residual']:.2e} |")
    write_report(args.out, args.device, {"network": network, "result": result}, table)


if __name__ == "__main__":
    main()
