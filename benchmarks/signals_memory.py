"""Table 2 of the scalable-EP paper: peak memory of one training step of a VGG CRNN for standard C-EP (STD),
C-EP with local-error (LE) or knowledge-distillation (KD) signals, and BPTT through the free phase.

The paper: batch 128, T_free = 140 for BPTT, VGG-7 on CIFAR-10 and VGG-10/11, VGG-12/13 on CIFAR-100, on a
24 GB GPU. Each measurement runs in a fresh process (CPU: peak resident set; CUDA: max_memory_allocated);
the KD teacher is an untrained :class:`eqprop.training.teacher.ConvTeacher` (its weights do not change the memory).
Usage: python benchmarks/signals_memory.py [--arch vgg7] [--classes 10] [--batch 128] [--free 140]
       [--nudged 50] [--device cpu|cuda] [--out benchmarks/results/signals_memory_vgg7]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from peak_memory import peak_mib
from report import write_report

from eqprop import get_algorithm
from eqprop.models import VGG_ARCHS, vgg_crnn
from eqprop.rules.signals import KnowledgeDistillation, LocalError
from eqprop.training.teacher import ConvTeacher, TeacherFeatures

VARIANTS = ("STD", "LE", "KD", "BPTT")


def measure(variant: str, arch: str, classes: int, batch: int, free: int, nudged: int, device: str) -> float:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    blocks, fc = VGG_ARCHS[arch]
    net = vgg_crnn(3, classes, 32, blocks, fc).to(device)
    ends = net.block_ends
    signals = []
    if variant == "LE":
        signals = [LocalError(k, net.layers[k].shape, classes).to(device) for k in ends[1:]]
    elif variant == "KD":
        features = TeacherFeatures(ConvTeacher(3, classes, 32, blocks, fc).to(device))
        signals = [KnowledgeDistillation(k, features.block(i)) for i, k in enumerate(ends)]
    name = "BPTT" if variant == "BPTT" else "CEP"
    alg = get_algorithm(
        name,
        beta=0.25,
        free_iterations=free,
        nudged_iterations=nudged,
        cost="cross_entropy",
        **({} if variant == "BPTT" else {"signals": signals, "kappa": 0.5}),
    )
    x = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, classes, (batch,), device=device)
    return peak_mib(lambda: alg.step(net, x, labels), device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vgg7", choices=sorted(VGG_ARCHS))
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--free", type=int, default=140, help="T_free (the paper's BPTT setting: 140)")
    ap.add_argument("--nudged", type=int, default=50)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(measure(args.child, args.arch, args.classes, args.batch, args.free, args.nudged, args.device))
        return
    row = {}
    for variant in VARIANTS:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--arch",
            args.arch,
            "--classes",
            str(args.classes),
            "--batch",
            str(args.batch),
            "--free",
            str(args.free),
            "--nudged",
            str(args.nudged),
            "--device",
            args.device,
        ]
        row[variant] = float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])
        print(json.dumps({variant: row[variant]}), flush=True)
    table = [
        f"{args.arch}, {args.classes} classes, batch {args.batch}, T_free {args.free}, T_nudge {args.nudged}.",
        "",
        "| variant | peak memory of one step (MiB) |",
        "|---|---|",
    ]
    table += [f"| {v} | {row[v]:.0f} |" for v in VARIANTS]
    table.append(f"\nBPTT / KD: {row['BPTT'] / max(row['KD'], 1e-9):.1f}x")
    write_report(
        args.out or f"benchmarks/results/signals_memory_{args.arch}",
        args.device,
        {"arch": args.arch, "batch": args.batch, "free": args.free, "peak_mib": row},
        table,
    )


if __name__ == "__main__":
    main()
