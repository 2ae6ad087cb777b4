"""Predictive-coding networks (PCN) trained by equilibrium propagation (Kerjan, Scellier, Hoier, arXiv 2606.03584).

Energy E = 1/2 sum_k ||h_k - f_k(theta_k, h_{k-1})||^2 with h_0 = x (eq. 10), total energy F = E + beta C(h_L, y)
(eq. 12). Hidden predictions are ReLU(a_k) with the pre-activation a_k one of conv3x3, maxpool(conv3x3) or a
matmul (eq. 13); the output f_L is a matmul (eq. 14). A skip connection j -> k adds a strided 1x1 convolution of
h_j to a_k, so its prediction term enters eps_k (section 5.5, VGG10Skip). At beta = 0 the minimum of F is the
forward pass (E = 0 and dF/dtheta = 0 there), so only nudged phases are relaxed, by the ``mod-pgd`` solver
(eq. 20, the paper's choice) or the ``pgd`` one (eq. 19): asynchronous, even then odd layers, step size 1,
h_k <- ReLU(a_k + Delta_k) (mod-PGD) or ReLU(ReLU(a_k) + Delta_k) (PGD) with Delta_k = -d(sum_c 1/2 ||eps_c||^2)/dh_k
the top-down error from the layers c that read h_k, and the output h_L <- a_L - beta dC/dh_L(h_L, y) (eq. 18).
A clamped phase (eq. 8) holds h_L at (1 - beta) h_L^0 + beta y and relaxes the hidden layers the same way.
The update is local: dE/dtheta_k involves eps_k and the layers that feed a_k only.

The learning rules are in :mod:`eqprop.rules.predictive_coding`; the architectures of Tables 5-6 are
:func:`vgg5`, :func:`vgg10` and :func:`vgg10_skip`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.interactions import max_pool_transpose, scaled_uniform_
from ..core.nudging import ClampNudge, Cost, EPNudge
from ..core.relaxation import RelaxResult, Solver, SolverSettings, even_odd_groups, get_solver, register_solver
from ..errors import ConfigError
from ..settings import Section, check_choice, register_section, setting
from .base import image_input, layer_gains, register_model

__all__ = [
    "PCLayer",
    "PC_LAYERS",
    "register_pc_layer",
    "SkipConnection",
    "PredictiveCodingNetwork",
    "pc_vgg",
    "vgg5",
    "vgg10",
    "vgg10_skip",
    "FAN_MODES",
    "VGG5_CHANNELS",
    "VGG5_POOLS",
    "VGG10_CHANNELS",
    "VGG10_POOLS",
    "VGG10_HIDDEN",
    "VGG10_SKIPS",
    "ModPGDSolver",
    "ModPGDAutogradSolver",
    "PGDSolver",
    "PGDAutogradSolver",
]

FAN_MODES = ("fan_in", "fan_out")
# Table 5 (VGG5) and Table 6 (VGG10): conv widths and which convs are followed by a 2x2 max-pool
VGG5_CHANNELS, VGG5_POOLS = (128, 256, 512, 512, 512), (False, True, True, True, True)
VGG10_CHANNELS = (64, 128, 256, 256, 512, 512, 512, 512)
VGG10_POOLS = (True, True, False, True, False, True, False, True)
VGG10_HIDDEN = (2048,)
VGG10_SKIPS = ((2, 5), (5, 8))  # section 5.5: strided 1x1 conv skips from layer 2 to 5 and from 5 to 8


def _fan(weight: Tensor, mode: str) -> int:
    """Eq. (21)'s fan of a weight (C_out, C_in, kh, kw) or (n_out, n_in): fan_in = C_in kh kw, fan_out = C_out kh kw;
    dense weights always use fan_in = n_in (appendix B.2)."""
    if mode not in FAN_MODES:
        raise ValueError(f"unknown fan mode {mode!r}; valid modes are {list(FAN_MODES)}")
    if weight.dim() == 2 or mode == "fan_in":
        return weight[0].numel()
    return weight.shape[0] * weight[0, 0].numel()


class PCLayer(nn.Module):
    """One prediction f_k(h_{k-1}) = act(pre(h_{k-1})); ``pre`` gives the pre-activation a_k.

    For the relaxation's explicit messages, ``pre_ctx`` also returns what ``message`` needs (pooling indices) and
    ``message`` gives the top-down message J^T m of a masked error m = act'(a) * eps; the defaults use ``pre`` and
    autograd, so a new prediction type only has to define ``pre``."""

    relu: bool = True
    weight: nn.Parameter
    bias: nn.Parameter

    def pre(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def act(self, z: Tensor) -> Tensor:
        return F.relu(z) if self.relu else z

    def forward(self, h: Tensor) -> Tensor:
        return self.act(self.pre(h))

    def pre_ctx(self, h: Tensor) -> tuple[Tensor, Any]:
        """a = pre(h) and the context :meth:`message` reuses while h is unchanged."""
        return self.pre(h), h

    def message(self, ctx: Any, m: Tensor) -> Tensor:
        """(d pre / dh)^T m: the top-down message of a masked error m (autograd by default; ``ctx`` = h)."""
        with torch.enable_grad():
            hh = ctx.detach().requires_grad_(True)
            (out,) = torch.autograd.grad(self.pre(hh), hh, grad_outputs=m)
        return out

    def masked(self, z: Tensor, g: Tensor) -> Tensor:
        """act'(z) * g: ReLU'(z), 0 at z = 0 as in autograd."""
        return g * (z > 0) if self.relu else g

    def reset_parameters(self, gain: float, fan: str = "fan_in") -> None:
        """Eq. (21): weights U(-c, c), c = gain sqrt(1/fan). The paper does not state the bias init; we keep
        PyTorch's default for its layers, U(+-1/sqrt(fan_in)) (zero biases put whole regions of units exactly at
        the ReLU kink, where the forward pass is not differentiable)."""
        scaled_uniform_(self.weight, gain, _fan(self.weight, fan))
        scaled_uniform_(self.bias, 1.0, self.weight[0].numel())


class _Conv(PCLayer):
    def __init__(self, c_in: int, c_out: int, pool: bool, relu: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in, 3, 3))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.pool, self.relu = pool, relu

    def pre(self, h: Tensor) -> Tensor:
        z = F.conv2d(h, self.weight, self.bias, padding=1)
        return F.max_pool2d(z, 2) if self.pool else z

    def pre_ctx(self, h: Tensor) -> tuple[Tensor, Any]:
        z = F.conv2d(h, self.weight, self.bias, padding=1)
        if not self.pool:
            return z, None
        pooled, idx = F.max_pool2d(z, 2, return_indices=True)
        return pooled, (idx, z)

    def message(self, ctx: Any, m: Tensor) -> Tensor:
        if self.pool:  # unpool to the argmax of each window (max-pool's backward kernel)
            idx, conv = ctx
            m = max_pool_transpose(m, conv, idx, 2)
        return F.conv_transpose2d(m, self.weight, padding=1)


class _Linear(PCLayer):
    def __init__(self, n_in: int, n_out: int, relu: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.relu = relu

    def pre(self, h: Tensor) -> Tensor:
        return F.linear(h.flatten(1), self.weight, self.bias)

    def pre_ctx(self, h: Tensor) -> tuple[Tensor, Any]:
        return self.pre(h), h.shape

    def message(self, ctx: Any, m: Tensor) -> Tensor:
        return (m @ self.weight).view(ctx)


PC_LAYERS: dict[str, Callable[..., PCLayer]] = {}


def register_pc_layer(name: str, factory: Callable[..., PCLayer]) -> None:
    """Register a prediction type: ``factory(n_in, n_out)`` returns a :class:`PCLayer`."""
    PC_LAYERS[name] = factory


register_pc_layer("conv_pool_relu", lambda c_in, c_out: _Conv(c_in, c_out, pool=True))
register_pc_layer("conv_relu", lambda c_in, c_out: _Conv(c_in, c_out, pool=False))
register_pc_layer("linear_relu", lambda n_in, n_out: _Linear(n_in, n_out, relu=True))
register_pc_layer("linear", lambda n_in, n_out: _Linear(n_in, n_out, relu=False))


class SkipConnection(nn.Module):
    """A skip j -> k: a strided 1x1 convolution S (no bias) of h_j added to layer k's pre-activation a_k, so
    eps_k = h_k - ReLU(a_k + S h_j) (section 5.5). The stride maps h_j's resolution onto a_k's."""

    def __init__(self, source: int, target: int, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        if not 0 <= source < target - 1:
            raise ValueError(f"a skip connection goes from a layer j to a layer k >= j + 2, got {source} -> {target}")
        self.source, self.target, self.stride = source, target, stride
        self.weight = nn.Parameter(torch.empty(c_out, c_in, 1, 1))

    def forward(self, h: Tensor) -> Tensor:
        return F.conv2d(h, self.weight, stride=self.stride)

    def message(self, m: Tensor, shape: torch.Size) -> Tensor:
        """S^T m, shaped as h_j (the transposed strided convolution)."""
        pad = shape[-1] - ((m.shape[-1] - 1) * self.stride + 1)
        return F.conv_transpose2d(m, self.weight, stride=self.stride, output_padding=pad)

    def reset_parameters(self, gain: float, fan: str = "fan_in") -> None:
        scaled_uniform_(self.weight, gain, _fan(self.weight, fan))


class PredictiveCodingNetwork(nn.Module):
    """A stack of predictions f_1..f_L plus skip connections; states are lists [h_0 = x, h_1, ..., h_L]."""

    exact_free_phase = True  # the forward pass is the free equilibrium (a beta = 0 phase stays there)

    def __init__(
        self,
        predictions: Sequence[PCLayer],
        num_classes: int,
        input_shape: tuple[int, ...] | None = None,
        skips: Sequence[SkipConnection] = (),
    ) -> None:
        super().__init__()
        self.predictions = cast("Sequence[PCLayer]", nn.ModuleList(predictions))  # typed as what it holds
        self.skips = cast("Sequence[SkipConnection]", nn.ModuleList(skips))
        self.num_classes = num_classes
        self._input_shape = input_shape
        L = len(predictions)
        for s in skips:
            if s.target > L:
                raise ValueError(f"skip {s.source} -> {s.target}: the network has layers 0..{L}")
            if s.target == L:
                raise ValueError(f"skip {s.source} -> {s.target}: the output layer is a matmul; skips end at a conv")
        self._skips_into: dict[int, list[SkipConnection]] = {k: [] for k in range(1, L + 1)}
        self._skips_from: dict[int, list[SkipConnection]] = {k: [] for k in range(L + 1)}
        for s in skips:
            self._skips_into[s.target].append(s)
            self._skips_from[s.source].append(s)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """Per-sample input shape (None where the network was built without one)."""
        return self._input_shape

    @property
    def depth(self) -> int:
        return len(self.predictions)

    @property
    def settling_iterations(self) -> int:
        """Nudged mod-PGD iterations from the forward pass after which, with the ReLU masks and pooling indices
        fixed (beta -> 0), the errors are exactly -beta dC/da_k: the number of layers L (section 5.2)."""
        return self.depth

    def layer_parameters(self) -> list[list[nn.Parameter]]:
        """One parameter group per layer k = 1..L (for per-layer learning rates); a skip belongs to its target."""
        groups = [list(f.parameters()) for f in self.predictions]
        for s in self.skips:
            groups[s.target - 1].append(s.weight)
        return groups

    def preactivation(self, k: int, states: Sequence[Tensor]) -> Tensor:
        """a_k = pre_k(h_{k-1}) + sum of the skips into k."""
        a = self.predictions[k - 1].pre(states[k - 1])
        for s in self._skips_into[k]:
            a = a + s(states[s.source])
        return a

    def prediction(self, k: int, states: Sequence[Tensor]) -> Tensor:
        """f_k = act(a_k): what layer k predicts from the layers below."""
        return self.predictions[k - 1].act(self.preactivation(k, states))

    def forward_pass(self, x: Tensor) -> list[Tensor]:
        """The free equilibrium: h_k = f_k(h_{k-1}, skips), where E = 0 (eq. 9)."""
        states = [x]
        for k in range(1, self.depth + 1):
            states.append(self.prediction(k, states))
        return states

    def errors(self, states: Sequence[Tensor]) -> list[Tensor]:
        """Prediction errors eps_k = h_k - f_k, k = 1..L (eq. 12)."""
        return [states[k] - self.prediction(k, states) for k in range(1, self.depth + 1)]

    def energy(self, states: Sequence[Tensor]) -> Tensor:
        """E per sample (eq. 10): 1/2 sum_k ||eps_k||^2."""
        errors = self.errors(states)
        total = 0.5 * errors[0].flatten(1).pow(2).sum(1)
        for e in errors[1:]:
            total = total + 0.5 * e.flatten(1).pow(2).sum(1)
        return total

    def energy_param_grads(self, states: Sequence[Tensor]) -> list[Tensor]:
        """dE/dtheta (batch mean) at fixed states; local: each term of E involves one layer's theta."""
        states = [s.detach() for s in states]
        with torch.enable_grad():
            return list(torch.autograd.grad(self.energy(states).mean(), list(self.parameters())))

    def consumers(self, j: int) -> list[int]:
        """The layers whose prediction reads h_j (j + 1 and the targets of skips from j)."""
        return ([j + 1] if j < self.depth else []) + [s.target for s in self._skips_from[j]]

    def top_down(self, k: int, states: Sequence[Tensor]) -> Tensor:
        """Delta_k = -d(sum over consumers c of 1/2 ||eps_c||^2)/dh_k = eps_k - dE/dh_k, by autograd (the reference
        for the explicit messages)."""
        hs = [s.detach() for s in states]
        with torch.enable_grad():
            hs[k] = hs[k].requires_grad_(True)
            (grad,) = torch.autograd.grad(self.energy(hs).sum(), hs[k])
            eps_k = hs[k] - self.prediction(k, hs)
        return (eps_k - grad).detach()

    def free_phase(self, x: Tensor, solver: Any = None, iterations: int = 0, init: str = "zeros") -> RelaxResult:
        """The free equilibrium is the forward pass (E = 0): no iterations, whatever the solver."""
        with torch.no_grad():
            return RelaxResult(self.forward_pass(x), 0)

    def relax_nudged(
        self,
        states: Sequence[Tensor],
        cost: Cost,
        y: Tensor,
        beta: float,
        iterations: int,
        first: str = "even",
        engine: str = "messages",
        solver: str = "mod-pgd",
    ) -> list[Tensor]:
        """K asynchronous iterations of the ``mod-pgd`` (or ``pgd``) solver from ``states``, nudged by beta (the
        functional form of :class:`ModPGDSolver`; ``engine="autograd"`` is its autograd reference)."""
        if engine not in ("messages", "autograd"):
            raise ValueError(f"unknown engine {engine!r}; valid engines are ['autograd', 'messages']")
        if solver not in ("mod-pgd", "pgd"):
            raise ValueError(f"unknown PCN solver {solver!r}; valid solvers are ['mod-pgd', 'pgd']")
        name = solver if engine == "messages" else f"{solver}-autograd"
        relax = get_solver(name, SolverSettings(first=first))
        return relax(self, list(states), iterations, EPNudge(cost, y, beta)).states


@register_solver("mod-pgd", reference="mod-pgd-autograd")
class ModPGDSolver(Solver):
    """The PCN's nudged relaxation, mod-PGD (eq. 20): h_k <- ReLU(a_k + Delta_k); the output h_L <- a_L -
    beta dC/dh_L(h_L, y) (eq. 18) or, clamped, (1 - beta) h_L^0 + beta y (eq. 8). Even then odd layers (or the
    reverse, ``first``; all at once for the synchronous schedule), step size 1.

    The explicit-message form keeps each layer's pre-activation a_k (and its pooling indices) until one of its
    inputs changes and sends the top-down messages through ``message``: one convolution and one transposed
    convolution per layer (and skip) and iteration."""

    engine = "messages"
    projected_prediction = False  # PGD (eq. 19) adds Delta_k to ReLU(a_k) instead of a_k

    def __call__(self, network, states, iterations, nudge=None, record=False):
        s = self.settings
        if s.tol is not None or s.dtype is not None or s.channels_last or record:
            raise ValueError(
                f"the {self.name} solver runs a fixed number of iterations in the parameters' dtype: "
                "tol, dtype, channels_last and record are not supported"
            )
        if not isinstance(nudge, (EPNudge, ClampNudge)):
            raise ValueError(
                f"the {self.name} solver relaxes EP-nudged (EPNudge) or clamped (ClampNudge) phases, got {nudge!r}"
            )
        states = [t.detach().clone() for t in states]
        L = network.depth
        if isinstance(nudge, ClampNudge):  # eq. (8): the output is held; only the hidden layers are relaxed
            states[L] = nudge.target.to(states[L].dtype).view_as(states[L]).clone()
        order = even_odd_groups(range(1, L if isinstance(nudge, ClampNudge) else L + 1), s.schedule, s.first)
        preds = network.predictions
        z: list[Any] = [None] * (L + 1)
        ctx: list[Any] = [None] * (L + 1)
        explicit = self.engine == "messages"

        def refresh(k: int) -> None:  # a_k at the current inputs of layer k
            z[k], ctx[k] = preds[k - 1].pre_ctx(states[k - 1])
            for sk in network._skips_into[k]:
                z[k] = z[k] + sk(states[sk.source])

        def masked_error(c: int) -> Tensor:  # act'(a_c) * eps_c, what layer c sends down to its inputs
            g = preds[c - 1]
            return g.masked(z[c], states[c] - g.act(z[c]))

        def delta(j: int) -> Tensor:  # the explicit top-down message into hidden layer j: from j + 1 and skips
            total = preds[j].message(ctx[j + 1], masked_error(j + 1))
            for sk in network._skips_from[j]:
                total = total + sk.message(masked_error(sk.target), states[j].shape)
            return total

        with torch.no_grad():
            if explicit:
                for k in range(1, L + 1):
                    refresh(k)
            for _ in range(iterations):
                for group in order:
                    new = {}
                    for k in group:
                        f = preds[k - 1]
                        zk = z[k] if explicit else network.preactivation(k, states)
                        if k == L:  # eq. (18), explicit in h_L (never reached when the output is clamped)
                            ep = cast(EPNudge, nudge)
                            out = f.act(zk)
                            if ep.beta != 0.0:
                                out = out - ep.beta * ep.cost.grad(states[L], ep.y.to(out.dtype))
                            new[k] = out
                            continue
                        d = delta(k) if explicit else network.top_down(k, states)
                        new[k] = f.act((f.act(zk) if self.projected_prediction else zk) + d)
                    for k, v in new.items():
                        states[k] = v
                    if explicit:
                        for k in sorted({c for j in group for c in network.consumers(j)}):
                            refresh(k)
        return RelaxResult(states, iterations)


@register_solver("mod-pgd-autograd")
class ModPGDAutogradSolver(ModPGDSolver):
    """:class:`ModPGDSolver` with the pre-activations and top-down errors recomputed by autograd (reference)."""

    engine = "autograd"


@register_solver("pgd", reference="pgd-autograd")
class PGDSolver(ModPGDSolver):
    """Projected gradient descent with step 1 (eq. 19): h_k <- ReLU(ReLU(a_k) + Delta_k); differs from mod-PGD
    only where a_k < 0 and Delta_k > 0 (the paper's Figure 6)."""

    projected_prediction = True


@register_solver("pgd-autograd")
class PGDAutogradSolver(PGDSolver):
    """:class:`PGDSolver` with autograd top-down errors (reference)."""

    engine = "autograd"


def pc_vgg(
    in_channels: int,
    num_classes: int,
    input_size: int,
    channels: Sequence[int],
    hidden: Sequence[int] = (),
    pool_every: int = 1,
    gains: float | Sequence[float] = 1.0,
    pools: Sequence[bool] | None = None,
    skips: Sequence[Sequence[int]] = (),
    fan: str = "fan_in",
) -> PredictiveCodingNetwork:
    """VGG-style PCN: conv3x3 predictions (a 2x2 max-pool after those marked in ``pools``, default every
    ``pool_every``-th), ``linear_relu`` for each width in ``hidden``, then a ``linear`` top layer; ``skips`` lists
    (j, k) pairs, each a strided 1x1 conv skip from layer j to the conv layer k. Weights by eq. (21) with ``fan``
    ("fan_in" or "fan_out" for the convolutions) and one gain per prediction (one value: all)."""
    if pools is None:
        pools = [(i + 1) % pool_every == 0 for i in range(len(channels))]
    pools = [bool(p) for p in pools]
    if len(pools) != len(channels):
        raise ValueError(f"pools must mark each of the {len(channels)} conv layers, got {len(pools)} entries")
    if input_size % (2 ** sum(pools)):
        raise ValueError(f"input_size={input_size} must be divisible by 2**{sum(pools)} (one 2x2 max-pool per pool)")
    alphas = layer_gains(gains, len(channels) + len(hidden) + 1, "pc_vgg")
    layers: list[PCLayer] = []
    shapes = [(in_channels, input_size)]  # (channels, size) of each conv-stage state h_0..h_n
    c, size = in_channels, input_size
    for width, pool in zip(channels, pools):
        layers.append(PC_LAYERS["conv_pool_relu" if pool else "conv_relu"](c, width))
        c, size = width, size // 2 if pool else size
        shapes.append((c, size))
    n_in = c * size * size
    for width in hidden:
        layers.append(PC_LAYERS["linear_relu"](n_in, width))
        n_in = width
    layers.append(PC_LAYERS["linear"](n_in, num_classes))
    for layer, gain in zip(layers, alphas):
        layer.reset_parameters(gain, fan)
    connections = []
    for pair in skips:
        j, k = (int(v) for v in pair)
        if not (0 <= j and j + 2 <= k <= len(channels)):
            raise ValueError(
                f"skip ({j}, {k}): skips go from a layer j >= 0 to a conv layer k in [j + 2, {len(channels)}]"
            )
        (c_j, s_j), (c_k, s_k) = shapes[j], shapes[k]
        if s_j % s_k:
            raise ValueError(f"skip ({j}, {k}): layer {j} is {s_j}x{s_j}, not a multiple of layer {k}'s {s_k}x{s_k}")
        conn = SkipConnection(j, k, c_j, c_k, s_j // s_k)
        conn.reset_parameters(1.0, fan)
        connections.append(conn)
    return PredictiveCodingNetwork(layers, num_classes, (in_channels, input_size, input_size), connections)


def vgg5(in_channels: int, num_classes: int, output_gain: float = 1.0) -> PredictiveCodingNetwork:
    """VGG5 (Table 5) on 32x32 inputs: conv 128, conv 256 + pool, conv 512 + pool, 512 + pool, 512 + pool, dense;
    fan_in init (eq. 21), gain 1 (``output_gain`` 0.2 for ImageNet32 with the MSE)."""
    gains = [1.0] * len(VGG5_CHANNELS) + [output_gain]
    return pc_vgg(in_channels, num_classes, 32, VGG5_CHANNELS, pools=VGG5_POOLS, gains=gains, fan="fan_in")


def vgg10(
    num_classes: int = 1000, input_size: int = 224, skips: Sequence[Sequence[int]] = ()
) -> PredictiveCodingNetwork:
    """VGG10 (Table 6): eight convs (64+p, 128+p, 256, 256+p, 512, 512+p, 512, 512+p), dense 2048, dense out;
    fan_out init for the convolutions (eq. 21)."""
    return pc_vgg(
        3, num_classes, input_size, VGG10_CHANNELS, VGG10_HIDDEN, pools=VGG10_POOLS, skips=skips, fan="fan_out"
    )


def vgg10_skip(num_classes: int = 1000, input_size: int = 224) -> PredictiveCodingNetwork:
    """VGG10Skip (section 5.5): VGG10 plus strided 1x1 conv skips from layer 2 to 5 and from 5 to 8."""
    return vgg10(num_classes, input_size, VGG10_SKIPS)


@dataclass
class PCNSection(Section):
    """The ``pcn`` section: the predictive-coding networks' pooling, skip connections and init fan (sizes are
    ``channels`` and ``hidden``)."""

    name: ClassVar[str] = "pcn"
    moved_from: ClassVar[tuple[str, ...]] = ("model",)
    pool_every: int = setting(1, "pcn: a 2x2 max-pool after every n-th conv prediction (when pools is null)")
    pools: list[bool] | None = setting(None, "pcn: per conv prediction, whether a 2x2 max-pool follows it")
    skips: list[list[int]] = setting([], "pcn: skip connections [j, k]: a strided 1x1 conv of h_j into layer k")
    fan: str = setting("fan_in", "pcn: the fan of eq. 21 for conv weights: fan_in (VGG5) or fan_out (VGG10)")

    def validate(self) -> None:
        self.at_least(1, "pool_every")
        self.fan = check_choice("fan", self.fan, list(FAN_MODES))
        if any(len(p) != 2 for p in self.skips):
            raise ConfigError(f"config key 'skips' lists [from, to] layer pairs, got {self.skips}")

    def check_config(self, cfg: Any) -> None:
        channels = cfg.model.channels
        if self.pools is not None and len(self.pools) != len(channels):
            raise ConfigError(
                f"config key 'pools' marks each conv layer: expected {len(channels)} entries (one per "
                f"channels entry), got {len(self.pools)}"
            )


register_section(PCNSection, "model=pcn")


def _build_pcn(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> PredictiveCodingNetwork:
    c, _, size = image_input("pcn", input_shape)
    try:
        return pc_vgg(
            c, num_classes, size, cfg.channels, cfg.hidden, cfg.pool_every, cfg.gains, cfg.pools, cfg.skips, cfg.fan
        )
    except ValueError as exc:
        raise ConfigError(f"model=pcn: {exc}") from None


register_model(
    "pcn",
    _build_pcn,
    "pcn",
    solver="mod-pgd",
    description="VGG-style predictive-coding net (channels, pools, hidden, skips, fan, gains)",
    defaults={"algorithm": "PC-CEP", "gains": [1.0], "lrs": [0.03]},  # digits: 6.9% test error after 3 epochs
)
