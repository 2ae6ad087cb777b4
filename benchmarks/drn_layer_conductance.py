"""How stiff each layer of trained DRNs is: per run, the mean over a layer's nodes of the conductance that joins it to
the layer before (1^T G_k), at initialisation (a fresh draw of the same circuit) and in the run's last checkpoint,
with the mean |b_k| of its current sources. A Markdown table on stdout.

The output node of a DRN has no conductance but G_L's (module docstring of ``eqprop.models.resistive``), so its
voltage v_L = (v_{L-1} G_L + b_L) / 1^T G_L is unchanged when (G_L, b_L) are scaled together while the energy scales
with them: this table shows where learning rules move that scale.

    python benchmarks/drn_layer_conductance.py runs/drn_1h_study/*_seed0
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories of DRN runs (model=drn)")
    parser.add_argument("--checkpoint", default="last", choices=["last", "best"])
    args = parser.parse_args()
    torch.set_num_threads(1)

    from eqprop.models.resistive import DeepResistiveNetwork
    from eqprop.training.results import read_run
    from eqprop.training.saved import load_model

    rows = []
    for run in args.run_dirs:
        net = load_model(run, args.checkpoint)
        if not isinstance(net, DeepResistiveNetwork):
            raise SystemExit(f"{run} is not a DRN run (its model is {type(net).__name__})")
        fresh = copy.deepcopy(net)
        torch.manual_seed(0)
        with torch.no_grad():
            fresh.reset_parameters()
        metrics = read_run(run).metrics
        cells = []
        for k in range(1, net.depth + 1):
            g0, g = fresh.conductance(k).detach().sum(0).mean(), net.conductance(k).detach().sum(0).mean()
            cells.append(f"{float(g0):.2f} -> {float(g):.3g} (|b| {float(net.bias(k).detach().abs().mean()):.2g})")
        rows.append((run.name, int(metrics[-1]["epoch"]) if metrics else 0, cells))
    depth = max(len(c) for _, _, c in rows)
    heads = [f"layer {k}: 1^T G_{k} per node, init -> trained" for k in range(1, depth + 1)]
    print("| run | epoch | " + " | ".join(heads) + " |")
    print("|---|---|" + "---|" * depth)
    for name, epoch, cells in rows:
        print(f"| {name} | {epoch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
