"""Data-parallel training over processes with ``torch.distributed``, as ``torchrun`` launches them.

Every rank holds the whole model and draws the same shuffling and augmentation from the run's seed; each global
batch of B samples is cut into contiguous shards, one per rank, so rank r relaxes samples
[r B / N, (r + 1) B / N). After the learning rule has written its estimate (EP, CpL, CL, TBP/RBP/BPTT, PC,
RHEL: all are batch means in ``p.grad``), :func:`average_gradients` weights each rank's estimate by its shard
size and sums them with one ``all_reduce``: the result is the mean over the global batch, so a run on N ranks
follows the one-process run with batch B up to the order of float sums. Metrics and evaluation are sums
reduced the same way. Only rank 0 writes the run directory. NCCL on GPUs, gloo on CPU; collectives time out
after ``dist_timeout`` seconds, so a rank that dies makes the others fail instead of hanging: each survivor ends
with one :class:`~eqprop.errors.RunError` naming the rank it lost (the last checkpoint stays as it was).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import RunError

__all__ = [
    "Context",
    "setup",
    "finish",
    "exit_process",
    "context",
    "launched",
    "shard",
    "average_gradients",
    "all_sum",
    "any_rank",
    "broadcast_object",
    "broadcast_parameters",
]


@dataclass(frozen=True)
class Context:
    """This process's place among the ranks (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Whether this rank writes files and logs."""
        return self.rank == 0


def launched() -> bool:
    """Whether this process is one of several that torchrun (or a SLURM/srun wrapper setting its variables)
    started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "auto", timeout: float = 1800.0) -> Context:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT), once;
    a single process gets the one-rank context. GPUs use NCCL, the CPU gloo."""
    if not launched():
        return Context()
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and device != "cpu"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
    return context()


def finish(ctx: Context) -> None:
    """Leave the process group (after the last collective of a run)."""
    if ctx.enabled and dist.is_initialized():
        with _collective("the barrier at the end of the run", ctx):
            dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a torchrun rank with ``code`` once its work is written: flush and leave without interpreter finalization,
    where gloo's threads have aborted finished 2-rank CPU runs ("terminate called without an active exception",
    about 1 in 50 launches in CI). A single process returns and exits as usual."""
    if not launched():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def context() -> Context:
    """The current context (one rank unless :func:`setup` joined a group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shard(n: int, ctx: Context) -> slice:
    """This rank's contiguous part of a batch of ``n`` samples (sizes differ by at most one)."""
    return slice(n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world)


@contextlib.contextmanager
def _collective(what: str, ctx: Context) -> Iterator[None]:
    """A collective that fails because a peer is gone (its process died, its connection closed, or it stopped
    answering within ``dist_timeout``) as one RunError that names the lost rank, instead of gloo's or NCCL's
    traceback on every survivor."""
    try:
        yield
    except RuntimeError as exc:  # torch.distributed's DistError family, and the backends' plain RuntimeErrors
        others = [r for r in range(ctx.world) if r != ctx.rank]
        lost = f"rank {others[0]}" if len(others) == 1 else f"one of ranks {others}"
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise RunError(
            f"rank {ctx.rank} of {ctx.world}: lost {lost} during {what} ({reason[:200]}); the other ranks stop "
            "too. The run's last checkpoint is intact: see the lost rank's own error above, then resume the run"
        ) from None


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(values: Sequence[float], ctx: Context) -> list[float]:
    """Each value summed over the ranks (float64; returned unchanged on one rank)."""
    if not ctx.enabled:
        return list(values)
    with _collective("a sum over the ranks", ctx):
        t = torch.tensor(list(values), dtype=torch.float64, device=_device())
        dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, ctx: Context) -> bool:
    """Whether ``flag`` holds on any rank (a collective: every rank must call it at the same point)."""
    return bool(all_sum([float(flag)], ctx)[0] > 0)


def broadcast_object(obj: Any, ctx: Context) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    with _collective("a broadcast from rank 0", ctx):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_batch(tensors: Sequence[torch.Tensor], ctx: Context) -> list[torch.Tensor]:
    """Every rank's shard of batch-first ``tensors``, concatenated in rank order: the global batch, on every rank
    (a collective; returned unchanged on one rank). The inverse of :func:`shard_batch`."""
    if not ctx.enabled:
        return list(tensors)
    parts: list[Any] = [None] * ctx.world
    with _collective("gathering the batch", ctx):
        dist.all_gather_object(parts, [t.detach().cpu() for t in tensors])
    if len({len(p) for p in parts}) != 1:
        raise RuntimeError(f"ranks hold different numbers of batch tensors: {[len(p) for p in parts]}")
    return [torch.cat([p[i] for p in parts]).to(t.device) for i, t in enumerate(tensors)]


def shard_batch(tensors: Sequence[torch.Tensor], ctx: Context) -> list[torch.Tensor]:
    """This rank's rows of global-batch ``tensors`` (the shard :func:`shard` gives it)."""
    if not ctx.enabled or not tensors:
        return list(tensors)
    part = shard(tensors[0].shape[0], ctx)
    return [t[part] for t in tensors]


def broadcast_parameters(tensors: Iterable[torch.Tensor], ctx: Context) -> None:
    """Rank 0's values of ``tensors`` (parameters and buffers) on every rank."""
    if ctx.enabled:
        with _collective("the broadcast of the parameters", ctx):
            for t in tensors:
                dist.broadcast(t.data, src=0)


def average_gradients(params: Sequence[torch.nn.Parameter], local: int, total: int, ctx: Context) -> None:
    """Replace each ``p.grad`` (this rank's batch mean over ``local`` samples) by the mean over all ``total``
    samples of the global batch: one all_reduce of the shard-weighted estimates. A parameter keeps
    ``grad=None`` only where no rank wrote one."""
    if not ctx.enabled:
        return
    weight = local / total
    flat = [
        (p.grad.detach() * weight).reshape(-1).float()
        if p.grad is not None
        else torch.zeros(p.numel(), device=p.device)
        for p in params
    ]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    buffer = torch.cat([*flat, has]).to(_device())
    with _collective("the gradient all_reduce", ctx):
        dist.all_reduce(buffer)
    buffer = buffer.to(params[0].device)
    offset = 0
    for p, written in zip(params, buffer[-len(params) :].tolist()):
        n = p.numel()
        p.grad = buffer[offset : offset + n].view_as(p).to(p.dtype).clone() if written > 0 else None
        offset += n
