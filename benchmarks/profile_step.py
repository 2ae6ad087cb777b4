"""Profile one C-EP training step of the Table 5 DCHN (CUDA kernels by total time).

Usage: python benchmarks/profile_step.py [--dtype bfloat16] [--channels-last] [--cudnn-benchmark] [--fused]
       [--batch 128]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from eqprop import dchn, get_algorithm, set_fused_kernels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--cudnn-benchmark", action="store_true")
    ap.add_argument("--fused", action="store_true", help="torch.compile'd pooling kernels (set_fused_kernels)")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    net = dchn(3, 10).cuda()
    set_fused_kernels(net, args.fused)
    alg = get_algorithm("CEP", dtype=None if args.dtype == "float32" else args.dtype, channels_last=args.channels_last)
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
