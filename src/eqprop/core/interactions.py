"""Interactions: the energy terms of the primitive function Phi (paper eqs. 19, 97).

Each interaction couples a ``pre`` layer to a ``post`` layer (or, for a bias, touches ``post`` only) and
contributes a term phi(pre, post) = post . P(A pre) to Phi, where A is linear (a convolution, a matrix) and
P an optional pooling. For the relaxation it provides explicit *messages*:

- ``forward(pre)`` returns dphi/dpost = P(A pre) plus a context that stays valid while ``pre`` is unchanged
  (for convolution + max-pooling: the pooling indices of ``w * pre``);
- ``backward(post, ctx)`` returns dphi/dpre = A^T P^T(post) using that context, so each interaction costs one
  convolution and one transposed convolution per (half-)iteration, never a second convolution.

Both are compositions of four parts, ``linear`` (A), ``linear_t`` (A^T), ``pool`` (P, with its context) and
``unpool`` (P^T), which the deviation mode of the relaxation uses separately. ``phi`` itself is written with
ordinary differentiable ops and is the autograd reference used in tests. Register a new energy term with
:func:`register_interaction`; overriding ``forward``/``backward`` alone is enough for the default relaxation.

Complex states (holomorphic EP): parameters stay real and :func:`real_linear` applies a real linear map to the
real and imaginary parts in one call. A term is ``holomorphic`` when its messages extend to complex states:
dense and convolution terms do, max-pooling does not (``pooling="softmax"`` is the holomorphic pooling of the
holomorphic-EP paper: sum_i z_i e^{z_i/T} / sum_i e^{z_i/T} over each window).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels import compiled, runs_fused

__all__ = [
    "Interaction",
    "Dense",
    "ConvPool",
    "Bias",
    "INTERACTIONS",
    "register_interaction",
    "scaled_uniform_",
    "max_pool_transpose",
    "real_linear",
    "softmax_pool",
    "POOLINGS",
]

POOLINGS = ("max", "softmax")

INTERACTIONS: dict[str, type[Interaction]] = {}


def register_interaction(name: str) -> Callable[[type[Interaction]], type[Interaction]]:
    """Class decorator registering an interaction type under ``name``."""

    def deco(cls: type[Interaction]) -> type[Interaction]:
        INTERACTIONS[name] = cls
        cls.kind = name
        return cls

    return deco


def scaled_uniform_(weight: Tensor, gain: float, fan: int) -> Tensor:
    """In place U(-c, c) with c = gain * sqrt(1 / fan): the gain-scaled init of eq. (102) (``fan`` = fan-in, or
    the fan-out where a paper asks for it). Every weight of the library is drawn by this one function."""
    if fan < 1:
        raise ValueError(f"fan must be >= 1, got {fan}")
    c = gain * math.sqrt(1.0 / fan)
    with torch.no_grad():
        return weight.uniform_(-c, c)


def max_pool_transpose(post: Tensor, pre_pool: Tensor, indices: Tensor, size: int) -> Tensor:
    """P^T: each value of ``post`` goes to the argmax of its (non-overlapping) ``size`` x ``size`` window of
    ``pre_pool``, zeros elsewhere. Max-pool's own backward kernel does exactly that and, unlike max_unpool2d, has
    channels-last CUDA kernels, so a channels-last relaxation never converts layouts here."""
    k = [size, size]
    return torch.ops.aten.max_pool2d_with_indices_backward(post, pre_pool, k, k, [0, 0], [1, 1], False, indices)


def _per_sample_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1)


def real_linear(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``fn`` (a real linear map: a convolution, a matrix product with real weights) applied to ``x``; for a
    complex ``x``, to its real and imaginary parts stacked along the batch, in one call."""
    if not x.is_complex():
        return fn(x)
    y = fn(torch.cat((x.real, x.imag), 0))
    re, im = y.chunk(2, 0)
    return torch.complex(re, im)


def _windows(z: Tensor, size: int) -> Tensor:
    """(B, C, H, W) -> (B, C, H/size, W/size, size*size): the non-overlapping pooling windows of ``z``."""
    b, c, h, w = z.shape
    return (
        z.view(b, c, h // size, size, w // size, size).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h // size, w // size, -1)
    )


def _softmax_weights(win: Tensor, temperature: float) -> Tensor:
    """softmax(win / T) over the last axis; complex windows are shifted by their largest real part (the
    shift cancels), so the exponentials stay bounded."""
    a = win / temperature
    shift = (a.real if a.is_complex() else a).amax(-1, keepdim=True).detach()
    e = torch.exp(a - shift)
    return e / e.sum(-1, keepdim=True)


def softmax_pool(z: Tensor, size: int, temperature: float = 1.0) -> Tensor:
    """Softmax pooling sum_i z_i e^{z_i/T} / sum_i e^{z_i/T} over non-overlapping ``size`` x ``size`` windows:
    a smooth, holomorphic stand-in for max-pooling (T -> 0) used by the holomorphic-EP paper's networks."""
    win = _windows(z, size)
    return (win * _softmax_weights(win, temperature)).sum(-1)


def _softmax_pool_transpose(post: Tensor, win: Tensor, weights: Tensor, size: int, temperature: float) -> Tensor:
    """J^T post, J the Jacobian of softmax pooling at the windows ``win``: d out / d z_i = w_i (1 + (z_i - out)/T)."""
    out = (win * weights).sum(-1, keepdim=True)
    g = post.unsqueeze(-1) * weights * (1.0 + (win - out) / temperature)
    b, c, h, w, _ = g.shape
    return g.view(b, c, h, w, size, size).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h * size, w * size)


class Interaction(nn.Module):
    """Base class of an energy term phi(pre, post) of Phi; subclasses implement the four methods below."""

    kind = "interaction"
    holomorphic = True  # the messages extend to complex states (holomorphic EP); False for max-pooling

    def __init__(self, pre: int | None, post: int) -> None:
        super().__init__()
        self.pre = pre
        self.post = post

    @property
    def fan_in(self) -> int | None:
        """Inputs per unit of the post layer that this term's weights read (None for a term without weights)."""
        return None

    def relaxation_params(self, dtype: torch.dtype | None = None) -> tuple[Tensor, ...]:
        """Parameters as used by the relaxation, cast to ``dtype`` (differentiable cast, no copy if same)."""
        return tuple(p if dtype is None or p.dtype == dtype else p.to(dtype) for p in self.parameters(recurse=False))

    def phi(self, pre: Tensor | None, post: Tensor) -> Tensor:
        """Per-sample value of this term of Phi (shape: batch)."""
        raise NotImplementedError

    def linear(self, pre: Tensor | None, params: tuple[Tensor, ...]) -> Tensor:
        """The linear part A pre (before pooling)."""
        raise NotImplementedError(f"{type(self).__name__} does not split its messages into linear and pooling parts")

    def linear_t(self, u: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        """The transposed linear part A^T u."""
        raise NotImplementedError(f"{type(self).__name__} does not split its messages into linear and pooling parts")

    def pool(self, z: Tensor) -> tuple[Tensor, Any]:
        """The pooling P(z) and the context :meth:`unpool` needs (identity by default)."""
        return z, None

    def unpool(self, post: Tensor, ctx: Any) -> Tensor:
        """The transposed pooling P^T post at the pooling context ``ctx`` (identity by default)."""
        return post

    def forward(self, pre: Tensor | None, params: tuple[Tensor, ...]) -> tuple[Tensor, Any]:
        """dphi/dpost and a context reused by :meth:`backward` while ``pre`` is unchanged."""
        return self.pool(self.linear(pre, params))

    def backward(self, post: Tensor, ctx: Any, params: tuple[Tensor, ...]) -> Tensor:
        """dphi/dpre given ``post`` and the context of the last :meth:`forward`."""
        return self.linear_t(self.unpool(post, ctx), params)

    def reset_parameters(self, gain: float) -> None:
        """Kaiming-uniform init rescaled by ``gain``: U(-c, c), c = gain * sqrt(1 / fan_in) (eq. 102)."""
        raise NotImplementedError


@register_interaction("dense")
class Dense(Interaction):
    """Dense term s_post^T W s_pre (eq. 19); ``weight`` has shape (post units, pre units) like nn.Linear."""

    def __init__(self, pre: int, post: int, pre_shape: tuple[int, ...], post_shape: tuple[int, ...], gain: float = 0.5):
        super().__init__(pre, post)
        self.pre_shape, self.post_shape = tuple(pre_shape), tuple(post_shape)
        self.weight = nn.Parameter(torch.empty(math.prod(post_shape), math.prod(pre_shape)))
        self.reset_parameters(gain)

    @property
    def fan_in(self) -> int:
        return self.weight.shape[1]

    def reset_parameters(self, gain: float) -> None:
        scaled_uniform_(self.weight, gain, self.fan_in)

    def phi(self, pre: Tensor | None, post: Tensor) -> Tensor:
        assert pre is not None
        return _per_sample_dot(real_linear(lambda t: t @ self.weight, post.flatten(1)), pre.flatten(1))

    def linear(self, pre, params):
        (w,) = params
        return real_linear(lambda t: t.flatten(1) @ w.t(), pre).view(pre.shape[0], *self.post_shape)

    def linear_t(self, u, params):
        (w,) = params
        return real_linear(lambda t: t.flatten(1) @ w, u).view(u.shape[0], *self.pre_shape)


@register_interaction("conv_pool")
class ConvPool(Interaction):
    """Convolution then pooling: s_post . P(w * s_pre) (eq. 19); ``pool=1`` means no pooling. ``pooling`` is
    ``"max"`` (the comparative study) or ``"softmax"`` at ``temperature`` (holomorphic, :func:`softmax_pool`)."""

    def __init__(
        self,
        pre: int,
        post: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: int = 1,
        pool: int = 2,
        gain: float = 0.5,
        pooling: str = "max",
        temperature: float = 1.0,
    ):
        super().__init__(pre, post)
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid poolings are {list(POOLINGS)}")
        if not temperature > 0:
            raise ValueError(f"the softmax pooling temperature must be > 0, got {temperature}")
        self.padding, self.pool_size = padding, pool
        self.pooling, self.temperature = pooling, float(temperature)
        self.holomorphic = pool == 1 or pooling == "softmax"
        self.fused = False  # set_fused_kernels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.reset_parameters(gain)

    @property
    def fan_in(self) -> int:
        return self.weight[0].numel()

    def reset_parameters(self, gain: float) -> None:
        scaled_uniform_(self.weight, gain, self.fan_in)

    def _pooled(self, pre: Tensor, w: Tensor) -> Tensor:
        z = self.linear(pre, (w,))
        if self.pool_size == 1:
            return z
        if self.pooling == "softmax":
            return softmax_pool(z, self.pool_size, self.temperature)
        return F.max_pool2d(z, self.pool_size)

    def phi(self, pre: Tensor | None, post: Tensor) -> Tensor:
        assert pre is not None
        return _per_sample_dot(post, self._pooled(pre, self.weight))

    def linear(self, pre, params):
        (w,) = params
        return real_linear(lambda t: F.conv2d(t, w, padding=self.padding), pre)

    def linear_t(self, u, params):
        (w,) = params
        return real_linear(lambda t: F.conv_transpose2d(t, w, padding=self.padding), u)

    def pool(self, z):
        if self.pool_size == 1:
            return z, None
        if self.pooling == "softmax":
            win = _windows(z, self.pool_size)
            weights = _softmax_weights(win, self.temperature)
            return (win * weights).sum(-1), ("softmax", win, weights)
        if z.is_complex():
            raise ValueError("max-pooling has no complex (holomorphic) form; use pooling='softmax'")
        if (
            self.fused
            and runs_fused(z)
            and not torch.is_grad_enabled()
            and self.pool_size == 2
            and z.shape[-1] % 2 == 0
            and z.shape[-2] % 2 == 0
        ):
            pooled, code = compiled("pool")(z)
            return pooled, (code,)
        pooled, idx = F.max_pool2d(z, self.pool_size, return_indices=True)
        return pooled, (idx, z)

    def unpool(self, post, ctx):
        if self.pool_size == 1:
            return post
        if isinstance(ctx[0], str):  # ("softmax", windows, weights)
            return _softmax_pool_transpose(post, ctx[1], ctx[2], self.pool_size, self.temperature)
        if len(ctx) == 1:  # the fused kernels' int8 code
            return compiled("unpool")(post, ctx[0])
        idx, z = ctx
        return max_pool_transpose(post, z, idx, self.pool_size)


@register_interaction("bias")
class Bias(Interaction):
    """Bias term b^T s_post (eq. 19); one value per channel for image-shaped layers, per unit otherwise."""

    def __init__(self, post: int, post_shape: tuple[int, ...]):
        super().__init__(None, post)
        self.post_shape = tuple(post_shape)
        self.bias = nn.Parameter(torch.zeros(self.post_shape[0]))

    def reset_parameters(self, gain: float) -> None:
        with torch.no_grad():
            self.bias.zero_()

    def _broadcast(self, b: Tensor) -> Tensor:
        return b.view(1, -1, *([1] * (len(self.post_shape) - 1)))

    def phi(self, pre: Tensor | None, post: Tensor) -> Tensor:
        return _per_sample_dot(post, self._broadcast(self.bias).expand_as(post))

    def linear(self, pre, params):
        (b,) = params
        return self._broadcast(b)

    def linear_t(self, u, params):
        raise RuntimeError("a bias has no pre layer")
