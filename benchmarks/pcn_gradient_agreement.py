"""Per-layer agreement of a PCN run's EP estimate with backprop at its checkpoint, for several K and orders.

Loads the network of a run directory (its ``config.json`` and ``checkpoint_last.pt``; ``--init``: the run's
network as initialised instead), takes the first ``--images`` training images (normalised, not augmented) and
prints, per parameter tensor, the cosine and the norm ratio of an EP rule (the run's beta and cost, ``mod-pgd``)
against PC-BP's exact gradient, for each nudged-iteration count K and each asynchronous order. With few
iterations the nudged phases of a trained network may not have settled; the layers updated first in the last
iteration then carry the stale part of their error (docs/reproductions.md, the PCN diagnostic).
Usage: python benchmarks/pcn_gradient_agreement.py RUN [--iterations 5 20] [--orders even odd] [--images 256]
       [--data-dir DIR] [--init] [--out benchmarks/results/pcn_gradient_agreement]
"""

from __future__ import annotations

import argparse

import torch
from report import cosine, rel_error, write_report

from eqprop import get_algorithm
from eqprop.training.config import parse_overrides
from eqprop.training.run_directory import read_checkpoint
from eqprop.training.trainer import Trainer, read_run_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a PCN run directory (config.json, checkpoint_last.pt)")
    ap.add_argument("--iterations", type=int, nargs="+", default=[5, 20], help="nudged iterations K to compare")
    ap.add_argument("--orders", nargs="+", default=["even", "odd"], choices=["even", "odd"])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--data-dir", default=None, help="where the run's data set is (default: the run's data_dir)")
    ap.add_argument("--rule", default=None, help="the EP rule (default: the run's, or PC-CEP for a PC-BP run)")
    ap.add_argument("--init", action="store_true", help="the run's network at initialisation, not its checkpoint")
    ap.add_argument("--out", default="benchmarks/results/pcn_gradient_agreement")
    args = ap.parse_args()

    saved = read_run_config(args.run)
    overrides = ["out_dir=none", "device=cpu", "progress=false", "tensorboard=false", f"limit_train={args.images}"]
    overrides += ["limit_test=1"] + ([f"data_dir={args.data_dir}"] if args.data_dir else [])
    cfg = parse_overrides(overrides, base=saved)
    if cfg.model.kind != "pcn":
        raise SystemExit(f"{args.run} trains model={cfg.model.kind}; this check is for predictive-coding runs")
    rule_name = args.rule or ("PC-CEP" if cfg.algorithm == "PC-BP" else cfg.algorithm)
    trainer = Trainer(cfg, log=lambda s: None)
    net = trainer.network
    if not args.init:
        net.load_state_dict(read_checkpoint(f"{args.run}/checkpoint_last.pt", "cpu")["network"])
    net.train()
    data = trainer.data
    x = data.prepare(data.train_images[: args.images])
    labels = data.train_labels[: args.images]

    def estimate(rule) -> list[torch.Tensor]:
        rule.step(net, x, labels)
        return [p.grad.detach().double().clone() for p in net.parameters()]

    exact = estimate(get_algorithm("PC-BP", cost=cfg.cost))
    names = [n for n, _ in net.named_parameters()]
    results: dict[str, dict] = {}
    for first in args.orders:
        for k in args.iterations:
            rule = get_algorithm(rule_name, cost=cfg.cost, beta=cfg.beta, nudged_iterations=k, first=first)
            got = estimate(rule)
            results[f"{first} first, K={k}"] = {
                "cosine": [cosine(a, b) for a, b in zip(got, exact)],
                "norm_ratio": [float(a.norm() / b.norm()) for a, b in zip(got, exact)],
                "relative_error": rel_error(got, exact),
            }
    columns = list(results)
    table = [
        "| parameter | " + " | ".join(f"{c}: cos / ratio" for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for i, name in enumerate(names):
        cells = [f"{results[c]['cosine'][i]:.4f} / {results[c]['norm_ratio'][i]:.3f}" for c in columns]
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    table.append("| relative error, all | " + " | ".join(f"{results[c]['relative_error']:.3f}" for c in columns) + " |")
    state = "initialisation" if args.init else "checkpoint_last.pt"
    payload = {"run": str(args.run), "state": state, "images": args.images, "parameters": names, "results": results}
    write_report(
        args.out,
        "cpu",
        payload,
        [f"{rule_name} vs PC-BP at {args.run} ({state}), {args.images} images", ""] + table,
    )


if __name__ == "__main__":
    main()
