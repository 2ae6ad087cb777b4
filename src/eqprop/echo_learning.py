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
unit below. The derivation is in docs/rhel.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .algorithms import LearningAlgorithm, StepResult, register_algorithm, write_grads
from .hamiltonian import HamiltonianSSM, HamiltonianUnit, Step, leapfrog_step
from .nudging import Cost, one_hot
from .relaxation import RelaxResult

__all__ = ["EchoResult", "echo", "rhel_gradients", "bptt_gradients", "sequence_loss", "loss_steps",
           "EchoLearning", "SequenceBPTT", "LOSS_AT"]

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


@torch.no_grad()
def echo(unit: HamiltonianUnit, phi_T: Tensor, pi_T: Tensor, inputs: Tensor, out_grads: Sequence[Tensor | None],
         dt: float, epsilon: float = 1e-3, relative: bool = True, step: Step = leapfrog_step,
         at: str = "half", want_input_grads: bool = True) -> EchoResult:
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
    params = [p for p in unit.parameters()]
    grads = [torch.zeros_like(p) for p in params]
    input_grads = inputs.new_zeros(inputs.shape) if want_input_grads else None
    for k in reversed(range(steps)):
        g = out_grads[k]
        if g is not None:
            pi = pi - signed * torch.cat([g, g])
        u = torch.cat([inputs[k], inputs[k]])
        new_phi, new_pi, half = step(unit, phi, pi, u, dt)
        point = half if at == "half" else phi
        dtheta, du = unit.weighted_grads(point, u, weight, want_input_grads)
        for acc, d in zip(grads, dtheta):
            if d is not None:
                acc += d
        if input_grads is not None:
            input_grads[k] = du[:batch] + du[batch:]
        phi, pi = new_phi, new_pi
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


def _pull_back(model: HamiltonianSSM, i: int, positions: Tensor, input_grads: Tensor,
               found: dict[int, Tensor]) -> list[Tensor]:
    """dL/dphi^i_{k+1} = (d u^{i+1}_k / d phi^i_{k+1})^T dL/du^{i+1}_k step by step (no (T, B, n) autograd graph);
    accumulates the feedforward map's parameter gradients into ``found``."""
    params = list(model.ff[i].parameters())
    acc = [torch.zeros_like(p) for p in params]
    out = torch.empty_like(positions)
    for k in range(positions.shape[0]):
        with torch.enable_grad():
            p = positions[k].detach().requires_grad_(True)
            gp, *gf = torch.autograd.grad(model.feedforward(i, p), [p] + params, grad_outputs=input_grads[k])
        out[k] = gp
        for a, g in zip(acc, gf):
            a += g
    found.update({id(param): g for param, g in zip(params, acc)})
    return list(out.unbind(0))


def rhel_gradients(model: HamiltonianSSM, x: Tensor, y: Tensor, cost: Cost, loss_at: str = "last",
                   epsilon: float = 1e-3, relative: bool = True, at: str = "half") -> tuple[list[Tensor], Tensor, Tensor]:
    """dL/dtheta of the batch-mean sequence loss by RHEL; returns (grads in model.parameters() order, last
    readout (B, C), per-sample loss (B,)). Only the forward pass and the echoes run; nothing is backpropagated
    through time (dV/dtheta is in closed form for the built-in units, autograd within one step otherwise;
    the feedforward maps and the readout use autograd)."""
    seq = model.as_sequence(x)
    steps, batch = seq.shape[:2]
    ks = set(loss_steps(steps, loss_at))
    w = 1.0 / (len(ks) * batch)
    found: dict[int, Tensor] = {}
    inputs, finals, lower_positions = [seq], [], []
    out_grads: list[Tensor | None] = [None] * steps
    loss = seq.new_zeros(batch)
    last = seq.new_zeros(batch, model.num_classes)
    top = len(model.units) - 1
    readout_params = list(model.readout.parameters())
    with torch.no_grad():
        for i, unit in enumerate(model.units):
            phi, pi = unit.init_state(batch, seq)
            positions = []
            for k, u in enumerate(inputs[i]):
                phi, pi, _ = model.step_fn(unit, phi, pi, u, model.dt)
                if i < top:
                    positions.append(phi)
                elif k in ks:
                    with torch.enable_grad():
                        p = phi.detach().requires_grad_(True)
                        o = model.readout(p)
                        lk = cost(o, _target(y, k))
                        gp, *gr = torch.autograd.grad(lk.sum() * w, [p] + readout_params)
                    out_grads[k] = gp
                    for param, g in zip(readout_params, gr):
                        found[id(param)] = found.get(id(param), 0) + g
                    loss += lk.detach() / len(ks)
                    last = o.detach()
            finals.append((phi, pi))
            if i < top:
                lower_positions.append(torch.stack(positions))
                inputs.append(model.feedforward(i, lower_positions[-1]))
    input_grads: Tensor | None = None  # dL/du of the unit echoed last
    for i in range(top, -1, -1):
        if i < top:  # pull dL/du^{i+1} back through the feedforward map: the nudge of unit i (Theorem 3.3)
            assert input_grads is not None
            out_grads = _pull_back(model, i, lower_positions.pop(), input_grads, found)
            inputs.pop()  # the inputs of unit i+1 are no longer needed
        unit = model.units[i]
        res = echo(unit, *finals[i], inputs[i], out_grads, model.dt, epsilon, relative, model.step_fn, at,
                   want_input_grads=i > 0)
        found.update({id(param): g for param, g in zip(unit.parameters(), res.param_grads)})
        input_grads = res.input_grads
    return _param_order(model, found), last, loss


def bptt_gradients(model: HamiltonianSSM, x: Tensor, y: Tensor, cost: Cost,
                   loss_at: str = "last") -> tuple[list[Tensor], Tensor, Tensor]:
    """The reference: autograd through the whole unrolled forward pass (same return values as RHEL)."""
    params = list(model.parameters())
    with torch.enable_grad():
        readouts = model(x)
        loss = sequence_loss(readouts, y, cost, loss_at)
        grads = torch.autograd.grad(loss.mean(), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)], readouts[-1].detach(), loss.detach()


# ---- the algorithms the Trainer runs (model=hssm) ---------------------------------------------------------
class _SequenceAlgorithm(LearningAlgorithm):
    """Adapts a sequence-gradient function to the Trainer: the "free phase" is the forward pass."""

    def __init__(self, *, epsilon: float = 1e-2, loss_at: str = "last", cost: str | Cost = "cross_entropy",
                 **_ignored) -> None:
        super().__init__(cost=cost)
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
        return RelaxResult([readouts[-1]], readouts.shape[0], None)

    def compute(self, network: HamiltonianSSM, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        raise NotImplementedError

    def step(self, network, x, labels):
        self._check(network)
        y = self.targets(network, labels).to(x.dtype)
        grads, out, loss = self.compute(network, x, y)
        write_grads(network, grads)
        steps = network.as_sequence(x).shape[0]
        return StepResult(loss, out.float(), RelaxResult([out], steps, None), grads)

    def __repr__(self) -> str:
        return f"{self.name}(epsilon={self.epsilon}, loss_at={self.loss_at}, cost={self.cost.name})"


class EchoLearning(_SequenceAlgorithm):
    """RHEL: forward pass, then two echo passes per unit (top unit first), nudged by +-epsilon."""

    name = "RHEL"

    def compute(self, network, x, y):
        return rhel_gradients(network, x, y, self.cost, self.loss_at, self.epsilon)


class SequenceBPTT(_SequenceAlgorithm):
    """Backprop through time through the same Hamiltonian SSM: the reference RHEL is compared against."""

    name = "HSSM-BPTT"

    def compute(self, network, x, y):
        return bptt_gradients(network, x, y, self.cost, self.loss_at)


register_algorithm("RHEL", EchoLearning, models=("hssm",))
register_algorithm("HSSM-BPTT", SequenceBPTT, models=("hssm",))
