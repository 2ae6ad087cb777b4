"""Small float64 networks and comparison helpers shared by the tests."""

import math
import os
import signal
from pathlib import Path

import numpy as np
import torch

from eqprop import EPNudge, SquaredError, dchn, hopfield_mlp, pc_vgg
from eqprop.core.relaxation import relax
from eqprop.models.hamiltonian import HRU_TYPES, HamiltonianSSM
from eqprop.rules.signals import KnowledgeDistillation, LocalError, WeightedKnowledgeDistillation


def random_drn(sizes=(5, 6, 4, 3), gain=3.0, seed=0):
    """A small float64 DRN at the papers' initialisation with random N(0, 1) bias currents (so that some units sit
    at their diodes' bounds and some do not)."""
    from eqprop.models.resistive import DeepResistiveNetwork

    torch.manual_seed(seed)
    net = DeepResistiveNetwork(list(sizes), input_gain=gain).double()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 1:
                p.normal_()
    return net


def small_mlp():
    net = hopfield_mlp((20, 16, 12, 5), gains=(1.0, 0.8, 0.8)).double()
    x = torch.rand(8, 20, dtype=torch.float64)
    return net, x, torch.randint(0, 5, (8,))


def small_conv():
    """A small DCHN whose hidden units mostly sit inside the box, so that max-pooling has no exact ties
    (zero biases leave many all-zero receptive fields whose pooled maxima tie and make Phi non-smooth)."""
    net = dchn(1, 5, input_size=8, channels=(6, 8), gains=(1.0, 1.0, 0.8)).double()
    with torch.no_grad():
        for k in (1, 2):
            net.interactions[f"bias{k}"].bias.uniform_(0.3, 0.6)
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    return net, x, torch.randint(0, 5, (8,))


def cosine(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


def rel_error(gs, refs):
    num = sum(float((a - b).detach().pow(2).sum()) for a, b in zip(gs, refs))
    den = sum(float(b.detach().pow(2).sum()) for b in refs)
    return math.sqrt(num / den)


def max_diff(xs, ys):
    return max(float((a - b).detach().abs().max()) for a, b in zip(xs, ys))


VGG10_LIKE = dict(
    channels=[4, 4, 6, 6, 8, 8, 8, 8], hidden=[16], pools=[True, True, False, True, False, True, False, True]
)


def skip_pcn(seed=1, fan="fan_out", skips=((2, 5), (5, 8))):
    """VGG10Skip in small (Table 6's pools and skips, narrow widths, 1x32x32 inputs): strided 1x1 skips from layer 2
    into the conv layer 5 and from 5 into the conv + pool layer 8 (layer 5 is a target and a source)."""
    torch.manual_seed(seed)
    net = pc_vgg(1, 10, 32, gains=1.0, skips=skips, fan=fan, **VGG10_LIKE).double()
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    return net, x, torch.randint(0, 10, (4,))


def signals_for(net, kind):
    shapes = {k: net.layers[k].shape for k in (1, 2)}
    if kind in ("LE", "LE-hard"):
        return [LocalError(k, shapes[k], 5, tau=4.0, soft_labels=kind == "LE").double() for k in (1, 2)]
    if kind == "KD":
        return [KnowledgeDistillation(k, StandInTeacher(shapes[k]), tau=2.0) for k in (1, 2)]
    sigs = [WeightedKnowledgeDistillation(k, shapes[k], StandInTeacher(shapes[k]), tau=2.0).double() for k in (1, 2)]
    with torch.no_grad():
        for sig in sigs:
            sig.w_map.add_(0.3 * torch.randn_like(sig.w_map))
    return sigs


class StandInTeacher:
    """Input-dependent per-sample features of each signalled layer's shape (what a trained teacher provides)."""

    def __init__(self, shape):
        gen = torch.Generator().manual_seed(1)
        self.pattern = torch.randn(shape, generator=gen, dtype=torch.float64)

    def __call__(self, x):
        scale = x.flatten(1).mean(1).view(-1, *([1] * self.pattern.dim()))
        return 3.0 * scale * self.pattern


F64 = torch.float64


def unit_of(kind, n_in=3, n=5):
    unit = HRU_TYPES[kind](n_in, n).double()
    if kind == "nonlinear":
        with torch.no_grad():
            unit.b.uniform_(-0.5, 0.5)  # so that the bias gradient is not trivially symmetric
    return unit


def central_difference(p, idx, fn, h=1e-6):
    """(fn(theta + h e_idx) - fn(theta - h e_idx)) / 2h for one entry of parameter ``p``, restored after."""
    with torch.no_grad():
        old = p[idx].item()
        p[idx] = old + h
        up = fn()
        p[idx] = old - h
        down = fn()
        p[idx] = old
    return (up - down) / (2 * h)


CONVERGED = dict(free_iterations=400, nudged_iterations=400)


def total_energy_at(net, x, y, beta, free_states, cost=None):
    """F(beta) = min_s E + beta C (eq. 20), by relaxation from the free state; per-sample values."""
    cost = cost or SquaredError()
    s = relax(net, free_states, 400, nudge=EPNudge(cost, y, beta)).states if beta else free_states
    return net.energy(s) + beta * cost(s[-1], y)


def formula_loss(sig, s, t):
    """L_Aug per sample from the paper's formulas (eqs. 7, 8, 13) with Hinton's tau^2, written independently of
    the library: tau^2 * CE(p, softmax(z / tau)), z the layer's (read-out or mapped) logits, p the target."""
    tau = sig.tau
    if isinstance(sig, LocalError):
        z = s.flatten(1) @ sig.readout.t()
        p = torch.softmax(t / tau, 1) if sig.soft_labels else t
    else:
        if isinstance(sig, WeightedKnowledgeDistillation):
            w = sig.w_map
            s = torch.einsum("oc,bchw->bohw", w, s) if s.dim() == 4 else s @ w.t()
        z, p = s.flatten(1), torch.softmax(t.flatten(1) / tau, 1)
    return -(tau**2) * (p * torch.log_softmax(z / tau, 1)).sum(1)


def small_pcn(seed=0):
    torch.manual_seed(seed)
    net = pc_vgg(1, 10, 8, [4, 6], hidden=[12], gains=0.8).double()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    return net, x, torch.randint(0, 10, (5,))


def regression_problem(sizes=(5,), hru="nonlinear", steps=60, batch=2, dt=0.1, integrator="leapfrog"):
    """A random HSSM with a squared-error loss on the readout at every step (per-step random targets)."""
    model = HamiltonianSSM(3, list(sizes), 4, hru=hru, dt=dt, integrator=integrator).double()
    return model, torch.randn(steps, batch, 3, dtype=F64), torch.randn(steps, batch, 4, dtype=F64)


def loglog_slope(betas, errors):
    return float(np.polyfit(np.log(betas), np.log(errors), 1)[0])


def iterations_to(net, x, schedule, tol):
    r = relax(net, net.init_state(x), 500, schedule=schedule, record=True)
    hits = [i for i, res in enumerate(r.trajectory.residual, start=1) if res < tol]
    assert hits, f"{schedule} never reached residual {tol}"
    return hits[0]


def free_loss(net, alg, x, y):
    return float(alg.cost(net.output(alg.free_phase(net, x).states), alg.targets(net, y)).detach().mean())


ALL = ["CL", "PEP", "NEP", "CEP", "PCpL", "NCpL", "CCpL", "REP", "RCpL", "TBP", "RBP", "BPTT"]


SIGNAL_TINY = [
    "model=vgg",
    "blocks=[[4],[8],[8]]",
    "hidden=[16]",
    "lrs=[0.05]",
    "gains=[1.0]",
    "free_iterations=10",
    "nudged_iterations=4",
    "epochs=2",
    "limit_train=128",
    "limit_test=64",
    "progress=false",
    "tensorboard=false",
    "teacher_epochs=1",
]


ROOT = Path(__file__).resolve().parents[1]


def sigterm_at(epoch, batch):
    """A Trainer callback that sends this process SIGTERM after ``batch`` of ``epoch`` (a stop mid-run)."""

    def callback(trainer, at_epoch, at_batch):
        if (at_epoch, at_batch) == (epoch, batch):
            os.kill(os.getpid(), signal.SIGTERM)

    return callback
