"""RHEL's gradient error as sequences grow, in float32 and float64, for both stack echoes.

RHEL relies on the echo retracing the forward run backwards. Round-off breaks exact reversal, and dynamics
that amplify perturbations amplify that error over long sequences; BPTT has no such reversal. For a random
stack of nonlinear HRUs with the loss on the last step, this prints the relative error of each estimate
against float64 BPTT, the error of float32 BPTT, and the gradient's norm (its growth shows the expanding regime).
Usage: python benchmarks/rhel_long_sequences.py [--lengths 100,400,1600] [--sizes 32,32] [--batch 16]
       [--out benchmarks/results/rhel_long_sequences]
"""

from __future__ import annotations

import argparse
import math

import torch
from report import write_report
from rhel_gradient_check import rel_error

from eqprop.core.nudging import get_cost
from eqprop.models.hamiltonian import HamiltonianSSM
from eqprop.rules.echo_learning import STACK_ECHOES, bptt_gradients, rhel_gradients


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="100,400,1600")
    ap.add_argument("--sizes", default="32,32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--dt", type=float, default=0.1)
    ap.add_argument("--out", default="benchmarks/results/rhel_long_sequences")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cost = get_cost("cross_entropy")
    eps = {torch.float64: 1e-3, torch.float32: 1e-2}  # float32 needs a larger eps above its round-off
    rows = []
    for length in [int(v) for v in args.lengths.split(",")]:
        torch.manual_seed(0)
        model = HamiltonianSSM(args.features, sizes, 4, dt=args.dt).double()
        x = torch.randn(length, args.batch, args.features, dtype=torch.float64)
        y = torch.nn.functional.one_hot(torch.randint(0, 4, (args.batch,)), 4).double()
        ref = bptt_gradients(model, x, y, cost, "last")[0]
        row = {"T": length, "grad_norm": math.sqrt(sum(float(r.pow(2).sum()) for r in ref))}
        for dtype, name in ((torch.float64, "f64"), (torch.float32, "f32")):
            model.to(dtype)
            xs, ys = x.to(dtype), y.to(dtype)
            for stack in STACK_ECHOES:
                grads = rhel_gradients(model, xs, ys, cost, "last", epsilon=eps[dtype], stack=stack)[0]
                row[f"rhel_{stack}_{name}"] = rel_error(grads, ref)
        row["bptt_f32"] = rel_error(bptt_gradients(model, x.float(), y.float(), cost, "last")[0], ref)
        print(row, flush=True)
        rows.append(row)
    table = [
        f"HSSM sizes {sizes} (nonlinear), dt = {args.dt}, batch {args.batch}, {args.features} input features, "
        "cross-entropy on the last step; relative error against float64 BPTT (eps 1e-3 in float64, 1e-2 in "
        "float32, relative).",
        "",
        "| T | gradient norm | RHEL lock-step f64 | RHEL sequential f64 | RHEL lock-step f32 | "
        "RHEL sequential f32 | BPTT f32 |",
        "|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['T']} | {r['grad_norm']:.3g} | {r['rhel_lockstep_f64']:.2e} | {r['rhel_sequential_f64']:.2e} | "
        f"{r['rhel_lockstep_f32']:.2e} | {r['rhel_sequential_f32']:.2e} | {r['bptt_f32']:.2e} |"
        for r in rows
    ]
    write_report(args.out, "cpu", {"sizes": sizes, "batch": args.batch, "dt": args.dt, "rows": rows}, table)


if __name__ == "__main__":
    main()
