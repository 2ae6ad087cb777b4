"""Peak memory of one RHEL gradient vs BPTT through the same Hamiltonian SSM, as the sequence grows.

RHEL runs the forward pass and two echo passes and keeps only the current state of each HRU, so (loss on the
last step) its memory does not grow with the sequence length T; BPTT stores every step's intermediate values.
For stacks this holds for the lock-step echo (the default); the sequential echo (``--stack sequential``, or
RHEL-seq in the table with ``--stack both``) keeps the sequences passed between units, one (T, B, n) tensor per
unit boundary, so it grows with T, but far more slowly than BPTT.

CPU: each measurement runs in a fresh process and reads the peak resident set (VmHWM, reset through
/proc/self/clear_refs just before the step) minus the resident set before it. CUDA: max_memory_allocated.
Usage: python benchmarks/rhel_memory.py [--lengths 100,200,400,800,1600] [--sizes 256] [--batch 128]
       [--stack lockstep|sequential|both] [--device cpu|cuda] [--out benchmarks/results/rhel_memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from peak_memory import peak_mib
from report import write_report

from eqprop.core.nudging import get_cost
from eqprop.models.hamiltonian import HamiltonianSSM
from eqprop.rules.echo_learning import bptt_gradients, rhel_gradients


def measure(algorithm: str, length: int, sizes: list[int], batch: int, features: int, device: str) -> float:
    """Peak extra memory (MiB) of one gradient computation."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = HamiltonianSSM(features, sizes, 10, dt=0.1).to(device)
    x = torch.randn(length, batch, features, device=device)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (batch,)), 10).float().to(device)
    cost = get_cost("cross_entropy")
    if algorithm == "BPTT":
        return peak_mib(lambda: bptt_gradients(model, x, y, cost, "last"), device)
    stack = "sequential" if algorithm == "RHEL-seq" else "lockstep"
    return peak_mib(lambda: rhel_gradients(model, x, y, cost, "last", stack=stack), device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="100,200,400,800,1600")
    ap.add_argument("--sizes", default="256", help="HRU sizes, comma-separated (one unit each)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument(
        "--stack",
        default="lockstep",
        choices=["lockstep", "sequential", "both"],
        help="how a stack's units echo (RHEL: lock-step, RHEL-seq: sequential)",
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default="benchmarks/results/rhel_memory")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:  # one measurement in this fresh process
        algorithm, length = args.child.split(":")
        print(measure(algorithm, int(length), sizes, args.batch, args.features, args.device))
        return
    algorithms = {"lockstep": ["RHEL"], "sequential": ["RHEL-seq"], "both": ["RHEL", "RHEL-seq"]}[args.stack]
    algorithms.append("BPTT")
    rows = []
    for length in [int(v) for v in args.lengths.split(",")]:
        row = {"T": length}
        for algorithm in algorithms:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                f"{algorithm}:{length}",
                "--sizes",
                args.sizes,
                "--batch",
                str(args.batch),
                "--features",
                str(args.features),
                "--device",
                args.device,
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1]
            row[f"{algorithm}_MiB"] = float(out)
        print(json.dumps(row), flush=True)
        rows.append(row)
    names = {"RHEL": "RHEL lock-step", "RHEL-seq": "RHEL sequential", "BPTT": "BPTT"}
    table = [
        f"HSSM sizes {sizes}, batch {args.batch}, {args.features} input features, loss on the last step.",
        "",
        "| T (sequence length) | " + " | ".join(f"{names[a]} peak (MiB)" for a in algorithms) + " |",
        "|---|" + "---|" * len(algorithms),
    ]
    table += ["| " + " | ".join([str(r["T"])] + [f"{r[a + '_MiB']:.1f}" for a in algorithms]) + " |" for r in rows]
    write_report(args.out, args.device, {"sizes": sizes, "batch": args.batch, "stack": args.stack, "rows": rows}, table)


if __name__ == "__main__":
    main()
