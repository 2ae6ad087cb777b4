"""Fused GPU kernels for the relaxation, written as plain torch functions and compiled by torch.compile.

- ``max_pool2x2_code`` / ``max_unpool2x2_code``: 2x2 max-pooling that keeps an int8 window position instead
  of int64 indices (the transposed message then writes each output element once, in the states' layout);
- ``layer_update``: a layer's fixed-point update sigma(sum of messages) in one kernel.

The plain functions are the reference (tested against max_pool2d and its backward on the CPU);
:func:`set_fused_kernels` switches a network to their compiled form on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .layers import Activation

__all__ = [
    "max_pool2x2_code",
    "max_unpool2x2_code",
    "sum_messages",
    "layer_update",
    "compiled",
    "set_fused_kernels",
    "FUSED_DEVICE_TYPES",
    "runs_fused",
]

# The device types whose tensors take the compiled kernels. On the CPU the native kernels are as fast; add
# "cpu" to check the fused relaxation there (torch.compile's CPU backend needs a C++ compiler).
FUSED_DEVICE_TYPES: set[str] = {"cuda"}


def runs_fused(t: Tensor) -> bool:
    """Whether a tensor on this device takes the compiled kernels (:data:`FUSED_DEVICE_TYPES`)."""
    return t.device.type in FUSED_DEVICE_TYPES


def max_pool2x2_code(z: Tensor) -> tuple[Tensor, Tensor]:
    """2x2 max-pooling and, per window, the int8 position of its maximum (0..3, row-major; the first one wins a
    tie, as in max_pool2d). The plain-torch form of the fused kernel; ``z``'s height and width must be even."""
    a, b, c, d = z[:, :, 0::2, 0::2], z[:, :, 0::2, 1::2], z[:, :, 1::2, 0::2], z[:, :, 1::2, 1::2]
    m, code = a, torch.zeros_like(a, dtype=torch.int8)
    for j, v in ((1, b), (2, c), (3, d)):
        gt = v > m
        code = torch.where(gt, j, code)
        m = torch.where(gt, v, m)
    return m, code


def max_unpool2x2_code(post: Tensor, code: Tensor) -> Tensor:
    """The transposed 2x2 max-pooling: each value of ``post`` goes to its window's position ``code``.

    Written per output element (upsample ``post`` and ``code``, compare with the element's own position) in
    the memory order of ``post`` (NHWC for channels-last), so that torch.compile makes it one pointwise kernel
    with coalesced reads and writes."""
    cl = post.is_contiguous(memory_format=torch.channels_last) and not post.is_contiguous()
    if cl:  # work on the NHWC views: channels innermost, as stored
        post, code = post.permute(0, 2, 3, 1), code.permute(0, 2, 3, 1)
        b, h, w, c = post.shape
        up = lambda t: t[:, :, None, :, None, :].expand(b, h, 2, w, 2, c).reshape(b, 2 * h, 2 * w, c)  # noqa: E731
        rows, cols = torch.arange(2 * h, device=post.device) % 2, torch.arange(2 * w, device=post.device) % 2
        position = (2 * rows[:, None, None] + cols[None, :, None]).to(code.dtype)
    else:
        b, c, h, w = post.shape
        up = lambda t: t[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)  # noqa: E731
        rows, cols = torch.arange(2 * h, device=post.device) % 2, torch.arange(2 * w, device=post.device) % 2
        position = (2 * rows[:, None] + cols[None, :]).to(code.dtype)
    out = torch.where(up(code) == position, up(post), torch.zeros((), dtype=post.dtype, device=post.device))
    return out.permute(0, 3, 1, 2) if cl else out


def sum_messages(terms: Sequence[Tensor]) -> Tensor:
    """The sum of a layer's incoming messages (dPhi/ds_k), in order."""
    m = terms[0]
    for t in terms[1:]:
        m = m + t
    return m


def layer_update(project: Callable[[Tensor], Tensor], *terms: Tensor) -> Tensor:
    """sigma(sum of the messages): a layer's fixed-point update (eq. 98) as one expression to fuse."""
    return project(sum_messages(terms))


_COMPILED: dict[object, Callable] = {}


def compiled(name: str, activation: Activation | None = None) -> Callable:
    """``"pool"``, ``"unpool"`` or, for an ``activation``, ``"update"``, compiled by torch.compile into one
    kernel each (static shapes: one specialisation per layer shape and dtype), built on first use."""
    key = (name, None if activation is None else activation.name)
    if key not in _COMPILED:
        if name == "update":
            assert activation is not None
            project = activation.project

            def update(*terms: Tensor) -> Tensor:
                return layer_update(project, *terms)

            fn: Callable = update
        elif name == "pool":
            fn = max_pool2x2_code
        else:
            fn = max_unpool2x2_code
        config = torch._dynamo.config  # many layer shapes: allow more specialisations than the default 8
        limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, limit, max(getattr(config, limit), 256))
        _COMPILED[key] = torch.compile(fn, dynamic=False)
    return _COMPILED[key]


def set_fused_kernels(network: nn.Module, enabled: bool = True) -> None:
    """Relax ``network`` with torch.compile'd kernels on CUDA: 2x2 max-pooling and unpooling (every ConvPool)
    and each layer's update sigma(sum of messages).

    Pooling gives the same results as max_pool2d and its backward (ties included) but keeps an int8 code per
    window instead of int64 indices plus the pre-pooling tensor, so it moves far fewer bytes; the update adds
    its messages in fp32 registers and rounds once (16-bit states round after every add otherwise). The first
    call per shape and dtype compiles (seconds). CPU tensors keep the native kernels (see FUSED_DEVICE_TYPES).
    """
    network.fused_kernels = enabled  # type: ignore[assignment]  # a plain attribute, read by the solvers
    for module in network.modules():
        if hasattr(module, "fused"):
            module.fused = enabled  # type: ignore[assignment]
