"""Peak GPU memory of a C-EP training step vs BPTT through the free phase, as the iteration count grows.

EP keeps only the current state (memory flat in T); BPTT stores every iterate (memory linear in T).
Usage: python benchmarks/memory.py [--batch 128] [--iterations 10,20,40,80] [--out benchmarks/results/memory]
Needs CUDA (torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json

import torch
from report import write_report

from eqprop import dchn, get_algorithm


def peak(algorithm: str, iterations: int, batch: int, dtype: str | None) -> float:
    torch.manual_seed(0)
    net = dchn(3, 10).cuda()
    alg = get_algorithm(algorithm, free_iterations=iterations, nudged_iterations=max(1, iterations // 4), dtype=dtype)
    x = torch.randn(batch, 3, 32, 32, device="cuda")
    labels = torch.randint(0, 10, (batch,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    alg.step(net, x, labels)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iterations", default="10,20,40,80")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--out", default="benchmarks/results/memory")
    args = ap.parse_args()
    rows = []
    for t in [int(v) for v in args.iterations.split(",")]:
        row = {
            "T": t,
            "CEP_MiB": peak("CEP", t, args.batch, args.dtype),
            "BPTT_MiB": peak("BPTT", t, args.batch, args.dtype),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    table = ["| T (free iterations) | C-EP step peak (MiB) | BPTT step peak (MiB) |", "|---|---|---|"]
    table += [f"| {r['T']} | {r['CEP_MiB']:.0f} | {r['BPTT_MiB']:.0f} |" for r in rows]
    write_report(args.out, "cuda", {"rows": rows}, table)


if __name__ == "__main__":
    main()
