"""Predictive-coding networks (PCN) trained by equilibrium propagation.

Energy E = 1/2 sum_k ||h_k - f_k(theta_k, h_{k-1})||^2 with h_0 = x, and total energy F = E + beta C(h_L, y).
Each prediction f_k is one of ``conv_pool_relu`` (ReLU o maxpool o conv3x3), ``conv_relu``, ``linear_relu`` or
``linear`` (the top layer), or a skip variant of the conv ones with a residual path (``conv_pool_skip_relu``,
``conv_skip_relu``). At beta = 0 the minimum of F is the forward pass (E = 0 and dF/dtheta = 0 there),
so only nudged phases are relaxed: asynchronous (even then odd layers) projected updates in pre-activation
form, h_k <- ReLU(z_k + Delta_k) with z_k the pre-activation of f_k(h_{k-1}) and Delta_k = J_{k+1}^T eps_{k+1}
the top-down error, and the output h_L <- a_L - beta dC/dh_L (exact for the squared error). Its fixed points
are stationary points of F on units whose prediction and state are both positive; elsewhere the state is
projected onto h >= 0 (the plain gradient form diverges on conv nets). To first order in beta the errors
eps_k follow backprop's recursion either way, so the EP estimates below converge to the gradient. The update is
local: dF/dtheta_k = -(eps_k * f_k') h_{k-1}^T with eps_k = h_k - f_k(h_{k-1}).

The nudged relaxation is the ``mod-pgd`` solver (:class:`ModPGDSolver`); the learning rules are in
:mod:`eqprop.rules.predictive_coding`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.interactions import max_pool_transpose, scaled_uniform_
from ..core.layers import get_activation
from ..core.nudging import Cost, EPNudge
from ..core.relaxation import RelaxResult, Solver, SolverSettings, even_odd_groups, get_solver, register_solver
from .base import image_input, register_model
from .hopfield import _gains

__all__ = [
    "PCLayer",
    "PC_LAYERS",
    "register_pc_layer",
    "PredictiveCodingNetwork",
    "pc_vgg",
    "ModPGDSolver",
    "ModPGDAutogradSolver",
]


class PCLayer(nn.Module):
    """One prediction f_k(h_{k-1}) = act(pre(h_{k-1})); ``pre`` gives the pre-activation z_k.

    For the relaxation's explicit messages, ``pre_ctx`` also returns what ``vjp`` needs (pooling indices) and
    ``vjp`` gives the top-down message J^T g; their defaults use ``pre`` and autograd, so a new prediction type
    only has to define ``pre``."""

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
        """z = pre(h) and the context :meth:`vjp` reuses while h is unchanged."""
        return self.pre(h), None

    def vjp(self, h: Tensor, z: Tensor, ctx: Any, g: Tensor) -> Tensor:
        """J^T g with J = d f(h) / dh (``z`` = pre(h)): the top-down message of a prediction error g."""
        with torch.enable_grad():
            hh = h.detach().requires_grad_(True)
            (out,) = torch.autograd.grad(self(hh), hh, grad_outputs=g)
        return out

    def _masked(self, z: Tensor, g: Tensor) -> Tensor:
        return g * (z > 0) if self.relu else g  # ReLU'(z), 0 at z = 0 as in autograd

    def reset_parameters(self, gain: float) -> None:
        """Uniform(-c, c) with c = gain / sqrt(fan_in), the scheme of eq. (102); biases zero."""
        scaled_uniform_(self.weight, gain, self.weight[0].numel())
        with torch.no_grad():
            self.bias.zero_()


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

    def vjp(self, h: Tensor, z: Tensor, ctx: Any, g: Tensor) -> Tensor:
        return self._conv_vjp(self._masked(z, g), ctx)

    def _conv_vjp(self, g: Tensor, ctx: Any) -> Tensor:
        if self.pool:  # unpool to the argmax of each window (max-pool's backward kernel)
            idx, conv = ctx
            g = max_pool_transpose(g, conv, idx, 2)
        return F.conv_transpose2d(g, self.weight, padding=1)


class _ConvSkip(_Conv):
    """The skip variant: f(h) = ReLU(P(conv3x3(h)) + A(S h)), a residual path around the convolution.

    P is the 2x2 max-pool when the layer pools, A the 2x2 average pool then (identity otherwise), and S the
    identity when the channel counts match, else a learned 1x1 convolution (no bias). The path is linear, so
    the top-down message and the local update keep their form: eps_k and h_{k-1} still give dF/dtheta_k."""

    def __init__(self, c_in: int, c_out: int, pool: bool) -> None:
        super().__init__(c_in, c_out, pool)
        self.shortcut = nn.Parameter(torch.empty(c_out, c_in, 1, 1)) if c_in != c_out else None

    def _skip(self, h: Tensor) -> Tensor:
        s = h if self.shortcut is None else F.conv2d(h, self.shortcut)
        return F.avg_pool2d(s, 2) if self.pool else s

    def pre(self, h: Tensor) -> Tensor:
        return super().pre(h) + self._skip(h)

    def pre_ctx(self, h: Tensor) -> tuple[Tensor, Any]:
        z, ctx = super().pre_ctx(h)
        return z + self._skip(h), ctx

    def vjp(self, h: Tensor, z: Tensor, ctx: Any, g: Tensor) -> Tensor:
        g = self._masked(z, g)
        s = g.repeat_interleave(2, -2).repeat_interleave(2, -1) / 4 if self.pool else g  # average pool's transpose
        if self.shortcut is not None:
            s = F.conv_transpose2d(s, self.shortcut)
        return self._conv_vjp(g, ctx) + s

    def reset_parameters(self, gain: float) -> None:
        """The convolution as in :meth:`PCLayer.reset_parameters`; the 1x1 shortcut Uniform(+-gain/sqrt(c_in))."""
        super().reset_parameters(gain)
        if self.shortcut is not None:
            scaled_uniform_(self.shortcut, gain, self.shortcut.shape[1])


class _Linear(PCLayer):
    def __init__(self, n_in: int, n_out: int, relu: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.relu = relu

    def pre(self, h: Tensor) -> Tensor:
        return F.linear(h.flatten(1), self.weight, self.bias)

    def vjp(self, h: Tensor, z: Tensor, ctx: Any, g: Tensor) -> Tensor:
        return (self._masked(z, g) @ self.weight).view_as(h)


PC_LAYERS: dict[str, Callable[..., PCLayer]] = {}


def register_pc_layer(name: str, factory: Callable[..., PCLayer]) -> None:
    """Register a prediction type: ``factory(n_in, n_out)`` returns a :class:`PCLayer`."""
    PC_LAYERS[name] = factory


register_pc_layer("conv_pool_relu", lambda c_in, c_out: _Conv(c_in, c_out, pool=True))
register_pc_layer("conv_relu", lambda c_in, c_out: _Conv(c_in, c_out, pool=False))
register_pc_layer("conv_pool_skip_relu", lambda c_in, c_out: _ConvSkip(c_in, c_out, pool=True))
register_pc_layer("conv_skip_relu", lambda c_in, c_out: _ConvSkip(c_in, c_out, pool=False))
register_pc_layer("linear_relu", lambda n_in, n_out: _Linear(n_in, n_out, relu=True))
register_pc_layer("linear", lambda n_in, n_out: _Linear(n_in, n_out, relu=False))


class PredictiveCodingNetwork(nn.Module):
    """A stack of predictions f_1..f_L; states are lists [h_0 = x, h_1, ..., h_L]."""

    exact_free_phase = True  # the forward pass is the free equilibrium (a beta = 0 phase stays there)

    def __init__(
        self, predictions: Sequence[PCLayer], num_classes: int, input_shape: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        self.predictions = cast("Sequence[PCLayer]", nn.ModuleList(predictions))  # typed as what it holds
        self.num_classes = num_classes
        self._input_shape = input_shape

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """Per-sample input shape (None where the network was built without one)."""
        return self._input_shape

    @property
    def depth(self) -> int:
        return len(self.predictions)

    def layer_parameters(self) -> list[list[nn.Parameter]]:
        """One parameter group per layer k = 1..L (for per-layer learning rates)."""
        return [list(f.parameters()) for f in self.predictions]

    def forward_pass(self, x: Tensor) -> list[Tensor]:
        """The free equilibrium: h_k = f_k(h_{k-1}), where E = 0."""
        states = [x]
        for f in self.predictions:
            states.append(f(states[-1]))
        return states

    def errors(self, states: Sequence[Tensor]) -> list[Tensor]:
        """Prediction errors eps_k = h_k - f_k(h_{k-1}), k = 1..L."""
        return [states[k] - f(states[k - 1]) for k, f in enumerate(self.predictions, start=1)]

    def energy(self, states: Sequence[Tensor]) -> Tensor:
        """E per sample (eq. of the PCN energy): 1/2 sum_k ||eps_k||^2."""
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

    def _top_down(self, k: int, states: Sequence[Tensor]) -> Tensor:
        """Delta_k = J_{k+1}^T eps_{k+1} = -dE_{k+1}/dh_k, by autograd (the reference for the explicit messages)."""
        f = self.predictions[k]
        return PCLayer.vjp(f, states[k], f.pre(states[k]), None, (states[k + 1] - f(states[k])).detach())

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
    ) -> list[Tensor]:
        """K asynchronous iterations of the ``mod-pgd`` solver from ``states``, nudged by beta (the functional
        form of :class:`ModPGDSolver`; ``engine="autograd"`` is its autograd reference)."""
        if engine not in ("messages", "autograd"):
            raise ValueError(f"unknown engine {engine!r}; valid engines are ['autograd', 'messages']")
        solver = get_solver("mod-pgd" if engine == "messages" else "mod-pgd-autograd", SolverSettings(first=first))
        return solver(self, list(states), iterations, EPNudge(cost, y, beta)).states


@register_solver("mod-pgd", reference="mod-pgd-autograd")
class ModPGDSolver(Solver):
    """The PCN's nudged relaxation: projected updates in pre-activation form, h_k <- ReLU(z_k + Delta_k) with
    Delta_k = J_{k+1}^T eps_{k+1}, and the output h_L <- a_L - beta dC/dh_L; even then odd layers (or the
    reverse, ``first``; all at once for the synchronous schedule), step size 1.

    The explicit-message form keeps each layer's pre-activation z_k = pre_k(h_{k-1}) (and its pooling indices)
    until h_{k-1} changes and sends the top-down message through ``vjp``: one convolution and one transposed
    convolution per layer and iteration."""

    engine = "messages"

    def __call__(self, network, states, iterations, nudge=None, record=False):
        s = self.settings
        if s.tol is not None or s.dtype is not None or s.channels_last or record:
            raise ValueError(
                f"the {self.name} solver runs a fixed number of iterations in the parameters' dtype: "
                "tol, dtype, channels_last and record are not supported"
            )
        if not isinstance(nudge, EPNudge):
            raise ValueError(f"the {self.name} solver relaxes EP-nudged phases (an EPNudge), got {nudge!r}")
        cost, y, beta = nudge.cost, nudge.y, nudge.beta
        states = [t.detach().clone() for t in states]
        L = network.depth
        order = even_odd_groups(range(1, L + 1), s.schedule, s.first)
        identity = get_activation("identity")
        preds = network.predictions
        z: list[Any] = [None] * (L + 1)
        ctx: list[Any] = [None] * (L + 1)
        explicit = self.engine == "messages"

        def refresh(k: int) -> None:  # f_k's pre-activation at the current h_{k-1}
            z[k], ctx[k] = preds[k - 1].pre_ctx(states[k - 1])

        with torch.no_grad():
            if explicit:
                for k in range(1, L + 1):
                    refresh(k)
            for _ in range(iterations):
                for group in order:
                    new = {}
                    for k in group:
                        f = preds[k - 1]
                        if not explicit:
                            zk = f.pre(states[k - 1])
                            delta = network._top_down(k, states) if k < L else None
                        else:
                            zk = z[k]
                            if k < L:
                                g = preds[k]
                                delta = g.vjp(states[k], z[k + 1], ctx[k + 1], states[k + 1] - g.act(z[k + 1]))
                        if k == L:
                            new[k] = cost.nudged_output(f.act(zk), states[k], y, beta, identity)
                        else:
                            new[k] = f.act(zk + delta)
                    for k, v in new.items():
                        states[k] = v
                    if explicit:
                        for k in group:
                            if k < L:
                                refresh(k + 1)
        return RelaxResult(states, iterations)


@register_solver("mod-pgd-autograd")
class ModPGDAutogradSolver(ModPGDSolver):
    """:class:`ModPGDSolver` with the pre-activations and top-down errors recomputed by autograd (reference)."""

    engine = "autograd"


def pc_vgg(
    in_channels: int,
    num_classes: int,
    input_size: int,
    channels: Sequence[int],
    hidden: Sequence[int] = (),
    pool_every: int = 1,
    gains: float | Sequence[float] = 0.5,
    skip: bool = False,
) -> PredictiveCodingNetwork:
    """VGG-style PCN: conv3x3 predictions (max-pool after every ``pool_every``-th), ``linear_relu`` for each
    width in ``hidden``, then a ``linear`` top layer. channels=(128, 256, 512, 512) is "VGG5". ``skip`` gives
    every conv prediction a residual path (``conv_skip_relu`` / ``conv_pool_skip_relu``)."""
    pools = sum(1 for i in range(len(channels)) if (i + 1) % pool_every == 0)
    if input_size % (2**pools):
        raise ValueError(
            f"input_size={input_size} must be divisible by 2**{pools} (one 2x2 pooling per {pool_every} conv layer(s))"
        )
    alphas = _gains(gains, len(channels) + len(hidden) + 1, "pc_vgg")
    layers: list[PCLayer] = []
    c, size = in_channels, input_size
    for i, width in enumerate(channels):
        pool = (i + 1) % pool_every == 0
        layers.append(PC_LAYERS[("conv_pool" if pool else "conv") + ("_skip_relu" if skip else "_relu")](c, width))
        c, size = width, size // 2 if pool else size
    n_in = c * size * size
    for width in hidden:
        layers.append(PC_LAYERS["linear_relu"](n_in, width))
        n_in = width
    layers.append(PC_LAYERS["linear"](n_in, num_classes))
    for layer, gain in zip(layers, alphas):
        layer.reset_parameters(gain)
    return PredictiveCodingNetwork(layers, num_classes, (in_channels, input_size, input_size))


def _build_pcn(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> PredictiveCodingNetwork:
    c, _, size = image_input("pcn", input_shape)
    return pc_vgg(c, num_classes, size, cfg.channels, cfg.hidden, cfg.pool_every, cfg.gains, skip=cfg.skip)


register_model(
    "pcn",
    _build_pcn,
    "pcn",
    solver="mod-pgd",
    description="VGG-style predictive-coding net (channels, hidden, pool_every, skip, gains)",
)
