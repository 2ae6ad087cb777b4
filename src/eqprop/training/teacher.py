"""Knowledge-distillation teachers: a feedforward conv net mirroring a VGG CRNN, trained by backprop.

The scalable-EP paper distils from a teacher's "intermediate logits at the last layer of each conv block". Here
the teacher has the student's block structure (conv3x3 + batch norm + ReLU, a 2x2 max-pool ending each block),
so its block-end logits -- the pooled, batch-normalised conv output before the ReLU -- have exactly the shape
of the student's block-end state and serve as KD targets without a projection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Augmentation, ImageData, epoch_batches

__all__ = ["ConvTeacher", "TeacherFeatures", "train_teacher", "load_or_train_teacher"]


class ConvTeacher(nn.Module):
    """Feedforward VGG with the student's ``blocks`` and ``fc`` widths; ``block_logits(x)`` gives the targets."""

    def __init__(
        self, in_channels: int, num_classes: int, input_size: int, blocks: Sequence[Sequence[int]], fc: Sequence[int]
    ) -> None:
        super().__init__()
        stages = nn.ModuleList()
        c_in = in_channels
        for block in blocks:
            convs = nn.ModuleList()
            for c in block:
                convs.append(nn.ModuleDict({"conv": nn.Conv2d(c_in, c, 3, padding=1), "bn": nn.BatchNorm2d(c)}))
                c_in = c
            stages.append(convs)
        self.blocks = cast("Sequence[Sequence[nn.ModuleDict]]", stages)  # a ModuleList, typed as what it holds
        size = input_size // 2 ** len(blocks)
        widths = [c_in * size * size] + list(fc) + [num_classes]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))

    def block_logits(self, x: Tensor) -> list[Tensor]:
        """Per block, the pre-activation output of its last (pooled) conv layer."""
        return self._conv(x)[0]

    def _conv(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """(block logits, output of the conv part)."""
        logits, h = [], x
        for block in self.blocks:
            for j, layer in enumerate(block):
                z = layer["conv"](h)
                if j == len(block) - 1:
                    z = F.max_pool2d(z, 2)
                z = layer["bn"](z)
                h = F.relu(z)
            logits.append(z)
        return logits, h

    def forward(self, x: Tensor) -> Tensor:
        h = self._conv(x)[1].flatten(1)
        for i, lin in enumerate(self.fc):
            h = lin(h)
            if i < len(self.fc) - 1:
                h = F.relu(h)
        return h


class TeacherFeatures:
    """``(x, block) -> teacher block logits`` in eval mode, computed once per batch for all the signals."""

    def __init__(self, teacher: ConvTeacher) -> None:
        self.teacher = teacher.eval()
        self._x: Tensor | None = None  # the batch the cache belongs to (held, so it cannot be another batch's)
        self._version = -1
        self._cache: list[Tensor] = []

    @torch.no_grad()
    def __call__(self, x: Tensor, block: int) -> Tensor:
        if x is not self._x or x._version != self._version:
            self._cache = self.teacher.block_logits(x.to(next(self.teacher.parameters()).dtype))
            self._x, self._version = x, x._version
        return self._cache[block].to(x.dtype)

    def block(self, b: int) -> Callable[[Tensor], Tensor]:
        return lambda x: self(x, b)


def train_teacher(
    teacher: ConvTeacher,
    data: ImageData,
    epochs: int,
    device: torch.device,
    batch_size: int = 128,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    seed: int = 0,
    augment: Augmentation | None = None,
    log: Callable[[str], None] = print,
) -> float:
    """Train by backprop (SGD, Nesterov momentum, cosine annealing); returns the test error."""
    teacher.to(device)
    opt = torch.optim.SGD(teacher.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    gen = torch.Generator().manual_seed(seed)
    images, labels = data.train_images.to(device), data.train_labels.to(device)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        teacher.train()
        for _, x, y in epoch_batches(data, images, labels, batch_size, gen, augment=augment):
            loss = F.cross_entropy(teacher(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        err = teacher_error(teacher, data, device)
        log(f"teacher epoch {epoch:3d}  test error {100 * err:6.2f}%  ({time.perf_counter() - t0:.1f}s)")
    return teacher_error(teacher, data, device)


@torch.no_grad()
def teacher_error(teacher: ConvTeacher, data: ImageData, device: torch.device, batch_size: int = 512) -> float:
    teacher.eval()
    wrong = 0
    for start in range(0, len(data.test_labels), batch_size):
        x = data.prepare(data.test_images[start : start + batch_size].to(device))
        wrong += int((teacher(x).argmax(1) != data.test_labels[start : start + batch_size].to(device)).sum())
    return wrong / max(1, len(data.test_labels))


def load_or_train_teacher(
    path: str | Path | None,
    run_teacher: Path | None,
    make: Callable[[], ConvTeacher],
    data: ImageData,
    epochs: int,
    device: torch.device,
    seed: int,
    augment: Augmentation,
    log: Callable[[str], None],
) -> ConvTeacher:
    """The teacher at ``path`` (a state dict saved by a previous run), else the run's own ``teacher.pt``,
    else a new one trained here (and saved to ``run_teacher``)."""
    teacher = make().to(device)
    for candidate in (path, run_teacher):
        if candidate is not None and Path(candidate).exists():
            teacher.load_state_dict(torch.load(candidate, map_location=device, weights_only=True))
            error = teacher_error(teacher, data, device)
            log(f"eqprop: KD teacher loaded from {candidate} (test error {100 * error:.2f}%)")
            return teacher.eval()
    if path is not None:
        raise FileNotFoundError(f"teacher checkpoint {path} does not exist; leave teacher unset to train one")
    log(f"eqprop: training the KD teacher by backprop for {epochs} epochs")
    err = train_teacher(teacher, data, epochs, device, seed=seed, augment=augment, log=log)
    log(f"eqprop: KD teacher test error {100 * err:.2f}%")
    if run_teacher is not None:
        torch.save(teacher.state_dict(), run_teacher)
    return teacher.eval()
