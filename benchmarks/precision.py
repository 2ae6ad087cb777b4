"""Precision of the C-EP update: per-tensor cosine between 16-bit and fp32 updates of the DCHN, at init and
after training on MNIST for a while (issue: speed engine, ">= 0.99 per tensor on a trained network").

Variants (all C-EP, asynchronous, T + K + K iterations, beta 0.25), each against the exact fp32 update
(TF32 off while measuring):
  bf16-same       all three phases in bf16 (states and convolutions)
  bf16-full       bf16 free phase, nudged phases in fp32
  bf16-deviation  bf16 free phase, nudged phases in deviation mode (fp32 states, bf16 convolutions of s - s_free)
  bf16-deviation-refine10  the same after 10 deviation-mode iterations refining the bf16 free state (fp32 input)
References: "fp32" (every phase in exact fp32 from the zero state) and "fp32-at-bf16-equilibrium" (exact fp32
nudged phases at the equilibrium the bf16 free phase reaches, refined by 100 fp32 iterations): the energy has
several fixed points and a bf16 free phase may settle in another one than the fp32 free phase; the second
reference isolates the arithmetic error of the contrast from that choice.
Controls, to separate arithmetic from the equilibrium's own sensitivity (both exact fp32):
  fp32-input-bf16   the input rounded to bf16 (what any bf16 free phase sees)
  fp32-input-noise  the input plus N(0, 1e-3) noise

Usage: python benchmarks/precision.py [--device cuda] [--width 1.0] [--gains 0.8] [--batch 128] [--steps 0,500]
       [--refine 10,30] [--train-compare STEPS] [--data-dir ../shared/data/mnist] [--eval-batches 4]
       [--out benchmarks/results/precision_<device>]
``--train-compare`` also trains fresh networks with fp32, bf16 and bf16 deviation + refinement and reports
their test errors: what the update's precision does to learning.
Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from report import cosine, write_report

from eqprop import dchn, get_algorithm, make_optimizer, relax
from eqprop.training.data import load_mnist

T, K, BETA = 60, 15, 0.25
LRS = [0.0625, 0.0375, 0.025, 0.02, 0.0125]  # Table 5, MNIST


@contextlib.contextmanager
def exact_fp32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def summed_update(alg, net, batches, refine_at_bf16: bool = False) -> list[torch.Tensor]:
    """The C-EP update summed over ``batches`` (as one larger batch would give). ``refine_at_bf16``: the exact
    fp32 update at the equilibrium the bf16 free phase reaches (bf16 free phase, then 100 fp32 iterations)."""
    total = None
    for x, y in batches:
        if refine_at_bf16:
            with torch.no_grad():
                free = get_algorithm("CEP", dtype="bfloat16", free_iterations=T).free_phase(net, x)
                free = relax(net, [x] + list(free.states[1:]), 100)
            g = alg.gradients(net, x, alg.targets(net, y), free)
        else:
            g = alg.step(net, x, y).grads
        g = [t.detach().float() for t in g]
        total = g if total is None else [a + b for a, b in zip(total, g)]
    return total


def measure(net, batches, names, refines: list[int]) -> dict:
    """Per-tensor cosines of every variant against the two fp32 references."""
    base = dict(beta=BETA, free_iterations=T, nudged_iterations=K)
    with exact_fp32():
        refs = {
            "fp32": summed_update(get_algorithm("CEP", **base), net, batches),
            "fp32-at-bf16-equilibrium": summed_update(get_algorithm("CEP", **base), net, batches, True),
        }
        noise = torch.Generator().manual_seed(0)
        variants = {
            "bf16-same": (get_algorithm("CEP", dtype="bfloat16", **base), batches),
            "bf16-full": (get_algorithm("CEP", dtype="bfloat16", nudged_precision="full", **base), batches),
            "bf16-deviation": (get_algorithm("CEP", dtype="bfloat16", nudged_precision="deviation", **base), batches),
            **{
                f"bf16-deviation-refine{r}": (
                    get_algorithm("CEP", dtype="bfloat16", nudged_precision="deviation", refine_iterations=r, **base),
                    batches,
                )
                for r in refines
            },
            "fp32-input-bf16": (get_algorithm("CEP", **base), [(x.bfloat16().float(), y) for x, y in batches]),
            "fp32-input-noise": (
                get_algorithm("CEP", **base),
                [(x + 1e-3 * torch.randn(x.shape, generator=noise).to(x), y) for x, y in batches],
            ),
        }
        out = {ref: {} for ref in refs}
        for key, (alg, data) in variants.items():
            g = summed_update(alg, net, data)
            for ref, r in refs.items():
                out[ref][key] = {n: cosine(a, b) for n, a, b in zip(names, g, r)}
        out["fp32"]["fp32-at-bf16-equilibrium"] = {
            n: cosine(a, b) for n, a, b in zip(names, refs["fp32-at-bf16-equilibrium"], refs["fp32"])
        }
    return out


def train_compare(args, data, device, refine: int) -> list[str]:
    """Fresh networks (same seed, same batches) trained with each precision; test error on the full test set."""
    graphs = device.type == "cuda"
    setups = {
        "fp32 (TF32 on GPU)": {},
        "bf16-same": dict(dtype="bfloat16", channels_last=graphs),
        f"bf16-deviation-refine{refine}": dict(
            dtype="bfloat16", channels_last=graphs, nudged_precision="deviation", refine_iterations=refine
        ),
    }
    lines = [
        f"Training from scratch, {args.train_compare} steps of batch {args.batch}, same seed and batches:",
        "",
        "| precision | test error (10k) | train time (s) |",
        "|---|---|---|",
    ]
    for name, kw in setups.items():
        torch.manual_seed(args.seed)
        net = dchn(1, 10, channel_multiplier=args.width, gains=args.gains).to(device)
        opt = make_optimizer(net, LRS, momentum=0.9, weight_decay=3e-4)
        alg = get_algorithm("CEP", beta=BETA, free_iterations=T, nudged_iterations=K, cuda_graphs=graphs, **kw)
        gen = torch.Generator().manual_seed(args.seed + 1)
        t0 = time.perf_counter()
        for _ in range(args.train_compare):
            idx = torch.randint(0, len(data.train_labels), (args.batch,), generator=gen)
            alg.step(net, data.prepare(data.train_images[idx]).to(device), data.train_labels[idx].to(device))
            opt.step()
        if graphs:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        with torch.no_grad():
            wrong = sum(
                int(
                    (
                        alg.free_phase(net, data.prepare(data.test_images[i : i + 500]).to(device))
                        .states[-1]
                        .float()
                        .argmax(1)
                        .cpu()
                        != data.test_labels[i : i + 500]
                    ).sum()
                )
                for i in range(0, len(data.test_labels), 500)
            )
        err = wrong / len(data.test_labels)
        lines.append(f"| {name} | {100 * err:.2f}% | {dt:.0f} |")
        print(f"train-compare {name}: test error {err:.4f} in {dt:.0f} s", flush=True)
    return lines + [""]


@torch.no_grad()
def test_error(net, data, device, n: int = 1000) -> float:
    x = data.prepare(data.test_images[:n]).to(device)
    y = data.test_labels[:n].to(device)
    out = get_algorithm("CEP", free_iterations=T).free_phase(net, x).states[-1]
    return float((out.argmax(1) != y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--width", type=float, default=1.0, help="channel multiplier of the Table 5 DCHN")
    ap.add_argument("--gains", type=float, default=0.8, help="init gain of every layer (eq. 102)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", default="0,500", help="training steps at which to measure (increasing)")
    ap.add_argument("--eval-batches", type=int, default=4)
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--refine", default="10", help="refinement iteration counts to compare (comma-separated)")
    ap.add_argument(
        "--train-compare",
        type=int,
        default=0,
        help="also train fresh networks this many steps with fp32, bf16 and bf16 deviation + refinement",
    )
    ap.add_argument("--save", default=None, help="write the trained network here (for convergence.py --checkpoint)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    data = load_mnist(args.data_dir)
    net = dchn(1, 10, channel_multiplier=args.width, gains=args.gains).to(device)
    names = [n for n, _ in net.named_parameters()]
    opt = make_optimizer(net, LRS, momentum=0.9, weight_decay=3e-4)
    trainer = get_algorithm("CEP", beta=BETA, free_iterations=T, nudged_iterations=K, cuda_graphs=device.type == "cuda")
    gen = torch.Generator().manual_seed(args.seed)
    evals = [
        (
            data.prepare(data.test_images[i * args.batch : (i + 1) * args.batch]).to(device),
            data.test_labels[i * args.batch : (i + 1) * args.batch].to(device),
        )
        for i in range(args.eval_batches)
    ]
    checkpoints = sorted(int(s) for s in args.steps.split(","))
    refines = [int(r) for r in args.refine.split(",") if r]
    rows, done, t0 = [], 0, time.perf_counter()
    for target in checkpoints:
        while done < target:  # C-EP training in fp32 (TF32 allowed), the library's default engine
            idx = torch.randint(0, len(data.train_labels), (args.batch,), generator=gen)
            trainer.step(net, data.prepare(data.train_images[idx]).to(device), data.train_labels[idx].to(device))
            opt.step()
            done += 1
        err = test_error(net, data, device)
        cos = measure(net, evals, names, refines)
        rows.append({"train_steps": done, "test_error_1k": err, "cosine": cos})
        for ref, c in cos.items():
            print(
                f"step {done}: test error {err:.4f}; min cosine vs {ref}: "
                f"{ {k: round(min(v.values()), 4) for k, v in c.items()} } ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    if args.save:
        torch.save({"state_dict": net.state_dict(), "width": args.width, "gains": args.gains, "steps": done}, args.save)
    short = [n.replace("interactions.", "") for n in names]
    table = []
    for r in rows:
        for ref, cos in r["cosine"].items():
            table += [
                f"After {r['train_steps']} training steps (test error on 1000 images: "
                f"{100 * r['test_error_1k']:.1f}%), cosine against the {ref} update:",
                "",
                "| variant | " + " | ".join(short) + " | min |",
                "|---|" + "---|" * (len(short) + 1),
            ]
            for key, c in cos.items():
                table.append(f"| {key} | " + " | ".join(f"{c[n]:.4f}" for n in names) + f" | {min(c.values()):.4f} |")
            table.append("")
    if args.train_compare:
        table += train_compare(args, data, device, refines[-1] if refines else 10)
    meta = {
        "width": args.width,
        "gains": args.gains,
        "batch": args.batch,
        "eval_batches": args.eval_batches,
        "T": T,
        "K": K,
        "beta": BETA,
    }
    write_report(
        args.out or f"benchmarks/results/precision_{device.type}", device, {"settings": meta, "rows": rows}, table
    )


if __name__ == "__main__":
    main()
