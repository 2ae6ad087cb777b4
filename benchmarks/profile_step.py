"""Profile one C-EP training step of the Table 5 DCHN (CUDA kernels by total time).

Usage: python benchmarks/profile_step.py [--dtype bfloat16] [--channels-last] [--batch 128]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from eqprop import dchn, get_algorithm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rows", type=int, default=15)
    args = ap.parse_args()
    net = dchn(3, 10).cuda()
    alg = get_algorithm("CEP", dtype=None if args.dtype == "float32" else args.dtype)
    x = torch.randn(args.batch, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (args.batch,), device="cuda")
    for _ in range(2):
        alg.step(net, x, y)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        alg.step(net, x, y)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
