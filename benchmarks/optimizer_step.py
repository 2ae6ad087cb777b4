"""Time of one SGD step (momentum 0.9) on a DRN's parameters: PyTorch's single-tensor, foreach and fused
implementations, interleaved round by round on one thread; and how far apart their weights are after the rounds.

    python benchmarks/optimizer_step.py [--sizes 784 1024 10] [--rounds 7] [--steps 50]

``make_optimizer`` uses the fused one where the parameters allow it (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from eqprop.models.resistive import drn
from eqprop.training.optim import make_optimizer

KINDS = ("single-tensor", "foreach", "fused")


def build(sizes: list[int], kind: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = drn(sizes, 480.0)
    gen = torch.Generator().manual_seed(1)
    for p in net.parameters():
        p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
    opt = make_optimizer(net, [0.005], momentum=0.9)
    for group in opt.param_groups:
        group["foreach"] = kind == "foreach"
        group["fused"] = True if kind == "fused" else None
    return net, opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[784, 1024, 10])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    built = {kind: build(args.sizes, kind) for kind in KINDS}
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):
        for kind, (_, opt) in built.items():
            opt.step()  # warm
            start = time.perf_counter()
            for _ in range(args.steps):
                opt.step()
            times[kind].append((time.perf_counter() - start) / args.steps * 1e3)
    count = sum(p.numel() for p in built["fused"][0].parameters())
    print(f"SGD step, momentum 0.9, DRN {args.sizes} ({count:,} parameters), one thread, {args.rounds} rounds")
    for kind, values in times.items():
        print(f"{kind:>14}: median {statistics.median(values):.3f} ms, min {min(values):.3f} ms")
    with torch.no_grad():
        ref = list(built["single-tensor"][0].parameters())
        for kind in KINDS[1:]:
            gap = max(float((a - b).abs().max()) for a, b in zip(built[kind][0].parameters(), ref))
            print(f"{kind:>14}: largest weight difference from single-tensor after all steps {gap:.2e}")


if __name__ == "__main__":
    main()
