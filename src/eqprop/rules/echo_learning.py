"""Recurrent Hamiltonian Echo Learning (RHEL): gradients of a sequence loss from forward-only echo passes.

After the forward pass Phi_0 -> Phi_T of an HRU, the momenta are flipped and the same leapfrog map runs on
the reversed inputs (the echo), twice and batched: nudged by +eps and by -eps. When the echo reaches the state
of step k it is nudged by -/+eps times the incoming loss gradient dL/dphi_k, added to the momentum (for a loss
on phi). Because the leapfrog map is symplectic and reversible, the echo carries the BPTT adjoint to first
order in eps, and the contrast of the two echoes gives, with O(eps^2) error,

    dL/dtheta = dt/(2 eps) sum_k [ dV/dtheta(phi^e_{k+1/2}(+eps), u_k) - dV/dtheta(phi^e_{k+1/2}(-eps), u_k) ]
    dL/du_k   = dt/(2 eps)       [ dV/du(phi^e_{k+1/2}(+eps), u_k)     - dV/du(phi^e_{k+1/2}(-eps), u_k) ]
    dL/dphi_0 = -(pi^e_T(+eps) - pi^e_T(-eps)) / (2 eps),   dL/dpi_0 = -(phi^e_T(+eps) - phi^e_T(-eps)) / (2 eps)

where phi^e_{k+1/2} is the echo's half-step position, the point where the forward step evaluated the force
(the parameter update is minus the first line). Stacks (Theorem 3.3 of Pourcel & Ernoult): the top unit is
echoed first; its input gradients dL/du are pulled back through the feedforward map by autograd and nudge the
unit below, either one step at a time with all units echoing together (lock step, memory flat in T) or one
whole sequence after another. The derivation is in docs/rhel.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..core.nudging import Cost, one_hot
from ..core.relaxation import RelaxResult
from ..models.hamiltonian import HamiltonianSSM, HamiltonianUnit, Step, leapfrog_step
from ..settings import Section, check_choice, register_section, setting
from .base import LearningAlgorithm, StepResult, register_algorithm, write_grads

__all__ = [
    "EchoResult",
    "echo",
    "rhel_gradients",
    "STACK_ECHOES",
    "bptt_gradients",
    "sequence_loss",
    "loss_steps",
    "EchoLearning",
    "SequenceBPTT",
    "LOSS_AT",
]

LOSS_AT = ("last", "every")


@dataclass
class EchoResult:
    """What the two echo passes of one HRU estimate."""

    param_grads: list[Tensor]  # dL/dtheta, in unit.parameters() order
    input_grads: Tensor | None  # dL/du_k, shape (T, B, input_size); None when not asked for
    initial_grads: tuple[Tensor, Tensor]  # (dL/dphi_0, dL/dpi_0)
    epsilon: Tensor  # the per-sample nudging strength actually used, shape (B,)


def _nudge_scale(out_grads: Sequence[Tensor | None], batch: int, like: Tensor) -> Tensor:
    """Per-sample max |dL/dphi_k| over all steps (1 where a sample receives no gradient)."""
    scale = like.new_zeros(batch)
    for g in out_grads:
        if g is not None:
            scale = torch.maximum(scale, g.detach().abs().flatten(1).amax(1))
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _echo_step(
    unit: HamiltonianUnit,
    phi: Tensor,
    pi: Tensor,
    g: Tensor | None,
    u: Tensor,
    signed: Tensor,
    weight: Tensor,
    dt: float,
    step: Step,
    at: str,
    grads: list[Tensor],
    want_input_grads: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One reversed step of both echoes (batched +eps | -eps): nudge the momentum by -/+eps g (g = dL/dphi of
    the state reached, or None), leapfrog on input u, add the weighted dV/dtheta to ``grads``; returns the new
    (phi, pi) and the step's input-gradient estimate dL/du (B, d) or None."""
    if g is not None:
        pi = pi - signed * torch.cat([g, g])
    u2 = torch.cat([u, u])
    new_phi, new_pi, half = step(unit, phi, pi, u2, dt)
    dtheta, du = unit.weighted_grads(half if at == "half" else phi, u2, weight, want_input_grads)
    for acc, d in zip(grads, dtheta):
        if d is not None:
            acc += d
    return new_phi, new_pi, (du[: len(u)] + du[len(u) :]) if du is not None else None


@torch.no_grad()
def echo(
    unit: HamiltonianUnit,
    phi_T: Tensor,
    pi_T: Tensor,
    inputs: Tensor,
    out_grads: Sequence[Tensor | None],
    dt: float,
    epsilon: float = 1e-3,
    relative: bool = True,
    step: Step = leapfrog_step,
    at: str = "half",
    want_input_grads: bool = True,
) -> EchoResult:
    """RHEL for one HRU: two echo passes (+eps, -eps, batched) from the flipped final state (T, B given by inputs).

    ``out_grads[k]`` is dL/dphi_{k+1}, the gradient of the loss with respect to the position after step k
    (None where the loss does not look). With ``relative`` the nudge of each sample is ``epsilon`` divided by
    that sample's largest |dL/dphi| (so ``epsilon`` is the largest state perturbation, whatever the loss scale);
    otherwise the nudge is ``epsilon`` times the gradient. ``at='full'`` evaluates dV/dtheta at the full-step
    echo state instead of the half step: a biased estimate, kept as a negative control. Memory does not grow
    with T beyond ``inputs`` and, if ``want_input_grads``, the (T, B, d) input gradients returned.
    """
    if at not in ("half", "full"):
        raise ValueError(f"at must be 'half' or 'full', got {at!r}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    steps, batch = inputs.shape[0], inputs.shape[1]
    if len(out_grads) != steps:
        raise ValueError(f"expected one loss gradient (or None) per step: {steps}, got {len(out_grads)}")
    eps = (epsilon / _nudge_scale(out_grads, batch, phi_T)) if relative else phi_T.new_full((batch,), epsilon)
    signed = torch.cat([eps, -eps]).unsqueeze(1)  # (2B, 1): the +eps echo, then the -eps echo
    weight = dt / (2.0 * torch.cat([eps, -eps]))  # contrast weights of dV/dtheta per echo sample
    phi, pi = torch.cat([phi_T, phi_T]), -torch.cat([pi_T, pi_T])
    grads = [torch.zeros_like(p) for p in unit.parameters()]
    input_grads = inputs.new_zeros(inputs.shape) if want_input_grads else None
    for k in reversed(range(steps)):
        phi, pi, du = _echo_step(
            unit, phi, pi, out_grads[k], inputs[k], signed, weight, dt, step, at, grads, want_input_grads
        )
        if input_grads is not None and du is not None:
            input_grads[k] = du
    two_eps = 2.0 * eps.unsqueeze(1)
    initial = (-(pi[:batch] - pi[batch:]) / two_eps, -(phi[:batch] - phi[batch:]) / two_eps)
    return EchoResult(grads, input_grads, initial, eps)


def loss_steps(steps: int, loss_at: str) -> list[int]:
    """The steps k whose readout o_k enters the loss: the last one, or every one."""
    if loss_at not in LOSS_AT:
        raise ValueError(f"loss_at must be one of {list(LOSS_AT)}, got {loss_at!r}")
    return [steps - 1] if loss_at == "last" else list(range(steps))


def _target(y: Tensor, k: int) -> Tensor:
    return y[k] if y.dim() == 3 else y  # per-step targets (T, B, C) or one target per sequence (B, C)


def sequence_loss(readouts: Tensor, y: Tensor, cost: Cost, loss_at: str = "last") -> Tensor:
    """Per-sample loss: C(o_T, y) (``last``) or the mean over steps of C(o_k, y_k) (``every``)."""
    ks = loss_steps(readouts.shape[0], loss_at)
    return sum(cost(readouts[k], _target(y, k)) for k in ks) / len(ks)  # type: ignore[return-value]


def _param_order(model: torch.nn.Module, found: dict[int, Tensor]) -> list[Tensor]:
    return [found.get(id(p), torch.zeros_like(p)) for p in model.parameters()]


def _pull_back(
    model: HamiltonianSSM, i: int, positions: Tensor, input_grads: Tensor, found: dict[int, Tensor]
) -> list[Tensor | None]:
    """dL/dphi^i_{k+1} = (d u^{i+1}_k / d phi^i_{k+1})^T dL/du^{i+1}_k step by step (no (T, B, n) autograd graph);
    accumulates the feedforward map's parameter gradients into ``found``."""
    params = list(model.ff[i].parameters())
    acc = [torch.zeros_like(p) for p in params]
    out = torch.empty_like(positions)
    for k in range(positions.shape[0]):
        with torch.enable_grad():
            p = positions[k].detach().requires_grad_(True)
            gp, *gf = torch.autograd.grad(model.feedforward(i, p), [p, *params], grad_outputs=input_grads[k])
        out[k] = gp
        for a, g in zip(acc, gf):
            a += g
    found.update({id(param): g for param, g in zip(params, acc)})
    return list(out.unbind(0))


STACK_ECHOES = ("lockstep", "sequential")


def _check_stack(stack: str) -> None:
    if stack not in STACK_ECHOES:
        raise ValueError(f"unknown stack echo {stack!r}; valid ones are {list(STACK_ECHOES)}")


def _readout_nudge(
    model: HamiltonianSSM, phi: Tensor, y: Tensor, k: int, cost: Cost, w: float, found: dict[int, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """dL/dphi_{k+1} of the top unit from the readout's loss at step k (weight w), adding the readout's
    parameter gradients to ``found``; returns (dL/dphi, per-sample loss, readout)."""
    params = list(model.readout.parameters())
    with torch.enable_grad():
        p = phi.detach().requires_grad_(True)
        o = model.readout(p)
        lk = cost(o, _target(y, k))
        gp, *gr = torch.autograd.grad(lk.sum() * w, [p, *params])
    for param, g in zip(params, gr):
        found[id(param)] = found.get(id(param), 0) + g
    return gp, lk.detach(), o.detach()


def rhel_gradients(
    model: HamiltonianSSM,
    x: Tensor,
    y: Tensor,
    cost: Cost,
    loss_at: str = "last",
    epsilon: float = 1e-3,
    relative: bool = True,
    at: str = "half",
    stack: str = "lockstep",
) -> tuple[list[Tensor], Tensor, Tensor]:
    """dL/dtheta of the batch-mean sequence loss by RHEL; returns (grads in model.parameters() order, last
    readout (B, C), per-sample loss (B,)). Only the forward pass and the echoes run; nothing is backpropagated
    through time (dV/dtheta is in closed form for the built-in units, autograd within one step otherwise;
    the feedforward maps and the readout use autograd).

    For stacks, ``stack="lockstep"`` echoes all units together, one reversed step at a time, top unit first
    within the step; memory does not grow with T. ``"sequential"`` echoes the top unit over the whole sequence,
    then the unit below, and so on; it stores the sequences passed between units, (T, B, n) each."""
    _check_stack(stack)
    seq = model.as_sequence(x)
    ks = set(loss_steps(seq.shape[0], loss_at))
    run = _lockstep if stack == "lockstep" else _sequential
    return run(model, seq, y, cost, ks, epsilon, relative, at)


def _sequential(
    model: HamiltonianSSM, seq: Tensor, y: Tensor, cost: Cost, ks: set[int], epsilon: float, relative: bool, at: str
) -> tuple[list[Tensor], Tensor, Tensor]:
    steps, batch = seq.shape[:2]
    w = 1.0 / (len(ks) * batch)
    found: dict[int, Tensor] = {}
    out_grads: list[Tensor | None] = [None] * steps
    loss = seq.new_zeros(batch)
    last = seq.new_zeros(batch, model.num_classes)
    top = len(model.units) - 1
    positions: list[list[Tensor]] = [[] for _ in range(top)]
    with torch.no_grad():
        for k, states in model.trajectory(seq):
            for i in range(top):
                positions[i].append(states[i][0])
            if k in ks:
                out_grads[k], lk, last = _readout_nudge(model, states[top][0], y, k, cost, w, found)
                loss += lk / len(ks)
        finals = list(states)
        lower_positions = [torch.stack(p) for p in positions]  # stored per unit: the sequential echo needs them
        inputs = [seq] + [model.feedforward(i, p) for i, p in enumerate(lower_positions)]
    input_grads: Tensor | None = None  # dL/du of the unit echoed last
    for i in range(top, -1, -1):
        if i < top:  # pull dL/du^{i+1} back through the feedforward map: the nudge of unit i (Theorem 3.3)
            assert input_grads is not None
            out_grads = _pull_back(model, i, lower_positions.pop(), input_grads, found)
            inputs.pop()  # the inputs of unit i+1 are no longer needed
        unit = model.units[i]
        res = echo(
            unit,
            *finals[i],
            inputs[i],
            out_grads,
            model.dt,
            epsilon,
            relative,
            model.step_fn,
            at,
            want_input_grads=i > 0,
        )
        found.update({id(param): g for param, g in zip(unit.parameters(), res.param_grads)})
        input_grads = res.input_grads
    return _param_order(model, found), last, loss


@torch.no_grad()
def _lockstep(
    model: HamiltonianSSM, seq: Tensor, y: Tensor, cost: Cost, ks: set[int], epsilon: float, relative: bool, at: str
) -> tuple[list[Tensor], Tensor, Tensor]:
    """All units echo together. At reversed step k the positions phi^i_{k+1} of the lower units, which the
    feedforward maps read, are the mean of their +eps and -eps echoes (equal to the forward pass up to
    O(eps^2)); the top unit steps first and its dL/du, pulled back through the map, nudges the unit below in
    the same step. Every unit uses the nudging strength set by the readout's gradients."""
    steps, batch = seq.shape[:2]
    w = 1.0 / (len(ks) * batch)
    units, top, dt, step = model.units, len(model.units) - 1, model.dt, model.step_fn
    found: dict[int, Tensor] = {}
    out_grads: list[Tensor | None] = [None] * steps
    loss = seq.new_zeros(batch)
    last = seq.new_zeros(batch, model.num_classes)
    for k, states in model.trajectory(seq):  # the forward pass; only the current states are kept
        if k in ks:
            out_grads[k], lk, last = _readout_nudge(model, states[top][0], y, k, cost, w, found)
            loss += lk / len(ks)
    eps = (epsilon / _nudge_scale(out_grads, batch, seq)) if relative else seq.new_full((batch,), epsilon)
    signed = torch.cat([eps, -eps]).unsqueeze(1)
    weight = dt / (2.0 * torch.cat([eps, -eps]))
    echoes = [(torch.cat([phi, phi]), -torch.cat([pi, pi])) for phi, pi in states]
    unit_grads = [[torch.zeros_like(p) for p in unit.parameters()] for unit in units]
    ff_params = [list(ff.parameters()) for ff in model.ff]
    ff_grads = [[torch.zeros_like(p) for p in params] for params in ff_params]
    for k in reversed(range(steps)):
        inputs, maps = [seq[k]], []
        with torch.enable_grad():  # u^{i+1}_k = ff_i(phi^i_{k+1}), kept as a graph for the pull-back below
            for i in range(top):
                p = (0.5 * (echoes[i][0][:batch] + echoes[i][0][batch:])).requires_grad_(True)
                maps.append((p, model.feedforward(i, p)))
                inputs.append(maps[-1][1].detach())
        g = out_grads[k]
        for i in range(top, -1, -1):
            phi, pi, du = _echo_step(
                units[i], *echoes[i], g, inputs[i], signed, weight, dt, step, at, unit_grads[i], want_input_grads=i > 0
            )
            echoes[i] = (phi, pi)
            if i > 0:  # dL/dphi^{i-1}_{k+1} = J^T dL/du^i_k: the nudge of the unit below (Theorem 3.3)
                p, out = maps[i - 1]
                g, *gf = torch.autograd.grad(out, [p] + ff_params[i - 1], grad_outputs=du)
                for acc, d in zip(ff_grads[i - 1], gf):
                    acc += d
    for params, grads in zip([list(u.parameters()) for u in units] + ff_params, unit_grads + ff_grads):
        found.update({id(param): g for param, g in zip(params, grads)})
    return _param_order(model, found), last, loss


def bptt_gradients(
    model: HamiltonianSSM, x: Tensor, y: Tensor, cost: Cost, loss_at: str = "last"
) -> tuple[list[Tensor], Tensor, Tensor]:
    """The reference: autograd through the whole unrolled forward pass (same return values as RHEL)."""
    params = list(model.parameters())
    with torch.enable_grad():
        readouts = model(x)
        loss = sequence_loss(readouts, y, cost, loss_at)
        grads = torch.autograd.grad(loss.mean(), params, allow_unused=True)
    return (
        [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)],
        readouts[-1].detach(),
        loss.detach(),
    )


# ---- the algorithms the Trainer runs (model=hssm) ---------------------------------------------------------
class _SequenceAlgorithm(LearningAlgorithm):
    """Adapts a sequence-gradient function to the Trainer: the "free phase" is the forward pass."""

    def __init__(self, *, epsilon: float = 1e-2, loss_at: str = "last", cost: str | Cost = "cross_entropy") -> None:
        super().__init__(cost)
        loss_steps(1, loss_at)  # validates loss_at
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.epsilon, self.loss_at = float(epsilon), loss_at

    def _check(self, network) -> None:
        if not isinstance(network, HamiltonianSSM):
            raise TypeError(f"{self.name} trains Hamiltonian SSMs (model=hssm), got {type(network).__name__}")

    def targets(self, network: HamiltonianSSM, labels: Tensor) -> Tensor:
        return one_hot(labels, network.num_classes).to(labels.device)

    def free_phase(self, network: HamiltonianSSM, x: Tensor) -> RelaxResult:
        """The forward pass; the state is the last readout (what the sequence is classified by)."""
        self._check(network)
        with torch.no_grad():
            readouts = network(x)
        return RelaxResult([readouts[-1]], 0)  # no relaxation: the output is read after the sequence

    def compute(self, network: HamiltonianSSM, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        raise NotImplementedError

    def step(self, network, x, labels, accumulate=False):
        self._check(network)
        y = self.targets(network, labels).to(x.dtype)
        grads, out, loss = self.compute(network, x, y)
        write_grads(network, grads, accumulate)
        return StepResult(loss, out.float(), RelaxResult([out], 0), grads)

    def __repr__(self) -> str:
        return f"{self.name}(epsilon={self.epsilon}, loss_at={self.loss_at}, cost={self.cost.name})"


class EchoLearning(_SequenceAlgorithm):
    """RHEL: forward pass, then two echo passes nudged by +-epsilon (``stack``: how a stack's units echo)."""

    name = "RHEL"

    def __init__(self, *, stack: str = "lockstep", **kwargs) -> None:
        super().__init__(**kwargs)
        _check_stack(stack)
        self.stack = stack

    def compute(self, network, x, y):
        return rhel_gradients(network, x, y, self.cost, self.loss_at, self.epsilon, stack=self.stack)


class SequenceBPTT(_SequenceAlgorithm):
    """Backprop through time through the same Hamiltonian SSM: the reference RHEL is compared against."""

    name = "HSSM-BPTT"

    def compute(self, network, x, y):
        return bptt_gradients(network, x, y, self.cost, self.loss_at)


@dataclass
class EchoSection(Section):
    """The ``echo`` section: RHEL's echo nudging, where the loss reads the sequence, and how stacks echo."""

    name: ClassVar[str] = "echo"
    moved_from: ClassVar[tuple[str, ...]] = ("rule",)
    options: ClassVar[dict[str, str]] = {"epsilon": "epsilon", "loss_at": "loss_at", "echo_stack": "stack"}
    epsilon: float = setting(0.01, "RHEL: echo nudging strength, relative to the largest incoming loss gradient")
    loss_at: str = setting("last", "hssm: the loss reads the last step's readout, or the mean over every step")
    echo_stack: str = setting("lockstep", "RHEL on stacks: all units echo together, or one after another")

    def validate(self) -> None:
        self.positive("epsilon")
        self.loss_at = check_choice("loss_at", self.loss_at, list(LOSS_AT))
        self.echo_stack = check_choice("echo_stack", self.echo_stack, list(STACK_ECHOES))


register_section(EchoSection, "algorithm=RHEL and HSSM-BPTT")


register_algorithm("RHEL", EchoLearning, families=("hssm",), options=("cost", "epsilon", "loss_at", "stack"))
register_algorithm("HSSM-BPTT", SequenceBPTT, families=("hssm",), options=("cost", "epsilon", "loss_at"))
