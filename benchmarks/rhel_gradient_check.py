"""RHEL against BPTT as epsilon shrinks, with the two negative controls (float64).

A random nonlinear HRU (5 units, 3 inputs, readout of 4), 60 steps, dt = 0.1, squared-error loss against
random targets at every step: the setting of tests/test_echo_learning.py. Prints the relative error
||g_RHEL - g_BPTT|| / ||g_BPTT|| for the correct estimator (O(eps^2)), for dV/dtheta taken at the full step,
and for the non-reversible Euler integrator (both biased: the error stays put as eps shrinks).
Usage: python benchmarks/rhel_gradient_check.py [--out benchmarks/results/rhel_gradient_check]
"""

from __future__ import annotations

import argparse

import torch
from report import rel_error, write_report

from eqprop.core.nudging import get_cost
from eqprop.models.hamiltonian import HamiltonianSSM
from eqprop.rules.echo_learning import bptt_gradients, rhel_gradients

EPSILONS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)


def errors(integrator: str, at: str) -> list[float]:
    torch.manual_seed(0)
    model = HamiltonianSSM(3, [5], 4, hru="nonlinear", dt=0.1, integrator=integrator).double()
    x, y = torch.randn(60, 2, 3, dtype=torch.float64), torch.randn(60, 2, 4, dtype=torch.float64)
    cost = get_cost("squared_error")
    ref = bptt_gradients(model, x, y, cost, "every")[0]
    return [rel_error(rhel_gradients(model, x, y, cost, "every", epsilon=e, at=at)[0], ref) for e in EPSILONS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/rhel_gradient_check")
    args = ap.parse_args()
    rows = {
        "RHEL (leapfrog, half step)": errors("leapfrog", "half"),
        "control: dV/dtheta at the full step": errors("leapfrog", "full"),
        "control: Euler, force at the old position": errors("euler", "half"),
    }
    table = ["| estimator | " + " | ".join(f"eps={e:g}" for e in EPSILONS) + " |", "|---|" + "---|" * len(EPSILONS)]
    table += [f"| {name} | " + " | ".join(f"{v:.2e}" for v in vals) + " |" for name, vals in rows.items()]
    write_report(args.out, "cpu", {"epsilons": list(EPSILONS), "relative_errors": rows}, table)


if __name__ == "__main__":
    main()
