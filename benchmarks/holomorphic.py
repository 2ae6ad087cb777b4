"""Holomorphic EP against centered EP at equal gradient accuracy: cost per training step and cosine to the RBP
oracle (issue: holomorphic EP).

The network is the holomorphic-EP paper's CIFAR-10 architecture, narrowed by ``--width`` (conv widths
128-256-512-512 x width, softmax pooling, holo_hard_sigmoid, readout of the 1x1 last layer), at its init, on a
batch of CIFAR-shaped random inputs. The oracle is the implicit gradient (RBP, CG to 1e-10) of the same network
in float64; each rule runs in ``--dtype``. A "step" is what training pays: the free phase (T iterations), the
nudged phases (K iterations each) and the parameter gradients, timed over ``--repeats`` steps after one warm-up.

Usage: python benchmarks/holomorphic.py [--device cpu] [--width 0.125] [--batch 16] [--dtype float32]
       [--free 150] [--nudged 60] [--out benchmarks/results/holomorphic_<device>]
Writes <out>.json and <out>.md: every setting, then the cheapest setting of each rule reaching each cosine target.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from report import write_report

from eqprop import dchn, get_algorithm, one_hot

CEP_BETAS = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005)
HEP_SETTINGS = [(r, n) for r in (0.5, 1.0) for n in (2, 3, 4, 5, 6, 8)]
TARGETS = (0.99, 0.999, 0.9999, 0.99999)


def flat(grads: list[torch.Tensor | None]) -> torch.Tensor:
    return torch.cat([g.detach().double().flatten() for g in grads if g is not None])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(alg, net, x, y, ref: torch.Tensor, repeats: int, device: torch.device) -> dict:
    free = alg.free_phase(net, x)
    g = flat(alg.gradients(net, x, y, free))  # warm-up, and the estimate whose accuracy is reported
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        free = alg.free_phase(net, x)
        alg.gradients(net, x, y, free)
    sync(device)
    seconds = (time.perf_counter() - start) / repeats
    cos = float(g @ ref / (g.norm() * ref.norm()))
    return {"cosine": cos, "rel_error": float((g - ref).norm() / ref.norm()), "step_s": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--free", type=int, default=150)
    ap.add_argument("--nudged", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":  # exact fp32: TF32 would dominate the comparison
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    net64 = (
        dchn(
            3,
            10,
            32,
            channel_multiplier=args.width,
            gains=1.732,
            activation="holo_hard_sigmoid",
            pooling="softmax",
            paddings=[1, 1, 1, 0],
            readout=True,
        )
        .double()
        .to(device)
    )
    x64 = torch.randn(args.batch, 3, 32, 32, dtype=torch.float64, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    y64 = one_hot(labels, 10, torch.float64).to(device)
    phases = dict(
        cost="cross_entropy", free_iterations=args.free, nudged_iterations=args.nudged, schedule="synchronous"
    )
    rbp = get_algorithm("RBP", cg_tol=1e-10, cg_iterations=1000, **phases)
    free = rbp.free_phase(net64, x64)
    residual = float(net64.fixed_point_residual(free.states).max())
    ref = flat(rbp.gradients(net64, x64, y64, free))
    dtype = getattr(torch, args.dtype)
    net = copy.deepcopy(net64).to(dtype)
    x, y = x64.to(dtype), y64.to(dtype)
    rows = []
    for beta in CEP_BETAS:
        rows.append(
            {
                "rule": "CEP",
                "beta": beta,
                "points": 2,
                **measure(get_algorithm("CEP", beta=beta, **phases), net, x, y, ref, args.repeats, device),
            }
        )
        print(rows[-1], flush=True)
    for radius, n in HEP_SETTINGS:
        alg = get_algorithm("HEP", beta=radius, points=n, **phases)
        rows.append({"rule": "HEP", "beta": radius, "points": n, **measure(alg, net, x, y, ref, args.repeats, device)})
        print(rows[-1], flush=True)
    best = []
    for target in TARGETS:
        for rule in ("CEP", "HEP"):
            ok = [r for r in rows if r["rule"] == rule and r["cosine"] >= target]
            pick = min(ok, key=lambda r: r["step_s"]) if ok else None
            best.append({"target": target, "rule": rule, "setting": pick})
    table = [
        f"DCHN of the HEP paper x {args.width} width, batch {args.batch}, {args.dtype}, T = {args.free}, "
        f"K = {args.nudged} (synchronous); oracle: float64 RBP (free-state residual {residual:.1e})",
        "",
        "| rule | \\|beta\\| | N | cosine to RBP | relative error | step time |",
        "|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['rule']} | {r['beta']} | {r['points']} | {r['cosine']:.7f} | {r['rel_error']:.2e} "
        f"| {r['step_s'] * 1e3:.0f} ms |"
        for r in rows
    ]
    table += ["", "Cheapest setting reaching each cosine:", "", "| cosine >= | C-EP | HEP |", "|---|---|---|"]
    for target in TARGETS:
        cells = []
        for rule in ("CEP", "HEP"):
            pick = next(b["setting"] for b in best if b["target"] == target and b["rule"] == rule)
            cells.append(
                "not reached"
                if pick is None
                else f"\\|beta\\| {pick['beta']}, N {pick['points']}: {pick['step_s'] * 1e3:.0f} ms"
            )
        table.append(f"| {target} | {cells[0]} | {cells[1]} |")
    out = args.out or f"benchmarks/results/holomorphic_{device.type}"
    write_report(out, device, {"args": vars(args), "oracle_residual": residual, "rows": rows, "best": best}, table)


if __name__ == "__main__":
    main()
