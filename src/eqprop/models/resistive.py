"""Deep resistive networks (DRNs): nonlinear resistive circuits of voltage sources, resistors, diodes and current
sources, whose steady state minimises the power dissipation (the two resistive-network papers of
``resistive-networks.md``: "A fast algorithm to simulate nonlinear resistive networks", ICML 2024, and "A
universal approximation theorem for nonlinear resistive networks").

The circuit. Node voltages are layered: the input voltage sources u = input_gain * (x, -x) (the negated copy lets
an input act with either sign through conductances g >= 0), hidden layers v_1..v_{L-1} whose first half is
excitatory (a diode: v >= 0) and second half inhibitory (v <= 0), and a linear output layer v_L read as the
prediction. Every node of layer k-1 is joined to every node of layer k by a resistor of conductance G_k[i, j] >= 0,
and node j of layer k has a current source b_k[j]. The energy (power dissipation) is

    E(v) = 1/2 sum_k sum_ij G_k[i, j] (v_{k-1, i} - v_{k, j})^2 - sum_k b_k . v_k.

Why the block update is exact. E restricted to one node is a quadratic a v^2 + b' v + c with
a = 1/2 (the sum of the conductances at the node) > 0; nodes of one layer do not interact, so the whole layer's
minimiser over its half-lines, the others fixed, is the clipped vertex

    v_k = clip((v_{k-1} G_k + v_{k+1} G_{k+1}^T + b_k) / (1^T G_k + G_{k+1} 1))                 (coordinate descent)

onto each unit's half-line. Each block update therefore never increases E, and E is convex, so the iterations
converge to the circuit's unique steady state where the quadratic is strict. EP nudging adds beta * c/2 ||o - y||^2
(c = 1 for the papers' 1/2 ||o - y||^2), which keeps the output's update an exact vertex: its numerator gains
c beta y and its curvature c beta. An optional output leak (a resistor of conductance g_0 from every output node
to ground, ``output_leak``) adds g_0/2 ||v_L||^2 to E and g_0 to the output's curvature; without it the outputs keep
their size when (G_L, b_L) are scaled down together, a direction that CL and positive EP shrink along
(``docs/resistive.md``, "The seven rules on DRN-1H"). A node whose conductances are all 0 (a = 0) has no defined
voltage; this model holds it at 0 V (grounded), so no update divides by zero and its conductances' gradients stay
finite.

Parameters: the conductances are constrained to g >= 0 (:meth:`DeepResistiveNetwork.parameter_constraints`,
restored after every optimiser step by :mod:`eqprop.core.constraints`); dE/dG_k[i, j] = 1/2 (v_{k-1,i} - v_{k,j})^2
(the power in that resistor) and dE/db_k = -v_k. Initialisation as the papers' code: uniform in
+-gain/sqrt(fan_in), then clamped to >= 0 (about half start at 0); biases 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from ..core.constraints import Projection, nonnegative
from ..core.nudging import AugmentedNudge, ClampNudge, EPNudge, Nudge
from ..core.relaxation import (
    RelaxResult,
    Solver,
    block_descent,
    even_odd_groups,
    register_solver,
)
from ..errors import ConfigError
from ..settings import Section, register_section, setting
from .base import layer_gains, register_model

__all__ = [
    "DeepResistiveNetwork",
    "CoordinateDescentSolver",
    "drn",
    "drn_xs",
    "drn_1h",
    "drn_2h",
    "drn_3h",
    "drn_xl",
    "ResistiveSection",
]


class DeepResistiveNetwork(nn.Module):
    """A layered DRN (module docstring): ``sizes = [n_in, h_1, ..., h_{L-1}, n_out]`` with ``n_in`` input values
    (the circuit has 2 n_in input sources, x and -x), even hidden sizes (half excitatory, half inhibitory).

    States are lists ``[x, v_1, ..., v_L]`` with ``x`` the flattened input as given (the sources' voltages are
    ``input_gain * (x, -x)``). Parameters, in order: G_1, b_1, G_2, b_2, ..., G_L, b_L; G_k has shape
    (fan-in nodes, fan-out nodes)."""

    exact_free_phase = False

    def __init__(
        self,
        sizes: Sequence[int],
        input_gain: float = 1.0,
        gains: float | Sequence[float] = 1.0,
        output_leak: float = 0.0,
    ) -> None:
        super().__init__()
        sizes = [int(n) for n in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes must list at least 2 positive layer sizes (input, ..., output), got {sizes}")
        odd = [n for n in sizes[1:-1] if n % 2]
        if odd:
            raise ValueError(
                f"hidden layer sizes must be even (the first half of each hidden layer is excitatory, the second "
                f"half inhibitory), got {sizes[1:-1]}"
            )
        if not (math.isfinite(input_gain) and input_gain > 0):
            raise ValueError(f"input_gain must be a finite number > 0, got {input_gain}")
        if not (math.isfinite(output_leak) and output_leak >= 0):
            raise ValueError(f"output_leak (a conductance to ground) must be a finite number >= 0, got {output_leak}")
        n_weights = len(sizes) - 1
        gains = layer_gains(gains, n_weights)
        self.sizes, self.input_gain, self.gains = sizes, float(input_gain), gains
        self.output_leak = float(output_leak)  # g_0: each output node's conductance to ground
        self.device_levels: tuple[int, float] | None = None  # (bits, g_max) of non-ideal devices, if any
        self.num_classes = sizes[-1]
        nodes = [2 * sizes[0]] + sizes[1:]  # the circuit's node counts per layer
        self.nodes = nodes
        for k in range(1, len(nodes)):
            self.register_parameter(f"g{k}", nn.Parameter(torch.empty(nodes[k - 1], nodes[k])))
            self.register_parameter(f"b{k}", nn.Parameter(torch.zeros(nodes[k])))
        self.reset_parameters()
        # the diodes: the half-line of every hidden unit (the output layer is linear)
        for k in range(1, len(nodes) - 1):
            half, rest = nodes[k] // 2, nodes[k] - nodes[k] // 2
            # from lists, not torch.cat/neg: those have Python meta kernels, and the parameter count on the meta
            # device (count_parameters) would import torch._dynamo for them (seconds in every run)
            low = torch.tensor([0.0] * half + [-math.inf] * rest)
            high = torch.tensor([math.inf] * rest + [-0.0] * half)  # = -low.flip(0), bit for bit
            self.register_buffer(f"low{k}", low, persistent=False)
            self.register_buffer(f"high{k}", high, persistent=False)

    # ---- structure -------------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """L: the number of conductance layers (hidden layers + 1)."""
        return len(self.nodes) - 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.sizes[0],)

    @property
    def output_index(self) -> int:
        return self.depth

    def conductance(self, k: int) -> Tensor:
        return cast(Tensor, getattr(self, f"g{k}"))

    def bias(self, k: int) -> Tensor:
        return getattr(self, f"b{k}")

    def layer_parameters(self) -> list[list[nn.Parameter]]:
        """One group per layer k = 1..L: the conductances into layer k and its current sources."""
        return [[getattr(self, f"g{k}"), getattr(self, f"b{k}")] for k in range(1, self.depth + 1)]

    def parameter_constraints(self) -> list[tuple[Tensor, Projection]]:
        """Conductances are physical: g >= 0 after every update; with ``device_levels = (bits, g_max)`` (devices
        of 2^bits levels in [0, g_max], :mod:`eqprop.models.devices`) also on that grid."""
        levels = self.device_levels
        if levels is not None:
            from .devices import quantization_constraint

            project = quantization_constraint(*levels)
            return [(self.conductance(k), project) for k in range(1, self.depth + 1)]
        return [(self.conductance(k), nonnegative) for k in range(1, self.depth + 1)]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """G_k ~ U(+-gain_k / sqrt(fan_in)) clamped to >= 0 (the papers' code); biases 0."""
        for k in range(1, self.depth + 1):
            g = self.conductance(k)
            bound = self.gains[k - 1] / math.sqrt(g.shape[0])
            g.uniform_(-bound, bound).clamp_(min=0.0)
            self.bias(k).zero_()

    @contextmanager
    def learning_step(self) -> Iterator[None]:
        """The scope of one learning step (entered by ``LearningAlgorithm.step``): its phases share the per-step
        constants (:meth:`phase_constants`), computed once; leaving it drops them, so any change of the weights
        between steps is seen, including edits through ``.data`` that bump no version counter."""
        self._sharing = True
        self._constants: tuple[Tensor, tuple[Any, ...], list[Any], list[Any]] | None = None
        try:
            yield
        finally:
            self._sharing = False
            self._constants = None

    def phase_constants(self, x: Tensor) -> tuple[list[Any], list[Any]]:
        """What stays constant while the voltages relax: per layer k the current b_k (plus, for layer 1, the
        sources' current u G_1) and the curvature 1^T G_k + G_{k+1} 1 (twice the quadratic's a). Inside a
        :meth:`learning_step` without autograd they are kept for the step's next phase on the same input (``x``
        or a flattened view of it, same memory and version; the parameters' version counters guard against an
        in-place update inside the step);
        outside one they are computed afresh for every phase."""
        params = list(self.parameters())
        key = (x._version, *(p._version for p in params), params[0].dtype)
        cache = getattr(self, "_constants", None)
        tracking = torch.is_grad_enabled()
        sharing = getattr(self, "_sharing", False)
        if sharing and not tracking and cache is not None and cache[1] == key and _same_input(cache[0], x):
            return cache[2], cache[3]
        L = self.depth
        g: list[Any] = [None] + [self.conductance(k) for k in range(1, L + 1)]
        fixed: list[Any] = [None] + [self.bias(k) for k in range(1, L + 1)]
        fixed[1] = self.source_current(x, g[1], fixed[1])
        curv: list[Any] = [None] + [
            g[k].sum(0) + (g[k + 1].sum(1) if k < L else self.output_leak) for k in range(1, L + 1)
        ]
        self._constants = (x, key, fixed, curv) if sharing and not tracking else None
        return fixed, curv

    def source_current(self, x: Tensor, g1: Tensor, b1: Tensor) -> Tensor:
        """u G_1 + b_1, the sources' current into layer 1, with u = gain (x, -x): gain x (G_1^+ - G_1^-) + b_1, one
        product with half of G_1's rows' worth of work (G_1^+, G_1^- are the rows fed by x and by -x)."""
        x = x.flatten(1).to(g1.dtype)
        n = x.shape[1]
        return torch.addmm(b1, x, g1[:n] - g1[n:], alpha=self.input_gain)

    def non_holomorphic(self) -> list[str]:
        """Why complex (holomorphic-EP) phases do not apply: the diodes clip the voltages."""
        return ["a resistive network's diodes clip the hidden voltages to half-lines, which has no complex extension"]

    def sources(self, x: Tensor) -> Tensor:
        """The input sources' voltages: input_gain * (x, -x)."""
        x = x.flatten(1)
        return self.input_gain * torch.cat([x, -x], dim=1)

    def project(self, k: int, v: Tensor) -> Tensor:
        """Voltages of layer k on their diodes' half-lines (the output layer is linear)."""
        if k == self.depth:
            return v
        return torch.clamp(v, getattr(self, f"low{k}"), getattr(self, f"high{k}"))

    def free_units(self, states: Sequence[Tensor]) -> list[Tensor]:
        """Per layer 1..L, 1.0 where the unit is off its diode's bound (free to move; RBP's active set), else 0."""
        masks = []
        for k in range(1, self.depth + 1):
            v = states[k]
            masks.append(torch.ones_like(v) if k == self.depth else (v != 0).to(v.dtype))
        return masks

    # ---- energy and its gradients ----------------------------------------------------------------------------
    def energy(self, states: Sequence[Tensor]) -> Tensor:
        """E per sample: the power 1/2 sum G (v_i - v_j)^2 dissipated in the resistors (the output leak's
        g_0/2 ||v_L||^2 included) minus sum b . v."""
        pre = self.sources(states[0])
        total = torch.zeros(pre.shape[0], dtype=pre.dtype, device=pre.device)
        for k in range(1, self.depth + 1):
            g, v = self.conductance(k), states[k]
            power = 0.5 * ((pre * pre) @ g.sum(1) + (v * v) @ g.sum(0)) - ((pre @ g) * v).sum(1)
            total = total + power - v @ self.bias(k)
            pre = v
        if self.output_leak:
            total = total + 0.5 * self.output_leak * (pre * pre).sum(1)
        return total

    def energy_param_grads(self, states: Sequence[Tensor]) -> list[Tensor]:
        """dE/dtheta (batch mean) at fixed states, in parameter order: dE/dG_k[i, j] = 1/2 (p_i - v_j)^2 (the
        power in that resistor) and dE/db_k = -v_k."""
        pre = self.sources(states[0]).detach()
        n = pre.shape[0]
        grads: list[Tensor] = []
        for k in range(1, self.depth + 1):
            v = states[k].detach()
            squares = 0.5 * ((pre * pre).mean(0)[:, None] + (v * v).mean(0)[None, :])
            grads.append(torch.addmm(squares, pre.t(), v, alpha=-1.0 / n))
            grads.append(-v.mean(0))
            pre = v
        return grads

    def energy_param_contrast(
        self, first: Sequence[Tensor], second: Sequence[Tensor], beta_1: float, beta_2: float
    ) -> list[Tensor]:
        """(dE/dtheta(second) - dE/dtheta(first)) / (beta_2 - beta_1), the EP contrast, in one product per layer:
        with p, v the two ends of layer k's resistors, the difference of 1/2 (p_i - v_j)^2 is
        1/2 (dp^2_i + dv^2_j) - (p_2^T v_2 - p_1^T v_1)_ij / B; the sources' squares cancel, and with one input in both
        phases layer 1's cross term is gain (x, -x)^T (v_2 - v_1): one product with x alone."""
        scale = 1.0 / (beta_2 - beta_1)
        x1, x2 = first[0], second[0]
        one_input = _same_input(x1, x2) and x1._version == x2._version
        grads: list[Tensor] = []
        for k in range(1, self.depth + 1):
            v1, v2 = first[k].detach(), second[k].detach()
            dv = 0.5 * scale * ((v2 * v2).mean(0) - (v1 * v1).mean(0))
            if k == 1 and one_input:
                grads.append(self._source_contrast(x1, v1, v2, dv, scale))
            else:
                if k == 1:  # two inputs: the sources' voltages of each
                    p1, p2 = self.sources(x1).detach(), self.sources(x2).detach()
                dp = 0.5 * scale * ((p2 * p2).mean(0) - (p1 * p1).mean(0))
                cross = torch.cat([p2, p1]).t()
                grads.append(
                    torch.addmm(dv[None, :] + dp[:, None], cross, torch.cat([v2, -v1]), alpha=-scale / len(v1))
                )
            grads.append(-scale * (v2.mean(0) - v1.mean(0)))
            p1, p2 = v1, v2
        return grads

    def _source_contrast(self, x: Tensor, v1: Tensor, v2: Tensor, dv: Tensor, scale: float) -> Tensor:
        """Layer 1's contrast when both phases share the input x: the cross term u^T (v_2 - v_1) with
        u = gain (x, -x) is +-gain x^T (v_2 - v_1), one product with x alone for both halves of G_1."""
        x = x.detach().flatten(1).to(v1.dtype)
        half = torch.mm(x.t(), (v2 - v1).mul_(scale * self.input_gain / x.shape[0]))
        grad = half.new_empty(2 * half.shape[0], half.shape[1])
        torch.sub(dv, half, out=grad[: half.shape[0]])
        torch.add(dv, half, out=grad[half.shape[0] :])
        return grad

    def init_state(self, x: Tensor, init: str = "zeros") -> list[Tensor]:
        """[x, 0, ..., 0]: every node at 0 V (the only start a DRN offers: a state on every diode's half-line)."""
        if init != "zeros":
            raise ValueError(f"a resistive network's relaxation starts from zeros; init={init!r} is not available")
        x = x.flatten(1)
        return [x] + [x.new_zeros(x.shape[0], n) for n in self.nodes[1:]]

    def free_phase(self, x: Tensor, solver: Any, iterations: int, init: str = "zeros") -> RelaxResult:
        """The free steady state: ``iterations`` of ``solver`` from zeros."""
        return solver(self, self.init_state(x, init), iterations)

    def forward(self, x: Tensor, iterations: int = 100) -> Tensor:
        """The output voltages at the free steady state (``iterations`` asynchronous block updates from zeros)."""
        with torch.no_grad():
            return CoordinateDescentSolver()(self, self.init_state(x), iterations).states[-1]


# ---- the exact solver ------------------------------------------------------------------------------------------
def _same_input(a: Tensor, b: Tensor) -> bool:
    """Whether ``b`` is ``a`` or a flattened view of the same memory (a phase's states hold ``x.flatten(1)``, a new
    tensor object, so the nudged phases see a view of the free phase's input); the version counters, shared by
    views, are compared by the caller."""
    return a is b or (
        a.data_ptr() == b.data_ptr()
        and a.dtype == b.dtype
        and a.device == b.device
        and a.flatten(1).shape == b.flatten(1).shape
        and a.flatten(1).stride() == b.flatten(1).stride()
    )


def _output_nudge(nudge: Nudge | None) -> tuple[float, Tensor | None, Tensor | None]:
    """(c beta, c beta y, clamp target) of a nudge on the output: EP with a squared-error cost adds
    beta c/2 ||o - y||^2; clamping holds the output."""
    if nudge is None:
        return 0.0, None, None
    if isinstance(nudge, ClampNudge):
        return 0.0, None, nudge.target
    if isinstance(nudge, AugmentedNudge) or nudge.hidden_layers:
        raise ValueError("a resistive network takes no forces on its hidden layers (intermediate signals)")
    if not isinstance(nudge, EPNudge):
        raise ValueError(f"a resistive network is nudged by EP (EPNudge) or clamped (ClampNudge), got {nudge!r}")
    if nudge.readout is not None:
        raise ValueError("a resistive network reads its output voltages directly; it takes no readout")
    if isinstance(nudge.beta, Tensor) or isinstance(nudge.beta, complex):
        raise ValueError("a resistive network is nudged by a real beta (no complex or per-sample nudging values)")
    c = nudge.cost.curvature
    if c is None:
        raise ValueError(
            f"the {nudge.cost.name} is not quadratic in the output, so the nudged output has no exact vertex; a "
            "resistive network needs cost=half_squared_error (the papers' 1/2 ||o - y||^2) or squared_error"
        )
    cb = c * float(nudge.beta)
    return cb, cb * nudge.y, None


@register_solver("coordinate-descent")
class CoordinateDescentSolver(Solver):
    """Exact block coordinate descent on a DRN's energy (module docstring): each layer jumps to its clipped vertex,
    in the order ``settings.schedule`` gives (asynchronous with ``first``, synchronous, forward, backward).

    Per phase, the input sources' current into layer 1 (u G_1 + b_1) and every layer's curvature are computed
    once; an iteration then costs one product with each conductance matrix but the first. With ``tol`` a phase stops
    once no voltage moves by more than ``tol``; ``stats`` gives each sample's iterations and last change, and
    ``record`` the energy (with the nudging term) and the largest change per iteration. Autograd follows the
    iterations when grad is enabled (TBP, BPTT)."""

    def __call__(
        self, network: Any, states: list[Tensor], iterations: int, nudge: Nudge | None = None, record: bool = False
    ) -> RelaxResult:
        if not isinstance(network, DeepResistiveNetwork):
            raise ValueError(f"the coordinate-descent solver relaxes resistive networks, got {type(network).__name__}")
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        s = self.settings
        pdtype: torch.dtype = network.conductance(1).dtype
        if s.dtype is not None and s.dtype != pdtype:
            raise ValueError(
                f"the coordinate-descent solver runs in the parameters' dtype ({pdtype}); dtype={s.dtype} is not "
                "available for resistive networks"
            )
        L = network.depth
        cb, cby, clamp = _output_nudge(nudge)
        g: list[Any] = [None] + [network.conductance(k) for k in range(1, L + 1)]
        fixed, curv = network.phase_constants(states[0])
        states = [states[0].flatten(1)] + [t.to(pdtype) for t in states[1:]]
        if cb != 0.0:
            fixed, curv = list(fixed), list(curv)
            curv[L] = curv[L] + cb
            fixed[L] = fixed[L] + cast(Tensor, cby).to(pdtype)
            if bool((curv[L] <= 0).any()):
                worst = float(curv[L].detach().min())
                raise ValueError(
                    f"beta={nudge.beta} makes the nudged energy unbounded below: an output node's conductances sum "  # type: ignore[union-attr]
                    f"to {worst - cb:.4g} <= -c beta = {-cb:.4g}, so E + beta C has no minimum; a negative nudging "
                    "value needs |beta| * c below every output node's total conductance (use a smaller beta, or "
                    "the positive scheme)"
                )
        grounded = [None] + [curv[k] <= 0 for k in range(1, L + 1)]
        safe = [None] + [torch.where(grounded[k], torch.ones_like(curv[k]), curv[k]) for k in range(1, L + 1)]
        if clamp is not None:
            states[L] = clamp.to(pdtype).expand_as(states[L])
        free = list(range(1, L + 1 if clamp is None else L))
        groups = even_odd_groups(free, s.schedule, s.first)

        def update(k: int) -> Tensor:
            # the currents into layer k (fixed sources and biases, then each neighbour layer's), added by the products
            num = fixed[k]
            if k > 1:
                num = torch.addmm(num, states[k - 1], g[k])  # a bias row broadcasts over the batch
            if k < L:
                num = torch.addmm(num, states[k + 1], g[k + 1].t())
            # a node with no conductance (all its resistors at 0) sits at 0 V; no host sync (CUDA graph capture)
            return network.project(k, (num / safe[k]).masked_fill(grounded[k], 0.0))

        def energy(states: list[Tensor]) -> Tensor:
            e = network.energy(states)
            if cb != 0.0:
                e = e + 0.5 * cb * (states[L] - nudge.y.to(pdtype)).pow(2).sum(1)  # type: ignore[union-attr]
            return e

        return block_descent(states, free, groups, update, iterations, s.tol, energy if record else None)


# ---- presets: the papers' networks (MNIST: 784 inputs, 10 classes) -----------------------------------------------
def drn(
    sizes: Sequence[int], input_gain: float = 1.0, gains: float | Sequence[float] = 1.0, output_leak: float = 0.0
) -> DeepResistiveNetwork:
    """A DRN with ``sizes = [n_in, hidden..., n_out]`` (see :class:`DeepResistiveNetwork`)."""
    return DeepResistiveNetwork(sizes, input_gain, gains, output_leak)


def drn_xs(input_gain: float = 100.0) -> DeepResistiveNetwork:
    """Fast-DRN Table 1, DRN-XS: 2x28x28 -> 100 -> 10 (the size Kendall et al. trained in SPICE)."""
    return drn([784, 100, 10], input_gain)


def drn_1h(input_gain: float = 480.0) -> DeepResistiveNetwork:
    """Fast-DRN Table 1, DRN-1H: 2x28x28 -> 1024 -> 10 (input gain 480; the universal-DRN paper uses 8 x 60)."""
    return drn([784, 1024, 10], input_gain)


def drn_2h(input_gain: float = 2000.0) -> DeepResistiveNetwork:
    """Fast-DRN Table 1, DRN-2H: 2x28x28 -> 1024 -> 1024 -> 10."""
    return drn([784, 1024, 1024, 10], input_gain)


def drn_3h(input_gain: float = 4000.0) -> DeepResistiveNetwork:
    """Fast-DRN Table 1, DRN-3H: 2x28x28 -> 1024 x 3 -> 10."""
    return drn([784, 1024, 1024, 1024, 10], input_gain)


def drn_xl(input_gain: float = 800.0) -> DeepResistiveNetwork:
    """Fast-DRN Table 1, DRN-XL: 2x28x28 -> 32768 -> 10."""
    return drn([784, 32768, 10], input_gain)


# ---- config: the family's own settings and its registration --------------------------------------------------------
@dataclass
class ResistiveSection(Section):
    """The ``resistive`` section: what only resistive networks read (sizes come from ``hidden``, init gains from
    ``gains``)."""

    name: ClassVar[str] = "resistive"
    input_gain: float = setting(1.0, "drn: the amplification of the input voltage sources input_gain * (x, -x)")
    conductance_bits: int = setting(0, "drn: train devices of 2^bits conductance levels in [0, g_max] (0: ideal)")
    g_max: float | None = setting(None, "drn: the largest conductance of such devices (needed with conductance_bits)")
    output_leak: float = setting(0.0, "drn: a resistor of this conductance from every output node to ground (0: none)")

    def validate(self) -> None:
        self.positive("input_gain", "g_max")
        self.at_least(0.0, "output_leak")
        self.at_least(0, "conductance_bits")
        if self.conductance_bits and self.g_max is None:
            raise ConfigError("conductance_bits needs g_max (the devices' largest conductance), e.g. g_max=0.5")


register_section(ResistiveSection, "model family resistive (model=drn)")


def _build_drn(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> DeepResistiveNetwork:
    sizes = [math.prod(input_shape)] + list(cfg.hidden) + [num_classes]
    try:
        net = DeepResistiveNetwork(sizes, cfg.resistive.input_gain, cfg.gains, cfg.resistive.output_leak)
        if cfg.resistive.conductance_bits:
            net.device_levels = (cfg.resistive.conductance_bits, cfg.resistive.g_max)
            for tensor, project in net.parameter_constraints():
                with torch.no_grad():
                    project(tensor)  # the initial conductances on the devices' grid too
        return net
    except ValueError as exc:
        key = next((k for k in ("output_leak", "gains", "input_gain") if k in str(exc)), "hidden")
        raise ConfigError(f"model=drn, config key {key!r}: {exc}") from None


# The rules that train a DRN (every contrastive rule, the backprop baselines; HEP only with N = 2), and the
# settings of the papers' code that a run on the default data takes unless the config says otherwise.
DRN_RULES = ("CL", "PEP", "NEP", "CEP", "REP", "PCpL", "NCpL", "CCpL", "RCpL", "TBP", "RBP", "BPTT", "HEP")
DRN_DEFAULTS: dict[str, Any] = {
    "hidden": [100],
    "gains": [1.0],
    "input_gain": 20.0,
    "normalization": "none",
    "algorithm": "CEP",
    "beta": 0.5,
    "cost": "half_squared_error",
    "free_iterations": 4,
    "nudged_iterations": 4,
    "schedule": "asynchronous",
    "first": "odd",
    "init": "persistent",
    "lrs": [0.02],
    "momentum": 0.9,
    "weight_decay": 0.0,
    "lr_schedule": "exponential",
    "gamma": 0.99,
    "batch_size": 16,
    "epochs": 20,
}

register_model(
    "drn",
    _build_drn,
    "resistive",
    flat_input=True,
    solver="coordinate-descent",
    description="deep resistive network: resistors, diodes, sources (hidden, input_gain, gains)",
    defaults=DRN_DEFAULTS,
    algorithms=DRN_RULES,
    persistent_init=True,
)
