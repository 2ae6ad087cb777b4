"""Relaxation: energy minimisation by the fixed-point dynamics s_k <- sigma_k(dPhi/ds_k + forces).

Why this update: E = 1/2 ||s||^2 - Phi (eq. 96) gives dE/ds = s - dPhi/ds, so a critical point satisfies
s = dPhi/ds. Restricted to one layer s_k (no pooling between s_k and its neighbours), E is a separable
quadratic with identity curvature, so sigma_k(dPhi/ds_k) -- the projection of the unconstrained minimiser
onto the state space (the box [0, 1] for the hard sigmoid) -- is the exact minimiser of E over s_k with
the other layers fixed. With max-pooling, Phi is piecewise bilinear and the same update is used (eq. 99).

Schedules (appendix C):
- ``synchronous``: every free layer is updated from the previous iterate (eq. 99);
- ``asynchronous``: even layers first, then odd layers using the fresh even layers (eqs. 100-101).
  ``first="even"`` is the paper's order and the default; ``first="odd"`` reverses it. Both orders have the
  same fixed points but differ after a few iterations.

Engines: ``"messages"`` (default) uses the interactions' explicit messages and computes each interaction's
convolution once per (half-)iteration, reusing its pooling indices for the transposed message;
``"autograd"`` recomputes dPhi/ds by autograd every half-iteration and is the reference used in tests.

Deviation mode (``deviation=True``, for nudged phases): states are kept in the parameters' precision and
written s = s0 + d around the phase's initial (free) state s0. Each message P(A s) is computed as
P(A s0 + A d), with A s0 and the transposed messages at s0 computed once per phase in full precision and only
A d (and A^T of the change of the unpooled message) computed per iteration in ``dtype``. A 16-bit convolution
then keeps the deviation's own relative precision, so the small difference between two nudged states that the
C-EP contrast divides by 2 beta survives, at the cost of 16-bit convolutions.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .kernels import compiled, sum_messages
from .network import EnergyNetwork, State
from .nudging import Nudge

__all__ = ["relax", "relax_graphed", "RelaxResult", "Trajectory", "SCHEDULES", "ENGINES", "layer_groups"]

SCHEDULES = ("asynchronous", "synchronous")
ENGINES = ("messages", "autograd")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


@dataclass
class Trajectory:
    """Per-iteration diagnostics (batch means): energy (E + nudging term) and fixed-point residual."""

    energy: list[float] = field(default_factory=list)
    residual: list[float] = field(default_factory=list)
    change: list[float] = field(default_factory=list)


@dataclass
class RelaxResult:
    """Relaxed states, the number of iterations actually run and, if recorded, the trajectory."""

    states: State
    iterations: int
    trajectory: Trajectory | None = None


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; valid dtypes are {sorted(DTYPES)}") from None


def layer_groups(network: EnergyNetwork, schedule: str, first: str = "even",
                 clamp_output: bool = False) -> list[list[int]]:
    """Groups of layers updated together: one group (synchronous) or even/odd groups (asynchronous)."""
    free = [k for k in range(1, network.num_layers) if not (clamp_output and k == network.output_index)]
    if schedule == "synchronous":
        return [free]
    if schedule != "asynchronous":
        raise ValueError(f"unknown schedule {schedule!r}; valid schedules are {list(SCHEDULES)}")
    if first not in ("even", "odd"):
        raise ValueError(f"first must be 'even' or 'odd', got {first!r}")
    even = [k for k in free if k % 2 == 0]
    odd = [k for k in free if k % 2 == 1]
    return [g for g in ((even, odd) if first == "even" else (odd, even)) if g]


def _diagnostics(network: EnergyNetwork, states: State, nudge: Nudge | None) -> tuple[float, float]:
    with torch.no_grad():
        dtype = next(network.parameters()).dtype
        s32 = [s.to(dtype) for s in states]
        e = network.energy(s32)
        if nudge is not None:
            e = e + nudge.extra_energy(s32[-1]) + nudge.hidden_energy(s32)
        msgs = network.messages(s32)
        sq = 0.0
        for k in range(1, network.num_layers):
            if k == network.output_index and nudge is not None:
                target = nudge.output_update(msgs[k], s32[k], network.layers[k].sigma)
            elif nudge is not None and k in nudge.hidden_layers:
                target = network.layers[k].sigma.project(msgs[k] - nudge.layer_force(k, s32[k]))
            else:
                target = network.layers[k].sigma.project(msgs[k])
            sq = sq + (s32[k] - target).flatten(1).pow(2).sum(1)
        return float(e.mean()), float(torch.as_tensor(sq).sqrt().mean())


def relax(network: EnergyNetwork, states: State, iterations: int, *, nudge: Nudge | None = None,
          schedule: str = "asynchronous", first: str = "even", tol: float | None = None,
          dtype: torch.dtype | str | None = None, record: bool = False, engine: str = "messages",
          channels_last: bool = False, deviation: bool = False) -> RelaxResult:
    """Run up to ``iterations`` fixed-point iterations from ``states`` (not modified in place).

    ``tol`` stops early once the largest absolute change of any state unit in an iteration is below it;
    ``channels_last`` stores image-shaped states and conv weights channels-last (faster cuDNN on GPUs);
    ``dtype`` runs the relaxation in that precision (states and casts of the weights; None: the parameters'
    dtype) while parameters stay as they are; ``deviation`` keeps states in the parameters' precision and runs
    only the convolutions of the deviation from the initial states in ``dtype`` (module docstring); ``record``
    fills a :class:`Trajectory`. Autograd tracks the iterations if grad is enabled (used by truncated backprop and
    BPTT). A network switched to fused kernels (:func:`~eqprop.kernels.set_fused_kernels`) uses them on CUDA
    when grad is disabled.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; valid engines are {list(ENGINES)}")
    dtype = resolve_dtype(dtype)
    pdtype = next(network.parameters()).dtype
    if engine == "autograd" and dtype is not None and dtype != pdtype:
        raise ValueError("the autograd reference engine runs in the parameters' dtype; use engine='messages' "
                         f"for dtype={dtype}")
    if deviation and engine != "messages":
        raise ValueError("deviation mode needs engine='messages' (it splits the explicit messages)")
    state_dtype = pdtype if deviation or dtype is None else dtype
    states = [s if state_dtype is None else s.to(state_dtype) for s in states]
    if channels_last:
        states = [s.contiguous(memory_format=torch.channels_last) if s.dim() == 4 else s for s in states]
    clamp = nudge is not None and nudge.clamps_output
    out = network.output_index
    if clamp:
        states[out] = nudge.output_update(None, states[out], network.layers[out].sigma)  # type: ignore[arg-type]
    groups = layer_groups(network, schedule, first, clamp)
    free = [k for g in groups for k in g]
    traj = Trajectory() if record else None

    inters = network.interactions
    params = _relaxation_params(network, None if deviation else dtype, channels_last)
    fwd: dict[str, Tensor] = {}
    ctx: dict[str, Any] = {}
    if deviation:
        base = _DeviationBase(network, states, params, dtype, channels_last)

    def refresh(name: str) -> None:
        inter = inters[name]
        if deviation:
            fwd[name], ctx[name] = base.forward(name, states)
            return
        pre = None if inter.pre is None else states[inter.pre]
        fwd[name], ctx[name] = inter(pre, params[name])

    refresh_after = [[n for k in g for n in network.out_of[k]] for g in groups]
    if engine == "messages":
        for name in inters:
            refresh(name)

    fused = (engine == "messages" and getattr(network, "fused_kernels", False) and states[-1].is_cuda
             and not torch.is_grad_enabled())

    def update(k: int, grads: list[Tensor] | None) -> Tensor:
        sigma = network.layers[k].sigma
        if grads is not None:
            m = grads[k - 1]
        else:
            terms = [fwd[n] for n in network.into[k]]
            for n in network.out_of[k]:
                if deviation:
                    terms.append(base.backward(n, states, ctx[n]))
                else:
                    terms.append(inters[n].backward(states[inters[n].post], ctx[n], params[n]))
            if fused and (nudge is None or (k != out and k not in nudge.hidden_layers)):
                return compiled("update", sigma)(*terms).expand_as(states[k])  # one kernel (kernels.py)
            m = sum_messages(terms).expand_as(states[k])
        if nudge is not None:
            if k == out:
                return nudge.output_update(m, states[k], sigma)
            if k in nudge.hidden_layers:  # an intermediate learning signal: sigma(dPhi/ds - d(beta L)/ds)
                return sigma.project(m - nudge.layer_force(k, states[k]))
        return sigma.project(m)

    used = 0
    for _ in range(iterations):
        before = [states[k] for k in free] if (tol is not None or record) else None
        for g, group in enumerate(groups):
            grads = network.grad_phi(states, create_graph=torch.is_grad_enabled()) if engine == "autograd" else None
            new = {k: update(k, grads) for k in group}
            for k, v in new.items():
                states[k] = v
            if engine == "messages":
                for name in refresh_after[g]:
                    refresh(name)
        used += 1
        change = None
        if before is not None:
            with torch.no_grad():
                change = max(float((states[k] - b).abs().max()) for k, b in zip(free, before)) if free else 0.0
        if traj is not None:
            e, r = _diagnostics(network, states, nudge)
            traj.energy.append(e)
            traj.residual.append(r)
            traj.change.append(change if change is not None else float("nan"))
        if tol is not None and change is not None and change < tol:
            break
    return RelaxResult(states, used, traj)


def _relaxation_params(network: EnergyNetwork, dtype: torch.dtype | None, channels_last: bool) -> dict:
    """Each interaction's parameters cast to ``dtype`` (None: as they are), 4-d ones channels-last if asked."""
    params = {name: inter.relaxation_params(dtype) for name, inter in network.interactions.items()}
    if channels_last:
        params = {name: tuple(p.contiguous(memory_format=torch.channels_last) if p.dim() == 4 else p for p in ps)
                  for name, ps in params.items()}
    return params


class _DeviationBase:
    """The full-precision messages at the initial states s0 and the low-precision messages of d = s - s0."""

    def __init__(self, network: EnergyNetwork, states: State, params: dict, dtype: torch.dtype | None,
                 channels_last: bool) -> None:
        self.inters, self.params, self.dtype = network.interactions, params, dtype
        self.low = params if dtype is None else _relaxation_params(network, dtype, channels_last)
        self.s0 = [s.clone() for s in states]
        self.z0: dict[str, Tensor] = {}  # A s0 (pre-pooling)
        self.u0: dict[str, Tensor] = {}  # P^T(post0) at the pooling of A s0
        self.b0: dict[str, Tensor] = {}  # A^T P^T(post0)
        for name, inter in self.inters.items():
            pre = None if inter.pre is None else self.s0[inter.pre]
            self.z0[name] = inter.linear(pre, params[name])
            if inter.pre is not None and inter.pre > 0:
                _, ctx0 = inter.pool(self.z0[name])
                self.u0[name] = inter.unpool(self.s0[inter.post], ctx0)
                self.b0[name] = inter.linear_t(self.u0[name], params[name])

    def _low(self, t: Tensor) -> Tensor:
        return t if self.dtype is None else t.to(self.dtype)

    def forward(self, name: str, states: State) -> tuple[Tensor, Any]:
        inter = self.inters[name]
        z = self.z0[name]
        if inter.pre is not None and inter.pre > 0:  # the input and biases never deviate
            d = self._low(states[inter.pre] - self.s0[inter.pre])
            z = z + inter.linear(d, self.low[name]).to(z.dtype)
        return inter.pool(z)

    def backward(self, name: str, states: State, ctx: Any) -> Tensor:
        inter = self.inters[name]
        du = self._low(inter.unpool(states[inter.post], ctx) - self.u0[name])
        return self.b0[name] + inter.linear_t(du, self.low[name]).to(self.b0[name].dtype)


_GRAPHS: "weakref.WeakKeyDictionary[EnergyNetwork, dict]" = weakref.WeakKeyDictionary()


def relax_graphed(network: EnergyNetwork, states: State, iterations: int, *, nudge: Nudge | None = None,
                  schedule: str = "asynchronous", first: str = "even", dtype: torch.dtype | str | None = None,
                  channels_last: bool = False, deviation: bool = False) -> RelaxResult:
    """:func:`relax` with a fixed iteration count, captured once per (shapes, settings) as a CUDA graph and
    replayed: removes the per-kernel launch overhead of the relaxation loop on GPUs.

    Parameters are read from their storage at each replay, so in-place optimiser updates are seen. No
    autograd, no early stopping and no trajectory in this mode.
    """
    if not states[0].is_cuda:
        raise ValueError("relax_graphed needs CUDA tensors; use relax() on the CPU")
    dtype = resolve_dtype(dtype)
    key = (tuple((tuple(s.shape), s.dtype) for s in states), iterations, schedule, first, dtype, channels_last,
           deviation, ("free",) if nudge is None else nudge.capture_key())
    cache = _GRAPHS.setdefault(network, {})
    kwargs = dict(schedule=schedule, first=first, dtype=dtype, channels_last=channels_last, deviation=deviation)
    with torch.no_grad():
        if key not in cache:
            static_in = [s.clone() for s in states]
            static_aux = None if nudge is None else nudge.tensor.clone()
            static_nudge = None if nudge is None else nudge.with_tensor(static_aux)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the capture (cuDNN autotuning, allocator)
                relax(network, static_in, iterations, nudge=static_nudge, **kwargs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = relax(network, static_in, iterations, nudge=static_nudge, **kwargs).states
            cache[key] = (graph, static_in, static_aux, static_out)
        graph, static_in, static_aux, static_out = cache[key]
        for dst, src in zip(static_in, states):
            dst.copy_(src)
        if nudge is not None:
            static_aux.copy_(nudge.tensor)
        graph.replay()
        return RelaxResult([s.clone() for s in static_out], iterations)
