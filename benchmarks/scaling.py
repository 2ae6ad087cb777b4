"""Data-parallel scaling: training throughput of one run on 1, 2, ... processes under torchrun, and the scaling
efficiency throughput(N) / (N x throughput(1)). On a multi-GPU node each rank takes one GPU (NCCL); on a CPU the
ranks are gloo processes sharing the cores (so expect no gain on a machine with few cores).

    python benchmarks/scaling.py --nprocs 1 2 --out benchmarks/results/scaling_cpu      # this CPU
    python benchmarks/scaling.py configs/comparative_study/table2/cifar10_100.yaml data_dir=/data \\
        --nprocs 1 2 4 8 --epochs 2 --out benchmarks/results/scaling_h100x8               # a GPU node

Strong scaling by default (the global batch stays the config's, each rank takes 1/N of it); ``--weak`` keeps
the per-rank batch and multiplies the global one by N. Throughput is measured over the epochs after the first
(start-up, cuDNN autotuning and CUDA graph capture excluded), from the run's own per-epoch train time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="experiment YAML (default: the main job on digits)")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--nprocs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--weak", action="store_true", help="per-rank batch fixed: global batch x N")
    parser.add_argument("--threads", type=int, default=None, help="OMP threads per process (CPU runs)")
    parser.add_argument("--out", default="benchmarks/results/scaling")
    args = parser.parse_args()
    if args.config and "=" in args.config:  # no experiment file: the first item is an override
        args.config, args.overrides = None, [args.config, *args.overrides]

    from eqprop.training.config import load_config

    base = load_config(args.config, args.overrides)
    rows = []
    for n in args.nprocs:
        batch = base.batch_size * (n if args.weak else 1)
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
            cmd += ["-m", "eqprop", "train", *([args.config] if args.config else []), *args.overrides]
            cmd += [f"epochs={args.epochs}", f"batch_size={batch}", "progress=false", "tensorboard=false"]
            cmd += [f"out_dir={run}"]
            env = dict(os.environ)
            if args.threads:
                env["OMP_NUM_THREADS"] = str(args.threads)
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        timed = metrics[1:] or metrics
        seconds = sum(m["train_time"] for m in timed) / len(timed)
        rows.append({"nprocs": n, "global_batch": batch, "epoch_train_seconds": seconds})
    one = next((r for r in rows if r["nprocs"] == 1), None)
    table = [
        "| processes | global batch | train s / epoch | speed-up | efficiency |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if one is not None:
            r["speedup"] = one["epoch_train_seconds"] / r["epoch_train_seconds"]  # an epoch is the same samples
            r["efficiency"] = r["speedup"] / r["nprocs"]
        table.append(
            f"| {r['nprocs']} | {r['global_batch']} | {r['epoch_train_seconds']:.2f} | "
            f"{r.get('speedup', float('nan')):.2f}x | {100 * r.get('efficiency', float('nan')):.0f}% |"
        )
    device = "cuda" if base.device != "cpu" and __import__("torch").cuda.is_available() else "cpu"
    write_report(args.out, device, {"rows": rows, "weak": args.weak, "epochs": args.epochs}, table)


if __name__ == "__main__":
    main()
