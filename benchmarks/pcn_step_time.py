"""Training-step time of a predictive-coding network (PC-CEP with both relaxation engines, and PC-BP).

The network comes from a shipped PCN config (default: the CIFAR-10 VGG5). Each step is the learning rule's
full update on random input of the data set's shape: the forward pass, then for PC-CEP two nudged phases of K
iterations and the two local parameter gradients. ``messages`` keeps each layer's pre-activation and pooling
indices and sends explicit top-down messages; ``autograd`` recomputes them by autograd (the reference).
Projected times: one epoch of the data set's training images at this batch size, and the config's whole run.

Usage: python benchmarks/pcn_step_time.py [--config configs/pcn/table7/cifar10_ce_ep.yaml] [--device cpu|cuda]
       [--batch 16] [--steps 3] [--warmup 1] [--image-size N] [--algorithms PC-CEP:messages,PC-CEP:autograd,PC-BP]
       [--set key=value ...] [--out benchmarks/results/pcn_step_time_<device>]
"""

from __future__ import annotations

import argparse
import time

import torch
from report import write_report

from eqprop import get_algorithm, load_config
from eqprop.training.data import dataset_spec
from eqprop.training.trainer import build_network

TRAIN_IMAGES = {
    "cifar10": 50_000,
    "cifar100": 50_000,
    "svhn": 73_257,
    "mnist": 60_000,
    "fashion_mnist": 60_000,
    "imagenet": 1_281_167,
    "digits": 1_437,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(net, algorithm, x: torch.Tensor, labels: torch.Tensor, steps: int, warmup: int) -> float:
    """Mean seconds per learning-rule step (gradients written to .grad; no optimiser)."""
    for _ in range(warmup):
        algorithm.step(net, x, labels)
    _sync(x.device)
    start = time.perf_counter()
    for _ in range(steps):
        algorithm.step(net, x, labels)
    _sync(x.device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/pcn/table7/cifar10_ce_ep.yaml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=None, help="override the input size (e.g. ImageNet at 64)")
    ap.add_argument("--algorithms", default="PC-CEP:messages,PC-CEP:autograd,PC-BP")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = load_config(args.config, args.set)
    spec = dataset_spec(cfg.dataset)
    size = args.image_size or spec.image_size or cfg.image_size
    torch.manual_seed(0)
    net = build_network(cfg, (spec.in_channels, size, size), spec.num_classes).to(device)
    x = torch.randn(args.batch, spec.in_channels, size, size, device=device)
    labels = torch.randint(0, spec.num_classes, (args.batch,), device=device)
    images = TRAIN_IMAGES.get(spec.name)
    rows = []
    for entry in args.algorithms.split(","):
        name, _, engine = entry.partition(":")
        kwargs = dict(beta=cfg.beta, nudged_iterations=cfg.nudged_iterations, cost=cfg.cost)
        if engine:
            kwargs["engine"] = engine
        seconds = time_steps(net, get_algorithm(name, **kwargs), x, labels, args.steps, args.warmup)
        row = {"algorithm": name, "engine": engine or "-", "step_s": seconds, "images_per_s": args.batch / seconds}
        if images:
            row["epoch_h"] = images / row["images_per_s"] / 3600
            row["run_h"] = row["epoch_h"] * cfg.epochs
        rows.append(row)
        print(row, flush=True)
    base = next((r["step_s"] for r in rows if r["engine"] == "autograd"), None)
    table = [
        f"{args.config}: {cfg.channels} conv, pools {cfg.pools}, hidden {cfg.hidden}, skips {cfg.skips}, "
        f"input {spec.in_channels}x"
        f"{size}x{size}, batch {args.batch}, K = {cfg.nudged_iterations}; projections for {images} training "
        f"images and {cfg.epochs} epochs (training steps only).",
        "",
        "| algorithm | engine | step (s) | images/s | epoch (h) | run (h) | speed-up vs autograd |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{base / r['step_s']:.2f}x" if base and r["algorithm"] != "PC-BP" else "-"
        table.append(
            f"| {r['algorithm']} | {r['engine']} | {r['step_s']:.4f} | {r['images_per_s']:.1f} | "
            f"{r.get('epoch_h', float('nan')):.2f} | {r.get('run_h', float('nan')):.1f} | {speed} |"
        )
    out = args.out or f"benchmarks/results/pcn_step_time_{device.type}"
    write_report(out, device, {"config": args.config, "batch": args.batch, "image_size": size, "rows": rows}, table)


if __name__ == "__main__":
    main()
