"""Relaxation: energy minimisation by the fixed-point dynamics s_k <- sigma_k(dPhi/ds_k + forces).

Why this update: E = 1/2 ||s||^2 - Phi (eq. 96) gives dE/ds = s - dPhi/ds, so a critical point satisfies
s = dPhi/ds. Restricted to one layer s_k (no pooling between s_k and its neighbours), E is a separable
quadratic with identity curvature, so sigma_k(dPhi/ds_k) -- the projection of the unconstrained minimiser
onto the state space (the box [0, 1] for the hard sigmoid) -- is the exact minimiser of E over s_k with
the other layers fixed. With max-pooling, Phi is piecewise bilinear and the same update is used (eq. 99).

Schedules (appendix C; forward/backward from the resistive-network code):
- ``synchronous``: every free layer is updated from the previous iterate (eq. 99);
- ``forward`` / ``backward``: one layer at a time, from the first hidden layer to the output or back;
- ``asynchronous``: even layers first, then odd layers using the fresh even layers (eqs. 100-101).
  ``first="even"`` is the paper's order and the default; ``first="odd"`` reverses it (the order of the
  comparative study's public code). The two orders can settle in different fixed points.

Solvers (one signature, ``solver(network, states, iterations, nudge=None, record=False) -> RelaxResult``,
settings in a frozen :class:`SolverSettings`, looked up by name in :data:`SOLVERS`):
``"messages"`` (default) uses the interactions' explicit messages and computes each interaction's
convolution once per (half-)iteration, reusing its pooling indices for the transposed message;
``"autograd"`` recomputes dPhi/ds by autograd every half-iteration and is the reference used in tests;
``"deviation"`` is the messages solver in deviation mode (below); ``"graphed"`` replays a captured CUDA graph
of the messages solver. Register another with :func:`register_solver`; :func:`relax` is the functional form.

Deviation mode (``deviation=True``, for nudged phases): states are kept in the parameters' precision and
written s = s0 + d around the phase's initial (free) state s0. Each message P(A s) is computed as
P(A s0 + A d), with A s0 and the transposed messages at s0 computed once per phase in full precision and only
A d (and A^T of the change of the unpooled message) computed per iteration in ``dtype``. A 16-bit convolution
then keeps the deviation's own relative precision, so the small difference between two nudged states that the
C-EP contrast divides by 2 beta survives, at the cost of 16-bit convolutions.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .kernels import compiled, runs_fused, sum_messages
from .network import EnergyNetwork, State
from .nudging import Nudge

__all__ = [
    "relax",
    "relax_graphed",
    "RelaxResult",
    "Trajectory",
    "SolverStats",
    "SolverSettings",
    "Solver",
    "MessagesSolver",
    "AutogradSolver",
    "DeviationSolver",
    "GraphedSolver",
    "SOLVERS",
    "register_solver",
    "get_solver",
    "SOLVER_REFERENCES",
    "SCHEDULES",
    "DTYPES",
    "even_odd_groups",
    "layer_groups",
    "resolve_dtype",
    "complex_dtype",
    "largest_change",
    "Convergence",
    "block_descent",
]

SCHEDULES = ("asynchronous", "synchronous", "forward", "backward")
FIRST = ("even", "odd")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Trajectory:
    """Per-iteration diagnostics: energy (E + nudging term), fixed-point residual and largest unit change as batch
    means, and the residual of every sample (``sample_residual[t]`` has shape (B,))."""

    energy: list[float] = field(default_factory=list)
    residual: list[float] = field(default_factory=list)
    change: list[float] = field(default_factory=list)
    sample_residual: list[Tensor] = field(default_factory=list)


@dataclass
class SolverStats:
    """Per-sample statistics of a phase: the iterations each sample needed to move less than ``tol`` (all of
    them where it never did, or without ``tol``) and its largest unit change in the last iteration."""

    iterations: Tensor  # (B,) int64
    change: Tensor  # (B,) float32


@dataclass
class RelaxResult:
    """Relaxed states, the number of iterations run, the trajectory (``record``) and per-sample statistics
    (computed when ``tol`` or ``record`` is set)."""

    states: State
    iterations: int
    trajectory: Trajectory | None = None
    stats: SolverStats | None = None


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A dtype from its name ("bfloat16", ...); None stays None (the parameters' dtype)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; valid dtypes are {sorted(DTYPES)}") from None


@dataclass(frozen=True)
class SolverSettings:
    """How a solver iterates: the schedule (eq. 99 or eqs. 100-101), which parity goes first, early stopping
    once no unit moves more than ``tol``, the precision of states and weight casts (None: the parameters'),
    and channels-last storage of image-shaped states and conv weights (faster cuDNN on GPUs)."""

    schedule: str = "asynchronous"
    first: str = "even"
    tol: float | None = None
    dtype: torch.dtype | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid schedules are {list(SCHEDULES)}")
        if self.first not in FIRST:
            raise ValueError(f"first must be 'even' or 'odd', got {self.first!r}")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol must be None or > 0, got {self.tol}")
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype))


def even_odd_groups(free: Sequence[int], schedule: str = "asynchronous", first: str = "even") -> list[list[int]]:
    """The layers updated together, in order, in one iteration: all at once (synchronous, eq. 99), the even then
    the odd layers (asynchronous, eqs. 100-101; ``first="odd"`` reverses the order), or one layer at a time from
    the input to the output (forward) or back (backward; the resistive-network code's orders). Shared by every
    layered solver."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid schedules are {list(SCHEDULES)}")
    if first not in FIRST:
        raise ValueError(f"first must be 'even' or 'odd', got {first!r}")
    free = list(free)
    if schedule == "synchronous":
        return [free]
    if schedule in ("forward", "backward"):
        order = sorted(free)
        return [[k] for k in (order if schedule == "forward" else order[::-1])]
    even = [k for k in free if k % 2 == 0]
    odd = [k for k in free if k % 2 == 1]
    return [g for g in ((even, odd) if first == "even" else (odd, even)) if g]


def layer_groups(
    network: EnergyNetwork, schedule: str, first: str = "even", clamp_output: bool = False
) -> list[list[int]]:
    """:func:`even_odd_groups` of a network's free layers (without the output when it is clamped)."""
    free = [k for k in range(1, network.num_layers) if not (clamp_output and k == network.output_index)]
    return even_odd_groups(free, schedule, first)


def _diagnostics(network: EnergyNetwork, states: State, nudge: Nudge | None) -> tuple[float, Tensor]:
    """The batch-mean energy (E + nudging terms; its real part for complex states) and per-sample residuals."""
    with torch.no_grad():
        dtype = next(network.parameters()).dtype
        s32 = [s.to(complex_dtype(dtype) if states[-1].is_complex() else dtype) for s in states]
        return float(network.nudged_energy(s32, nudge).real.mean()), network.fixed_point_residual(s32, nudge)


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype whose parts have ``dtype``'s precision."""
    table = {torch.float64: torch.complex128, torch.float32: torch.complex64, torch.float16: torch.complex32}
    if dtype.is_complex:
        return dtype
    if dtype not in table:
        raise ValueError(f"complex states need float16, float32 or float64 precision, not {dtype}")
    return table[dtype]


def _iterate(
    network: EnergyNetwork,
    states: State,
    iterations: int,
    nudge: Nudge | None,
    settings: SolverSettings,
    engine: str,
    deviation: bool,
    record: bool,
) -> RelaxResult:
    """The fixed-point iterations shared by the messages, autograd and deviation solvers."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    dtype, schedule, first, tol = settings.dtype, settings.schedule, settings.first, settings.tol
    channels_last = settings.channels_last
    pdtype = next(network.parameters()).dtype
    state_dtype = pdtype if deviation or dtype is None else dtype
    if any(s.is_complex() for s in states[1:]):  # holomorphic EP: complex states, real parameters
        if deviation or engine == "autograd":
            raise ValueError("complex states (holomorphic EP) are relaxed by the messages solver only")
        state_dtype = complex_dtype(state_dtype)
    states = [states[0].to(state_dtype.to_real() if state_dtype.is_complex else state_dtype)] + [
        s.to(state_dtype) for s in states[1:]
    ]
    if channels_last:
        states = [s.contiguous(memory_format=torch.channels_last) if s.dim() == 4 else s for s in states]
    clamp = nudge is not None and nudge.clamps_output
    out = network.output_index
    if nudge is not None and clamp:
        states[out] = nudge.output_update(None, states[out], network.layers[out].sigma)
    groups = layer_groups(network, schedule, first, clamp)
    free = [k for g in groups for k in g]
    traj = Trajectory() if record else None

    inters = network.terms
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

    fused = (
        engine == "messages"
        and getattr(network, "fused_kernels", False)
        and runs_fused(states[-1])
        and not states[-1].is_complex()
        and not torch.is_grad_enabled()
    )

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
    watch = Convergence(iterations, tol)
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
        change = None if before is None else watch.update([states[k] for k in free], before, used)
        if traj is not None:
            e, r = _diagnostics(network, states, nudge)
            traj.energy.append(e)
            traj.residual.append(float(r.mean()))
            traj.sample_residual.append(r)
            traj.change.append(change if change is not None else float("nan"))
        if tol is not None and change is not None and change < tol:
            break
    return RelaxResult(states, used, traj, watch.stats(used))


class Convergence:
    """The per-sample convergence record of a phase, shared by the layered solvers: each sample's largest unit
    change in the last iteration and, with ``tol``, the first iteration whose change was below ``tol``."""

    def __init__(self, iterations: int, tol: float | None) -> None:
        self.iterations, self.tol = iterations, tol
        self.sample_change: Tensor | None = None
        self.converged_at: Tensor | None = None

    @torch.no_grad()
    def update(self, after: Sequence[Tensor], before: Sequence[Tensor], used: int) -> float:
        """Record iteration ``used`` (the states after and before it); returns the batch's largest change."""
        self.sample_change = largest_change(after, before).float()
        if self.tol is not None:
            if self.converged_at is None:
                self.converged_at = torch.full_like(self.sample_change, float(self.iterations))
            done = (self.sample_change < self.tol) & (self.converged_at > used)
            self.converged_at = torch.where(done, float(used), self.converged_at)
        return float(self.sample_change.max()) if after else 0.0

    def stats(self, used: int) -> SolverStats | None:
        """The phase's :class:`SolverStats` after ``used`` iterations (None when nothing was recorded)."""
        if self.sample_change is None:
            return None
        its = self.converged_at if self.converged_at is not None else torch.full_like(self.sample_change, float(used))
        return SolverStats(its.clamp(max=used).long(), self.sample_change)


def block_descent(
    states: list[Tensor],
    free: Sequence[int],
    groups: Sequence[Sequence[int]],
    update: Callable[[int], Tensor],
    iterations: int,
    tol: float | None,
    energy: Callable[[list[Tensor]], Tensor] | None = None,
) -> RelaxResult:
    """The loop of the exact block solvers (resistive networks, FitzHugh-Nagumo networks): per iteration, each
    group of layers in turn takes ``update(k)`` (computed for the whole group before any of it is written, so a
    group updates at once). With ``tol`` the phase stops once no free unit moves more than ``tol``; ``energy``
    (the phase's energy per sample, nudging term included) asks for a :class:`Trajectory`. ``states`` is updated
    in place and returned in the result."""
    traj = Trajectory() if energy is not None else None
    watch = Convergence(iterations, tol) if tol is not None or energy is not None else None
    used = 0
    for _ in range(iterations):
        before = [states[k] for k in free] if watch is not None else None
        for group in groups:
            new = {k: update(k) for k in group}
            for k, v in new.items():
                states[k] = v
        used += 1
        if watch is not None and before is not None:
            change = watch.update([states[k] for k in free], before, used)
            if traj is not None and energy is not None:
                with torch.no_grad():
                    traj.energy.append(float(energy(states).real.mean()))
                traj.change.append(change)
            if tol is not None and change < tol:
                break
    return RelaxResult(states, used, traj, None if watch is None else watch.stats(used))


def largest_change(after: Sequence[Tensor], before: Sequence[Tensor]) -> Tensor:
    """Per sample, the largest absolute change of any unit between two lists of layer states (real or complex):
    the convergence measure of the relaxations and of holomorphic EP's fixed-point check."""
    if not after:
        return torch.zeros(before[0].shape[0] if before else 0)
    per_layer = [(a - b).abs().flatten(1).amax(1) for a, b in zip(after, before)]
    return torch.stack(per_layer).amax(0)


# ---- solvers ------------------------------------------------------------------------------------------------
class Solver:
    """A relaxation method: ``solver(network, states, iterations, nudge=None, record=False) -> RelaxResult``.

    ``states`` are not modified in place. Autograd tracks the iterations when grad is enabled (truncated
    backprop and BPTT use that). Subclasses implement :meth:`__call__`; ``settings`` are frozen."""

    name = "solver"

    def __init__(self, settings: SolverSettings | None = None, **changes: Any) -> None:
        self.settings = replace(settings or SolverSettings(), **changes)

    def __call__(
        self, network: Any, states: State, iterations: int, nudge: Nudge | None = None, record: bool = False
    ) -> RelaxResult:
        raise NotImplementedError

    def with_settings(self, **changes: Any) -> Solver:
        """The same solver with some settings changed."""
        return type(self)(replace(self.settings, **changes))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings})"


SOLVERS: dict[str, Callable[..., Solver]] = {}
_GRAPHS: weakref.WeakKeyDictionary[EnergyNetwork, dict] = weakref.WeakKeyDictionary()  # captured phases per network
SOLVER_REFERENCES: dict[str, str] = {}  # solver -> its autograd reference (engine="autograd")


def register_solver(name: str, reference: str | None = None) -> Callable[[type[Solver]], type[Solver]]:
    """Class decorator: make a solver available by name (``get_solver``, configs' ``solver`` key);
    ``reference`` names the solver that computes the same iterations by autograd (tests, ``engine``)."""

    def deco(cls: type[Solver]) -> type[Solver]:
        SOLVERS[name] = cls
        cls.name = name
        if reference is not None:
            SOLVER_REFERENCES[name] = reference
        return cls

    return deco


def get_solver(name: str, settings: SolverSettings | None = None, **changes: Any) -> Solver:
    """A solver by name with ``settings`` (and changes to them); an unknown name lists the valid ones."""
    try:
        factory = SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; valid solvers are {sorted(SOLVERS)}") from None
    return factory(settings, **changes)


@register_solver("messages", reference="autograd")
class MessagesSolver(Solver):
    """Fixed-point iterations through the interactions' explicit messages (the default)."""

    deviation = False

    def __call__(self, network, states, iterations, nudge=None, record=False):
        return _iterate(network, states, iterations, nudge, self.settings, "messages", self.deviation, record)


@register_solver("autograd")
class AutogradSolver(Solver):
    """Fixed-point iterations with dPhi/ds recomputed by autograd (the reference for the messages)."""

    def __call__(self, network, states, iterations, nudge=None, record=False):
        pdtype = next(network.parameters()).dtype
        if self.settings.dtype is not None and self.settings.dtype != pdtype:
            raise ValueError(
                "the autograd reference solver runs in the parameters' dtype; use the messages "
                f"solver for dtype={self.settings.dtype}"
            )
        return _iterate(network, states, iterations, nudge, self.settings, "autograd", False, record)


@register_solver("deviation")
class DeviationSolver(MessagesSolver):
    """The messages solver in deviation mode: states in the parameters' precision, only the convolutions of
    s - s0 in ``dtype`` (module docstring); keeps a 16-bit C-EP contrast."""

    deviation = True


@register_solver("graphed")
class GraphedSolver(Solver):
    """Replays a CUDA graph of ``inner`` (the messages solver by default), captured once per shapes and
    settings: no per-kernel launch overhead. Falls back to ``inner`` where a graph cannot hold the phase
    (CPU tensors, autograd, early stopping, recording, hidden-layer nudges)."""

    def __init__(self, settings: SolverSettings | None = None, inner: Solver | None = None, **changes: Any) -> None:
        super().__init__(settings, **changes)
        self.inner = inner if inner is not None else MessagesSolver(self.settings)

    def with_settings(self, **changes: Any) -> GraphedSolver:
        inner = self.inner.with_settings(**changes)
        return GraphedSolver(inner.settings, inner=inner)

    def __call__(self, network, states, iterations, nudge=None, record=False):
        if (
            not states[0].is_cuda
            or torch.is_grad_enabled()
            or self.inner.settings.tol is not None
            or record
            or not isinstance(self.inner, MessagesSolver)
            or (nudge is not None and nudge.hidden_layers)
            or any(s.is_complex() for s in states)
        ):
            return self.inner(network, states, iterations, nudge, record)
        return self._replay(network, states, iterations, nudge)

    @torch.no_grad()
    def _replay(self, network: EnergyNetwork, states: State, iterations: int, nudge: Nudge | None) -> RelaxResult:
        """Capture the inner solver's phase once per (shapes, solver, settings, nudge kind), then replay it.

        Parameters are read from their storage at each replay, so in-place optimiser updates are seen."""
        key = (
            tuple((tuple(s.shape), s.dtype) for s in states),
            iterations,
            self.inner.name,
            self.inner.settings,
            ("free",) if nudge is None else nudge.capture_key(),
        )
        cache = _GRAPHS.setdefault(network, {})
        if key not in cache:
            static_in = [s.clone() for s in states]
            static_aux = None if nudge is None else nudge.tensor.clone()
            static_nudge = None if nudge is None or static_aux is None else nudge.with_tensor(static_aux)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the capture (cuDNN autotuning, allocator)
                self.inner(network, static_in, iterations, static_nudge)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.inner(network, static_in, iterations, static_nudge).states
            cache[key] = (graph, static_in, static_aux, static_out)
        graph, static_in, static_aux, static_out = cache[key]
        for dst, src in zip(static_in, states):
            dst.copy_(src)
        if nudge is not None:
            static_aux.copy_(nudge.tensor)
        graph.replay()
        return RelaxResult([s.clone() for s in static_out], iterations)


def relax(
    network: EnergyNetwork,
    states: State,
    iterations: int,
    *,
    nudge: Nudge | None = None,
    schedule: str = "asynchronous",
    first: str = "even",
    tol: float | None = None,
    dtype: torch.dtype | str | None = None,
    record: bool = False,
    engine: str = "messages",
    channels_last: bool = False,
    deviation: bool = False,
) -> RelaxResult:
    """Run up to ``iterations`` fixed-point iterations from ``states``: the functional form of the solvers.

    ``engine`` names the solver ("messages", "autograd"); ``deviation=True`` picks the deviation solver.
    Every other keyword is a :class:`SolverSettings` field.
    """
    if engine not in ("messages", "autograd"):
        raise ValueError(f"unknown engine {engine!r}; valid engines are ['autograd', 'messages']")
    if deviation and engine != "messages":
        raise ValueError("deviation mode needs engine='messages' (it splits the explicit messages)")
    settings = SolverSettings(schedule, first, tol, resolve_dtype(dtype), channels_last)
    solver = get_solver("deviation" if deviation else engine, settings)
    return solver(network, states, iterations, nudge, record)


def _relaxation_params(network: EnergyNetwork, dtype: torch.dtype | None, channels_last: bool) -> dict:
    """Each interaction's parameters cast to ``dtype`` (None: as they are), 4-d ones channels-last if asked."""
    params = {name: inter.relaxation_params(dtype) for name, inter in network.terms.items()}
    if channels_last:
        params = {
            name: tuple(p.contiguous(memory_format=torch.channels_last) if p.dim() == 4 else p for p in ps)
            for name, ps in params.items()
        }
    return params


class _DeviationBase:
    """The full-precision messages at the initial states s0 and the low-precision messages of d = s - s0."""

    def __init__(
        self, network: EnergyNetwork, states: State, params: dict, dtype: torch.dtype | None, channels_last: bool
    ) -> None:
        self.inters, self.params, self.dtype = network.terms, params, dtype
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


def relax_graphed(
    network: EnergyNetwork,
    states: State,
    iterations: int,
    *,
    nudge: Nudge | None = None,
    schedule: str = "asynchronous",
    first: str = "even",
    dtype: torch.dtype | str | None = None,
    channels_last: bool = False,
    deviation: bool = False,
) -> RelaxResult:
    """:func:`relax` with a fixed iteration count, captured once per (shapes, settings) as a CUDA graph and
    replayed (the functional form of :class:`GraphedSolver`): no per-kernel launch overhead on GPUs. No
    autograd, no early stopping and no trajectory in this mode."""
    if not states[0].is_cuda:
        raise ValueError("relax_graphed needs CUDA tensors; use relax() on the CPU")
    settings = SolverSettings(schedule, first, None, resolve_dtype(dtype), channels_last)
    inner = get_solver("deviation" if deviation else "messages", settings)
    return GraphedSolver(settings, inner=inner)._replay(network, states, iterations, nudge)
