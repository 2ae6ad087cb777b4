"""Training-step time of the Table 5 DCHN with C-EP, throughput, achieved FLOP/s and projected run time.

Settings compared (issue: speed engine):
  sync32  - synchronous, fp32, 250 + 30 + 30 iterations (Laborieux et al. 2021 setting)
  async16 - asynchronous, bf16, 60 + 15 + 15 iterations (the comparative study's setting)
  and variants: *_fast (CUDA graphs + channels-last), *_fused (the same + torch.compile'd pooling kernels),
  *_exact (TF32 off), async16_full/_dev/_devref (nudged phases in fp32 / in deviation mode / + refinement)
Engines: ``messages`` (explicit messages, one conv + one transposed conv per interaction per iteration)
and ``autograd`` (the straightforward baseline: recomputes Phi and its gradient by autograd every
half-iteration, i.e. recomputes each convolution for its pooling indices).

Usage: python benchmarks/step_time.py [--device cuda] [--batch 128] [--steps 5] [--settings sync32,async16]
       [--engines messages,autograd] [--out benchmarks/results/step_time_<device>]
Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from report import write_report

from eqprop import dchn, get_algorithm, make_optimizer, set_fused_kernels

SYNC32 = dict(schedule="synchronous", dtype=None, free_iterations=250, nudged_iterations=30)
ASYNC16 = dict(schedule="asynchronous", dtype="bfloat16", free_iterations=60, nudged_iterations=15)
FAST = dict(cuda_graphs=True, channels_last=True)  # CUDA graphs + channels-last (GPU only)
DEVREF = dict(nudged_precision="deviation", refine_iterations=10)
SETTINGS = {
    "sync32": SYNC32,
    "async16": ASYNC16,
    "async32": dict(ASYNC16, dtype=None),
    "sync32_fast": SYNC32 | FAST,
    "async16_fast": ASYNC16 | FAST,
    "async16_cl": dict(ASYNC16, channels_last=True),
    "async16_graphs": dict(ASYNC16, cuda_graphs=True),
    # nudged phases in fp32, or in deviation mode (fp32 states, bf16 convolutions of s - s_free)
    "async16_full_fast": ASYNC16 | FAST | dict(nudged_precision="full"),
    "async16_devref_fast": ASYNC16 | FAST | DEVREF,
    # the same with torch.compile'd 2x2 pooling kernels (int8 pooling codes)
    "async16_fused": ASYNC16 | FAST | dict(fused=True),
    "async16_devref_fused": ASYNC16 | FAST | DEVREF | dict(fused=True),
    "sync32_fused": SYNC32 | FAST | dict(fused=True),
    "async16_dev_fast": ASYNC16 | FAST | dict(nudged_precision="deviation"),
    # exact fp32 (TF32 off: PyTorch's cuDNN default turns TF32 on for "fp32" convolutions)
    "sync32_exact": dict(SYNC32, tf32=False),
    "sync32_exact_fast": SYNC32 | FAST | dict(tf32=False),
}
# dense tensor-core peaks in FLOP/s (vendor figures, no sparsity). "float32" convolutions run as TF32 under
# PyTorch's default (torch.backends.cudnn.allow_tf32 = True), so their peak is the TF32 one.
# "float32_exact" (TF32 off) runs on the CUDA cores: 67 TFLOP/s (H100/H200 SXM), 19.5 (A100).
PEAKS = {
    "H100": {"bfloat16": 989e12, "float32": 494.7e12, "float32_exact": 67e12},
    "H200": {"bfloat16": 989e12, "float32": 494.7e12, "float32_exact": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12, "float32_exact": 19.5e12},
}


def flops_per_iteration(net, batch: int) -> float:
    """FLOPs of one relaxation iteration from the layer shapes: each conv interaction costs one convolution
    at the pre-pooling resolution (2 * C_out * C_in * k^2 * H * W per image) when its pre layer changes, plus
    the same again for the transposed convolution when its pre layer is free; dense likewise."""
    fwd = bwd = 0.0
    for inter in net.interactions.values():
        if inter.pre is None:
            continue
        if inter.kind == "conv_pool":
            c_out, c_in, kh, kw = inter.weight.shape
            h, w = net.layers[inter.pre].shape[1:]
            f = 2.0 * c_out * c_in * kh * kw * h * w
        else:
            f = 2.0 * inter.weight.numel()
        if inter.pre > 0:  # the input layer never changes: its conv is computed once per phase
            fwd += f
            bwd += f
    return batch * (fwd + bwd)


def time_step(setting: str, engine: str, device: torch.device, batch: int, steps: int, warmup: int) -> dict:
    kw = dict(SETTINGS[setting])
    tf32 = kw.pop("tf32", True)
    fused = kw.pop("fused", False)
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        return _time_step(setting, kw, engine, device, batch, steps, warmup, fused)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _time_step(
    setting: str, kw: dict, engine: str, device: torch.device, batch: int, steps: int, warmup: int, fused: bool
) -> dict:
    torch.manual_seed(0)
    net = dchn(3, 10).to(device)
    set_fused_kernels(net, fused)
    alg = get_algorithm("CEP", beta=0.25, engine=engine, **kw)
    opt = make_optimizer(net, [0.0625, 0.0375, 0.025, 0.02, 0.0125], momentum=0.9, weight_decay=3e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        alg.step(net, x, labels)
        opt.step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        alg.step(net, x, labels)
        opt.step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    iters = kw["free_iterations"] + kw.get("refine_iterations", 0) + 2 * kw["nudged_iterations"]
    flops = iters * flops_per_iteration(net, batch)
    # inference-only free phase (test pass), measured too
    t1 = time.perf_counter()
    for _ in range(steps):
        alg.free_phase(net, x)
    sync()
    dt_free = (time.perf_counter() - t1) / steps
    train_steps, test_steps = -(-50000 // batch), -(-10000 // batch)
    projected = 100 * (train_steps * dt + test_steps * dt_free)
    dtype = kw["dtype"] or "float32"
    if dtype == "float32" and not torch.backends.cudnn.allow_tf32:
        dtype = "float32_exact"
    row = {
        "setting": setting,
        "engine": engine,
        "batch": batch,
        "iterations": iters,
        "step_s": dt,
        "free_phase_s": dt_free,
        "images_per_s": batch / dt,
        "relaxation_flops_per_step": flops,
        "achieved_tflops": flops / dt / 1e12,
        "projected_100_epoch_cifar10_h": projected / 3600,
        "dtype": dtype,
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        for key, peaks in PEAKS.items():
            if key in name:
                row["fraction_of_peak"] = flops / dt / peaks[dtype]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--settings", default="sync32,async16")
    ap.add_argument("--engines", default="messages")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms per shape")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    device = torch.device(args.device)
    rows = []
    for setting in args.settings.split(","):
        for engine in args.engines.split(","):
            row = time_step(setting, engine, device, args.batch, args.steps, args.warmup)
            print(json.dumps(row), flush=True)
            rows.append(row)
    by = {(r["setting"], r["engine"]): r for r in rows}
    ratios = {}
    for slow, fast in ((a, b) for a in SETTINGS for b in SETTINGS if a.startswith("sync") and b.startswith("async16")):
        if (slow, "messages") in by and (fast, "messages") in by:
            ratios[f"{fast}_vs_{slow}_speedup"] = by[(slow, "messages")]["step_s"] / by[(fast, "messages")]["step_s"]
    for s in SETTINGS:
        if (s, "messages") in by and (s, "autograd") in by:
            ratios[f"{s}_messages_vs_autograd_speedup"] = by[(s, "autograd")]["step_s"] / by[(s, "messages")]["step_s"]
    table = [
        "| setting | engine | batch | iters | step (s) | images/s | TFLOP/s | frac. of peak | 100-ep CIFAR-10 (h) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        frac = f"{r['fraction_of_peak']:.3f}" if "fraction_of_peak" in r else "-"
        table.append(
            f"| {r['setting']} | {r['engine']} | {r['batch']} | {r['iterations']} | {r['step_s']:.4f} | "
            f"{r['images_per_s']:.1f} | {r['achieved_tflops']:.2f} | {frac} | "
            f"{r['projected_100_epoch_cifar10_h']:.2f} |"
        )
    table += [""] + [f"- {k}: {v:.2f}x" for k, v in ratios.items()]
    write_report(
        args.out or f"benchmarks/results/step_time_{device.type}",
        device,
        {"rows": rows, "ratios": ratios, "cudnn_benchmark": args.cudnn_benchmark},
        table,
    )


if __name__ == "__main__":
    main()
