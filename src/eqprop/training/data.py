"""Data: the six data sets of the library, held in memory as raw images, normalised as in Table 4.

``load_dataset(name, ...)`` returns an :class:`ImageData`: raw train/test images (uint8, or float in [0, 1])
with labels, the data set's normalisation (Table 4) and its augmentation defaults (appendix D: random
horizontal flips on Fashion-MNIST, CIFAR-10 and CIFAR-100). Augmentation (:class:`Augmentation`: flip, then
random crop) runs on raw batches, so a crop's padding is black, or repeats the border pixels
(``padding_mode="edge"``, torchvision's ``RandomCrop(padding_mode="edge")``); normalisation comes last.

- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, no download), seeded stratified split, resized.
- ``mnist``, ``fashion_mnist``: IDX files (plain or .gz), padded to 32x32 by two pixels per side (appendix D).
- ``svhn``: ``train_32x32.mat``/``test_32x32.mat``; ``cifar10``/``cifar100``: the python pickle batches.
  These three are read by torchvision's dataset classes; ``download=True`` fetches files through torchvision.
- ``imagenet32``: the downsampled-ImageNet npz release; ``imagenet``: an ImageFolder tree, decoded lazily.
- ``normalization=pcn`` swaps in the PCN paper's Table 4 (:data:`PCN_NORMALIZATION`), ``normalization=hep`` the
  holomorphic-EP code's statistics (:data:`HEP_NORMALIZATION`).

Register a new data set with :func:`register_dataset`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import math
import os
import pickle
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from ..errors import ConfigError, DataError
from ..registry import canonical_name
from ..settings import Section, check_choice, setting

__all__ = [
    "ImageData",
    "DatasetSpec",
    "DATASETS",
    "register_dataset",
    "dataset_spec",
    "dataset_names",
    "load_dataset",
    "load_digits",
    "cache_dir",
    "load_mnist",
    "read_idx",
    "Augmentation",
    "PADDING_MODES",
    "random_flip",
    "random_crop",
    "FolderImages",
    "load_image_folder",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataSection",
    "epoch_batches",
    "load_imagenet32",
    "PCN_NORMALIZATION",
    "HEP_NORMALIZATION",
    "normalize_as",
    "check_labels",
    "check_torchvision",
]


@functools.cache
def check_torchvision() -> None:
    """A DataError when the installed torchvision was built for another torch (torchvision 0.(m+15) goes with torch
    2.m): importing it then fails deep inside with "operator torchvision::nms does not exist". Checked from the
    packages' metadata, before the import."""
    from importlib import metadata

    try:
        torch_v, vision_v = metadata.version("torch"), metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        return
    t = re.match(r"(\d+)\.(\d+)", torch_v)
    v = re.match(r"(\d+)\.(\d+)", vision_v)
    if t is None or v is None or int(t[1]) != 2 or int(v[1]) != 0:
        return
    wanted = int(t[2]) + 15
    if int(v[2]) != wanted:
        raise DataError(
            f"torchvision {vision_v} does not match torch {torch_v} (torch 2.{t[2]} goes with torchvision "
            f"0.{wanted}); install the pair, e.g. `pip install torch=={torch_v.split('+')[0]} "
            f"torchvision==0.{wanted}.*` (from the same index for a CPU or CUDA build)"
        )


Splits = tuple[Tensor, Tensor, Tensor, Tensor]  # train images, train labels, test images, test labels


@dataclass
class ImageData:
    """A data set in memory: raw images (N, C, H, W), int64 labels, and the normalisation of Table 4."""

    name: str
    train_images: Tensor  # or a FolderImages, which indexes and moves like one
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    flip: bool = False  # the paper's default for training (appendix D)
    val_images: Tensor | None = None  # a held-out part of the training set (validation=...), or None
    val_labels: Tensor | None = None

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """The images and labels of ``train``, ``val`` or ``test``."""
        if name == "val":
            if self.val_images is None or self.val_labels is None:
                raise DataError("no validation split: set validation to the fraction of training data to hold out")
            return self.val_images, self.val_labels
        if name not in ("train", "test"):
            raise DataError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return (self.train_images, self.train_labels) if name == "train" else (self.test_images, self.test_labels)

    def hold_out(self, fraction: float, seed: int) -> ImageData:
        """A copy whose training set loses a seeded random ``fraction`` of its images to a validation split, so
        that model selection and tuning never look at the test set."""
        n = len(self.train_labels)
        k = int(round(fraction * n))
        if not 0 < k < n:
            raise DataError(f"validation={fraction} of {n} training images leaves {n - k} to train and {k} to validate")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        keep, held = perm[k:].sort().values, perm[:k].sort().values
        images = self.train_images

        def take(ids: Tensor) -> Any:
            return images.subset(ids) if isinstance(images, FolderImages) else images[ids]

        return dataclasses.replace(
            self,
            train_images=take(keep),
            train_labels=self.train_labels[keep],
            val_images=take(held),
            val_labels=self.train_labels[held],
        )

    def prepare(
        self,
        images: Tensor,
        *,
        augment: Augmentation | None = None,
        generator: torch.Generator | None = None,
        flatten: bool = False,
        rows: tuple[slice, int] | None = None,
    ) -> Tensor:
        """Raw batch -> (augmented) normalised float batch; augmentation draws from ``generator``. ``rows =
        (part, total)``: the images are rows ``part`` of a batch of ``total`` (one rank's shard), and get the
        augmentation those rows get in the whole batch."""
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        if augment is not None:
            x = augment(x, generator, rows)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
        return x.flatten(1) if flatten else x

    def normalized(self, split: str = "train", flatten: bool = False) -> TensorDataset:
        """The whole split, normalised and not augmented, as a ``TensorDataset``."""
        images, labels = self.split(split)
        return TensorDataset(self.prepare(images, flatten=flatten), labels)


def epoch_batches(
    data: ImageData,
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    generator: torch.Generator,
    *,
    augment: Augmentation | None = None,
    flatten: bool = False,
    start: int = 0,
    resume_generator: Tensor | None = None,
    shard: Callable[[int], slice] | None = None,
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """One shuffled epoch: (batch index, prepared batch, labels), shuffling and augmentation drawn from
    ``generator``. ``start`` and ``resume_generator`` (the generator's state when the epoch was interrupted)
    continue an interrupted epoch exactly. ``shard(n)``: the part of each batch of n samples this process takes
    (data parallelism; every process draws the same permutation and augmentation, and loads only its part).
    The one data loop of the Trainer and the KD teacher."""
    n = len(labels)
    perm = torch.randperm(n, generator=generator).to(labels.device)
    if resume_generator is not None and start > 0:
        generator.set_state(resume_generator)
    for b in range(start, math.ceil(n / batch_size)):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        part = shard(len(idx)) if shard is not None else slice(0, len(idx))
        x = data.prepare(
            images[idx[part]],
            augment=augment,
            generator=generator,
            flatten=flatten,
            rows=(part, len(idx)),
        )
        yield b, x, labels[idx[part]]


def random_flip(x: Tensor, generator: torch.Generator | None = None, rows: tuple[slice, int] | None = None) -> Tensor:
    """Flip each image horizontally with probability 1/2 (``rows``: as rows ``part`` of a batch of ``total``)."""
    part, total = rows or (slice(None), x.shape[0])
    mask = (torch.rand(total, generator=generator) < 0.5)[part]
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


# torchvision's RandomCrop padding modes -> torch.nn.functional.pad modes
PADDING_MODES = {"constant": "constant", "edge": "replicate", "reflect": "reflect"}


def _check_padding_mode(padding_mode: str) -> None:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"unknown padding_mode {padding_mode!r}; valid modes are {list(PADDING_MODES)}")


def random_crop(
    x: Tensor,
    padding: int,
    generator: torch.Generator | None = None,
    rows: tuple[slice, int] | None = None,
    padding_mode: str = "constant",
) -> Tensor:
    """Pad each image by ``padding`` pixels per side and crop it back at a random offset. The padding is black
    (``"constant"``), repeats the border pixels (``"edge"``) or mirrors the image (``"reflect"``)."""
    _check_padding_mode(padding_mode)
    n, _, h, w = x.shape
    part, total = rows or (slice(None), n)
    padded = F.pad(x, (padding, padding, padding, padding), mode=PADDING_MODES[padding_mode])
    dy = torch.randint(0, 2 * padding + 1, (total,), generator=generator)[part].to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (total,), generator=generator)[part].to(x.device)
    ys = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    xs = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, chans, ys, xs]


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation of raw batches (appendix D): random horizontal flips, then random crops
    after padding by ``crop_padding`` pixels per side in ``padding_mode``; the identity by default."""

    flip: bool = False
    crop_padding: int = 0
    padding_mode: str = "constant"

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        _check_padding_mode(self.padding_mode)

    def __call__(
        self, x: Tensor, generator: torch.Generator | None = None, rows: tuple[slice, int] | None = None
    ) -> Tensor:
        if self.flip:
            x = random_flip(x, generator, rows)
        if self.crop_padding > 0:
            x = random_crop(x, self.crop_padding, generator, rows, self.padding_mode)
        return x


# --------------------------------------------------------------------------------------------- loaders


def _limit(images: Tensor, labels: Tensor, limit: int | None) -> tuple[Tensor, Tensor]:
    return (images, labels) if limit is None else (images[:limit], labels[:limit])


def load_digits(image_size: int = 8, test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's 8x8 digits (no download) with a fixed seeded stratified split, resized to ``image_size``.

    Normalised by the train split's pixel mean and std (the images have no published statistics).
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if image_size < 8:
        raise DataError(f"digits images are 8x8; image_size must be >= 8, got {image_size}")
    images, target, idx_train, idx_test = _digits_split(test_fraction, seed)
    n = len(images)
    per_pixel = 4 * 3  # float32: the resized images, their clamped copy and a normalised copy
    from .memory import memory_bytes, require_fits

    largest = int(((memory_bytes() or 2**62) / (per_pixel * n)) ** 0.5)
    require_fits(
        per_pixel * n * image_size**2,
        f"image_size={image_size} ({n} digits images of {image_size}x{image_size} pixels)",
        f"choose an image_size of at most {largest} (the papers use 16 or 32)",
    )
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(target, dtype=torch.int64)
    train, test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    mean, std = float(x[train].mean()), float(x[train].std())
    return ImageData("digits", x[train], y[train], x[test], y[test], (mean,), (std,), 10)


def cache_dir() -> Path | None:
    """Where eqprop keeps what it can recompute: ``EQPROP_CACHE_DIR``, else ``$XDG_CACHE_HOME/eqprop`` or
    ``~/.cache/eqprop``; ``EQPROP_CACHE_DIR=off`` turns caching off (None)."""
    chosen = os.environ.get("EQPROP_CACHE_DIR")
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "none") else Path(chosen)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eqprop"


def _digits_split(test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits (images, targets) and the seeded stratified split (train and test indices), read from
    the cache when it holds them: importing scikit-learn takes about 2 s, a large part of a short run's start."""
    from importlib.metadata import version

    folder = cache_dir()
    path = None
    if folder is not None:
        path = folder / f"digits-sklearn{version('scikit-learn')}-seed{seed}-test{test_fraction!r}.npz"
        try:
            with np.load(path) as cached:
                return cached["images"], cached["target"], cached["train"], cached["test"]
        except Exception:  # missing, or a damaged file: recompute (and rewrite) it
            pass
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    train, test = train_test_split(
        np.arange(len(data.target)), test_size=test_fraction, random_state=seed, stratify=data.target
    )
    arrays = (np.asarray(data.images), np.asarray(data.target), np.asarray(train), np.asarray(test))
    if path is not None:
        with contextlib.suppress(OSError):  # an unwritable cache only costs the next start its 2 s
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, images=arrays[0], target=arrays[1], train=arrays[2], test=arrays[3])
            os.replace(tmp, path)
    return arrays


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed), the on-disk format of MNIST and Fashion-MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError, zlib.error) as exc:  # a cut-off download: "Compressed file ended before ..."
        raise DataError(f"{path} is truncated or damaged ({exc}); fetch the file again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dtypes: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = raw[2], raw[3]
    if code not in dtypes:
        raise DataError(f"{path}: unknown IDX data type code 0x{code:02x}")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but the file holds {data.size} values")
    return data.reshape(shape)


_IDX_STEMS = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _load_idx_set(
    title: str,
    folder: str,
    root: Path,
    pad_to_32: bool,
    limit_train: int | None,
    limit_test: int | None,
    download: bool,
) -> Splits:
    def find(stem: str) -> Path | None:
        for base in (root, root / folder / "raw"):
            for cand in (base / stem, base / f"{stem}.gz"):
                if cand.exists():
                    return cand
        return None

    paths = {k: find(v) for k, v in _IDX_STEMS.items()}
    if any(p is None for p in paths.values()) and download:
        check_torchvision()
        import torchvision

        with _download(title, root):
            getattr(torchvision.datasets, folder)(str(root), train=True, download=True)
            getattr(torchvision.datasets, folder)(str(root), train=False, download=True)
        paths = {k: find(v) for k, v in _IDX_STEMS.items()}
    missing = [_IDX_STEMS[k] for k, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"{title}: files {missing} not found in {root.resolve()} (looked for plain and .gz IDX files, also "
            f"under {folder}/raw/); point data_dir at the folder holding them, or add download=true on a "
            "machine with internet access"
        )
    found = {k: p for k, p in paths.items() if p is not None}
    out = []
    for split, limit in (("train", limit_train), ("test", limit_test)):
        x_path, y_path = found[f"{split}_x"], found[f"{split}_y"]
        x, y = read_idx(x_path), read_idx(y_path)
        if x.ndim != 3:
            raise DataError(
                f"{x_path}: an images file holds a 3-D array (N, rows, columns), such as (60000, 28, 28) for "
                f"{title}'s training images; this one holds shape {x.shape} (a labels file in the images' place?)"
            )
        if y.ndim != 1:
            raise DataError(f"{y_path}: a labels file holds a 1-D array (N,); this one holds shape {y.shape}")
        _check_pair(x_path, len(x), y_path, len(y))
        check_labels(y, 10, str(y_path))
        images = torch.from_numpy(x[:limit].copy()).unsqueeze(1)
        if pad_to_32:
            images = F.pad(images, (2, 2, 2, 2))
        out += [images, torch.from_numpy(y[:limit].astype(np.int64))]
    return out[0], out[1], out[2], out[3]


def check_labels(labels: np.ndarray | Tensor, num_classes: int, where: str) -> None:
    """Every label lies in 0..num_classes-1; else a DataError naming ``where`` (the file), the first bad label and
    its index."""
    values = labels.numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    bad = np.flatnonzero((values < 0) | (values >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{where}: label {int(values[i])} at index {i} is outside 0..{num_classes - 1} ({num_classes} classes; "
            f"{bad.size} labels are out of range); the file is damaged or belongs to another data set"
        )


def _check_pair(images: Path, n_images: int, labels: Path, n_labels: int) -> None:
    """Images and labels must agree in count; the error names the short file."""
    if n_images != n_labels:
        short, other = (images, labels) if n_images < n_labels else (labels, images)
        raise DataError(
            f"{short} holds {min(n_images, n_labels)} entries but {other.name} holds {max(n_images, n_labels)}: "
            f"{short.name} is short (a cut-off copy?); fetch it again"
        )


@contextlib.contextmanager
def _download(title: str, root: Path) -> Iterator[None]:
    """A failed download (no network, a refused or cut connection) as a DataError that says what to do."""
    try:
        yield
    except OSError as exc:  # urllib's URLError and socket errors are OSErrors
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"{title}: download into {root} failed ({reason}); without internet access, copy the files into "
            "data_dir yourself and leave download=false"
        ) from None


def load_mnist(
    data_dir: str | os.PathLike,
    pad_to_32: bool = True,
    limit_train: int | None = None,
    limit_test: int | None = None,
    download: bool = False,
) -> ImageData:
    """MNIST from its four IDX files in ``data_dir`` (or ``data_dir/MNIST/raw``), padded to 32x32 (appendix D)."""
    tensors = _load_idx_set("MNIST", "MNIST", Path(data_dir), pad_to_32, limit_train, limit_test, download)
    return ImageData("mnist", *tensors, mean=(0.1307,), std=(0.3081,), num_classes=10)


def load_fashion_mnist(
    data_dir: str | os.PathLike,
    pad_to_32: bool = True,
    limit_train: int | None = None,
    limit_test: int | None = None,
    download: bool = False,
) -> ImageData:
    """Fashion-MNIST (same IDX format as MNIST), padded to 32x32, flipped at random in training (appendix D)."""
    tensors = _load_idx_set(
        "Fashion-MNIST", "FashionMNIST", Path(data_dir), pad_to_32, limit_train, limit_test, download
    )
    return ImageData("fashion_mnist", *tensors, mean=(0.2860,), std=(0.3530,), num_classes=10, flip=True)


def _torchvision_class(name: str, verify_checksums: bool):
    """torchvision's reader; without checksum verification, a subclass that only checks the files exist."""
    check_torchvision()
    import torchvision.datasets as tvd

    base = getattr(tvd, name)
    if verify_checksums:
        return base

    class Unverified(base):  # type: ignore[misc, valid-type]
        def _check_integrity(self) -> bool:
            if hasattr(self, "train_list"):
                files = [Path(self.root, self.base_folder, f) for f, _ in self.train_list + self.test_list]
            else:
                files = [Path(self.root, self.filename)]
            return all(f.exists() for f in files)

        def _load_meta(self) -> None:
            import pickle

            with open(Path(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    Unverified.__name__ = name
    return Unverified


def _torchvision_set(
    title: str,
    cls_name: str,
    root: Path,
    expected: list[str],
    limit_train: int | None,
    limit_test: int | None,
    download: bool,
    verify_checksums: bool,
) -> Splits:
    missing = [f for f in expected if not (root / f).exists()]
    if missing and not download:
        raise FileNotFoundError(
            f"{title}: files {missing} not found in {root.resolve()}; point data_dir at the folder holding them "
            f"(the layout torchvision.datasets.{cls_name} uses), or add download=true on a machine with internet "
            "access"
        )
    cls = _torchvision_class(cls_name, verify_checksums)
    out = []
    for train, limit in ((True, limit_train), (False, limit_test)):
        try:
            with _download(title, root):
                if cls_name == "SVHN":
                    ds = cls(str(root), split="train" if train else "test", download=download)
                    images, labels = ds.data, ds.labels  # (N, 3, 32, 32) uint8, labels with 10 -> 0
                else:
                    ds = cls(str(root), train=train, download=download)
                    images, labels = ds.data.transpose(0, 3, 1, 2), ds.targets  # HWC -> CHW
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
            raise FileNotFoundError(
                f"{title} in {root.resolve()}: {exc} (files with other contents than the "
                "official release fail the checksum; verify_checksums=false skips it)"
            ) from None
        except (EOFError, ValueError, KeyError, TypeError, pickle.UnpicklingError) as exc:
            raise DataError(f"{title}: {_damaged(root, expected)} ({type(exc).__name__}: {exc})") from None
        if len(images) != len(labels):
            raise DataError(
                f"{title} in {root}: the {'training' if train else 'test'} files hold {len(images)} images but "
                f"{len(labels)} labels; a file is damaged, fetch the set again"
            )
        images = torch.from_numpy(np.ascontiguousarray(images[:limit]))
        out += [images, torch.as_tensor(np.asarray(labels[:limit]), dtype=torch.int64)]
    return out[0], out[1], out[2], out[3]


def _damaged(root: Path, files: list[str]) -> str:
    """Which of a set's files cannot be read (tried one by one after the reader failed)."""
    import scipy.io

    for name in files:
        path = root / name
        try:
            if name.endswith(".mat"):
                scipy.io.loadmat(path)
            else:
                with open(path, "rb") as f:
                    pickle.load(f, encoding="latin1")
        except Exception:  # any failure to read it marks the file
            return f"{path} is truncated or damaged; fetch it again"
    return f"a file in {root} is damaged; fetch the set again"


def load_svhn(
    data_dir: str | os.PathLike,
    limit_train: int | None = None,
    limit_test: int | None = None,
    download: bool = False,
    verify_checksums: bool = True,
) -> ImageData:
    """SVHN (train and test .mat files, the 'extra' set unused as in appendix D); label 10 means digit 0."""
    tensors = _torchvision_set(
        "SVHN",
        "SVHN",
        Path(data_dir),
        ["train_32x32.mat", "test_32x32.mat"],
        limit_train,
        limit_test,
        download,
        verify_checksums,
    )
    return ImageData("svhn", *tensors, mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970), num_classes=10)


def load_cifar10(
    data_dir: str | os.PathLike,
    limit_train: int | None = None,
    limit_test: int | None = None,
    download: bool = False,
    verify_checksums: bool = True,
) -> ImageData:
    """CIFAR-10 (python pickle batches in ``cifar-10-batches-py/``); Table 4's std is 3x the usual one."""
    files = [
        f"cifar-10-batches-py/{f}" for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    ]
    tensors = _torchvision_set(
        "CIFAR-10", "CIFAR10", Path(data_dir), files, limit_train, limit_test, download, verify_checksums
    )
    return ImageData(
        "cifar10",
        *tensors,
        mean=(0.4914, 0.4822, 0.4465),
        std=(3 * 0.2023, 3 * 0.1994, 3 * 0.2010),
        num_classes=10,
        flip=True,
    )


def load_cifar100(
    data_dir: str | os.PathLike,
    limit_train: int | None = None,
    limit_test: int | None = None,
    download: bool = False,
    verify_checksums: bool = True,
) -> ImageData:
    """CIFAR-100 (python pickles ``train``, ``test``, ``meta`` in ``cifar-100-python/``), fine labels."""
    files = [f"cifar-100-python/{f}" for f in ("train", "test", "meta")]
    tensors = _torchvision_set(
        "CIFAR-100", "CIFAR100", Path(data_dir), files, limit_train, limit_test, download, verify_checksums
    )
    return ImageData(
        "cifar100", *tensors, mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761), num_classes=100, flip=True
    )


# ---------------------------------------------------------------------------------------- ImageNet32
def load_imagenet32(
    data_dir: str | os.PathLike,
    limit_train: int | None = None,
    limit_test: int | None = None,
    download: bool = False,
) -> ImageData:
    """Downsampled ImageNet 32x32 (Chrabaszcz et al.'s npz release): ``train_data_batch_1..10.npz`` and
    ``val_data.npz`` in ``data_dir`` (or its ``Imagenet32_train_npz/`` and ``Imagenet32_val_npz/`` folders), each
    with ``data`` (N, 3072) uint8 in channel-major order and ``labels`` 1..1000. The val set is the test set."""
    if download:
        raise DataError("imagenet32 cannot be downloaded automatically; place its npz files in data_dir")
    root = Path(data_dir)

    def find(name: str, sub: str) -> Path | None:
        return next((p for p in (root / name, root / sub / name) if p.exists()), None)

    train_files = [find(f"train_data_batch_{i}.npz", "Imagenet32_train_npz") for i in range(1, 11)]
    val_file = find("val_data.npz", "Imagenet32_val_npz")
    missing = [f"train_data_batch_{i}.npz" for i, p in enumerate(train_files, 1) if p is None]
    missing += [] if val_file is not None else ["val_data.npz"]
    if missing:
        raise FileNotFoundError(
            f"imagenet32: files {missing} not found in {root.resolve()} (nor in its Imagenet32_train_npz/ and "
            "Imagenet32_val_npz/ folders); point data_dir at the folder holding the npz release"
        )

    def read(paths: list[Path], limit: int | None) -> tuple[Tensor, Tensor]:
        images, labels, n = [], [], 0
        for path in paths:
            if limit is not None and n >= limit:
                break
            try:
                with np.load(path) as f:
                    x, y = f["data"], np.asarray(f["labels"]).reshape(-1)
            except (OSError, ValueError, KeyError, EOFError) as exc:
                raise DataError(f"{path} is not an ImageNet32 npz file with 'data' and 'labels' ({exc})") from None
            if x.ndim != 2 or x.shape[1] != 3072 or x.dtype != np.uint8:
                raise DataError(f"{path}: 'data' must be (N, 3072) uint8, got {x.shape} {x.dtype}")
            if len(y) != len(x):
                raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
            if len(y) and (y.min() < 1 or y.max() > 1000):
                raise DataError(f"{path}: labels must lie in 1..1000, got {int(y.min())}..{int(y.max())}")
            images.append(x.reshape(-1, 3, 32, 32))
            labels.append(y.astype(np.int64) - 1)
            n += len(x)
        xs, ys = np.concatenate(images)[:limit], np.concatenate(labels)[:limit]
        return torch.from_numpy(np.ascontiguousarray(xs)), torch.from_numpy(ys)

    train = read([p for p in train_files if p is not None], limit_train)
    test = read([val_file], limit_test)  # type: ignore[list-item]
    return ImageData("imagenet32", *train, *test, mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000, flip=True)


# The PCN paper's Table 4 (its CIFAR-10 std is the usual one, a third of the comparative study's)
PCN_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenet32": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_CIFAR10_HEP = ((0.4914, 0.4822, 0.4465), (1.5 * 0.2023, 1.5 * 0.1994, 1.5 * 0.2010))
# The holomorphic-EP code's inputs: CIFAR-10's mean and 1.5 x its std, for CIFAR-100 too; ImageNet's, 1.5 x std
HEP_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": _CIFAR10_HEP,
    "cifar100": _CIFAR10_HEP,
    "imagenet32": ((0.485, 0.456, 0.406), (1.5 * 0.229, 1.5 * 0.224, 1.5 * 0.225)),
}
NORMALIZATION_TABLES = {
    "pcn": ("the PCN paper's Table 4", PCN_NORMALIZATION),
    "hep": ("the HEP code", HEP_NORMALIZATION),
}
NORMALIZATIONS = ("dataset", "pcn", "hep", "none")


def normalization_error(normalization: str, dataset: str) -> str | None:
    """Why ``normalization`` cannot serve ``dataset`` (None when it can)."""
    if normalization in ("dataset", "none"):
        return None
    if normalization not in NORMALIZATION_TABLES:
        return f"unknown normalization {normalization!r}; valid ones are {list(NORMALIZATIONS)}"
    source, table = NORMALIZATION_TABLES[normalization]
    if dataset not in table:
        return f"{source} has no statistics for {dataset}; it covers {sorted(table)} (use normalization=dataset)"
    return None


def normalize_as(data: ImageData, normalization: str) -> ImageData:
    """Set the data set's mean and std: ``dataset`` keeps its own (the comparative study's Table 4 where it has
    one), ``pcn`` takes the PCN paper's Table 4, ``hep`` the holomorphic-EP code's statistics, ``none`` leaves the
    pixels in [0, 1] (mean 0, std 1)."""
    problem = normalization_error(normalization, data.name)
    if problem:
        raise DataError(problem)
    if normalization == "none":  # pixels as they are, in [0, 1] (the resistive-network papers)
        channels = len(data.mean)
        data.mean, data.std = (0.0,) * channels, (1.0,) * channels
    elif normalization != "dataset":
        data.mean, data.std = NORMALIZATION_TABLES[normalization][1][data.name]
    return data


# -------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetSpec:
    """What the model builder needs before loading: input channels, image size, classes, loader."""

    name: str
    in_channels: int
    image_size: int | None  # None: set by the config's image_size (digits)
    num_classes: int
    loader: Callable[..., ImageData]
    needs_files: bool = True


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> None:
    """Register a data set; ``spec.loader(data_dir=..., image_size=..., seed=..., limit_train=..., ...)``."""
    DATASETS[spec.name] = spec


def dataset_names() -> list[str]:
    return list(DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a data set by name ('cifar10', 'CIFAR-10', 'fashion-mnist', ...); unknown names list the valid."""
    canonical = canonical_name(name, DATASETS)
    if canonical is not None:
        return DATASETS[canonical]
    raise DataError(f"unknown dataset {name!r}; valid datasets are {dataset_names()}")


def _files(fn: Callable[..., ImageData], checksums: bool) -> Callable[..., ImageData]:
    """The registry's loader signature for a file-based loader; ``checksums``: it takes ``verify_checksums``."""

    def load(
        data_dir: str | None,
        image_size: int,
        seed: int,
        limit_train: int | None,
        limit_test: int | None,
        download: bool,
        verify_checksums: bool,
    ) -> ImageData:
        kwargs = dict(limit_train=limit_train, limit_test=limit_test, download=download)
        if checksums:
            kwargs["verify_checksums"] = verify_checksums
        return fn(data_dir, **kwargs)

    return load


def _digits(
    data_dir: str | None,
    image_size: int,
    seed: int,
    limit_train: int | None,
    limit_test: int | None,
    download: bool,
    verify_checksums: bool,
) -> ImageData:
    data = load_digits(image_size=image_size, seed=seed)
    data.train_images, data.train_labels = _limit(data.train_images, data.train_labels, limit_train)
    data.test_images, data.test_labels = _limit(data.test_images, data.test_labels, limit_test)
    return data


register_dataset(DatasetSpec("digits", 1, None, 10, _digits, needs_files=False))


# ------------------------------------------------------------------------------ image folders (ImageNet)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class FolderImages:
    """Images of an image-folder tree, decoded when indexed: ``images[idx]`` is a uint8 batch (B, 3, S, S)
    on ``device`` (shorter side resized to S, centre crop). Stands in for the in-memory image tensor of
    :class:`ImageData`, so the training loop, resume and evaluation are the same for data sets that do not fit
    in memory; decoding runs on a thread pool."""

    def __init__(self, paths: list[str], size: int, device: torch.device | str = "cpu", workers: int = 8) -> None:
        self.paths, self.size, self.device, self.workers = list(paths), int(size), torch.device(device), workers

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.paths), 3, self.size, self.size)

    def to(self, device: torch.device | str) -> FolderImages:
        return FolderImages(self.paths, self.size, device, self.workers)

    def subset(self, ids: Tensor) -> FolderImages:
        """The images at ``ids``, still undecoded."""
        return FolderImages([self.paths[i] for i in ids.tolist()], self.size, self.device, self.workers)

    def _decode(self, path: str) -> Tensor:
        from PIL import Image

        check_torchvision()
        from torchvision.transforms import functional as TF

        with Image.open(path) as img:
            img = TF.center_crop(TF.resize(img.convert("RGB"), self.size), [self.size, self.size])
            return TF.pil_to_tensor(img)

    def __getitem__(self, idx: int | slice | Tensor) -> Tensor:
        from concurrent.futures import ThreadPoolExecutor

        if isinstance(idx, slice):
            chosen = self.paths[idx]
        else:
            ids = torch.as_tensor(idx).reshape(-1).tolist()
            chosen = [self.paths[i] for i in ids]
        with ThreadPoolExecutor(max(1, min(self.workers, len(chosen)))) as pool:
            batch = list(pool.map(self._decode, chosen))
        if not batch:
            return torch.empty(0, 3, self.size, self.size, dtype=torch.uint8, device=self.device)
        return torch.stack(batch).to(self.device)


def load_image_folder(
    data_dir: str | os.PathLike,
    image_size: int = 64,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
    name: str = "imagenet",
) -> ImageData:
    """An ImageFolder tree ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` (ImageNet's layout after
    the usual val re-sort), read lazily through :class:`FolderImages` at ``image_size`` with ImageNet's mean
    and std. ``limit_*`` keep a seeded random subset (the folders are sorted by class)."""
    check_torchvision()
    from torchvision.datasets import ImageFolder

    root = Path(data_dir)
    splits = {}
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(
                f"{name}: expected image folders {root / split}/<class>/<image> (ImageNet "
                f"layout: train/ and val/ with one sub-folder per class); not found"
            )
        splits[split] = ImageFolder(str(root / split))
    train, val = splits["train"], splits["val"]
    if train.classes != val.classes:
        raise DataError(
            f"{name}: train/ and val/ have different class folders ({len(train.classes)} vs {len(val.classes)})"
        )

    def subset(samples: list[tuple[str, int]], limit: int | None, offset: int) -> tuple[list[str], Tensor]:
        if limit is not None and limit < len(samples):
            keep = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed + offset))[:limit]
            samples = [samples[i] for i in sorted(keep.tolist())]
        return [p for p, _ in samples], torch.tensor([c for _, c in samples], dtype=torch.int64)

    train_paths, train_labels = subset(train.samples, limit_train, 0)
    test_paths, test_labels = subset(val.samples, limit_test, 1)
    return ImageData(
        name,
        cast(Tensor, FolderImages(train_paths, image_size)),  # indexed and moved like an image tensor
        train_labels,
        cast(Tensor, FolderImages(test_paths, image_size)),
        test_labels,
        IMAGENET_MEAN,
        IMAGENET_STD,
        len(train.classes),
        flip=True,
    )


def _image_folder(
    data_dir: str | None,
    image_size: int,
    seed: int,
    limit_train: int | None,
    limit_test: int | None,
    download: bool,
    verify_checksums: bool,
) -> ImageData:
    if download:
        raise DataError(
            "imagenet cannot be downloaded automatically; place the train/ and val/ folders in "
            "data_dir (download=false)"
        )
    return load_image_folder(data_dir, image_size, limit_train, limit_test, seed)  # type: ignore[arg-type]


register_dataset(DatasetSpec("imagenet", 3, None, 1000, _image_folder))
register_dataset(DatasetSpec("mnist", 1, 32, 10, _files(load_mnist, checksums=False)))
register_dataset(  # the resistive-network papers' MNIST: the 28x28 images as they are, no padding
    DatasetSpec("mnist28", 1, 28, 10, _files(functools.partial(load_mnist, pad_to_32=False), checksums=False))
)
register_dataset(DatasetSpec("fashion_mnist", 1, 32, 10, _files(load_fashion_mnist, checksums=False)))


def load_fashion_mnist28(
    data_dir: str | os.PathLike,
    limit_train: int | None = None,
    limit_test: int | None = None,
    download: bool = False,
) -> ImageData:
    """The resistive-network papers' Fashion-MNIST: the 28x28 images as they are (no padding), flipped at random in
    training (the papers' code, whose Fashion-MNIST loader always adds a horizontal flip with probability 1/2)."""
    return load_fashion_mnist(data_dir, False, limit_train, limit_test, download)


register_dataset(DatasetSpec("fashion_mnist28", 1, 28, 10, _files(load_fashion_mnist28, checksums=False)))
register_dataset(DatasetSpec("svhn", 3, 32, 10, _files(load_svhn, checksums=True)))
register_dataset(DatasetSpec("cifar10", 3, 32, 10, _files(load_cifar10, checksums=True)))
register_dataset(DatasetSpec("cifar100", 3, 32, 100, _files(load_cifar100, checksums=True)))
register_dataset(DatasetSpec("imagenet32", 3, 32, 1000, _files(load_imagenet32, checksums=False)))


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int = 16,
    seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    download: bool = False,
    verify_checksums: bool = True,
) -> ImageData:
    """Load a registered data set by name; a file-based set without ``data_dir`` is an error that says so."""
    spec = dataset_spec(name)
    if spec.needs_files and data_dir is None:
        raise DataError(
            f"the {spec.name} data set is read from files: set data_dir to the folder holding them "
            "(add download=true to fetch them where internet is available)"
        )
    data = spec.loader(
        None if data_dir is None else str(data_dir),
        image_size,
        seed,
        limit_train,
        limit_test,
        download,
        verify_checksums,
    )
    for split in ("train", "test"):  # every loader's labels, before any run directory exists
        where = f"the {spec.name} {split} labels" + (f" (in {data_dir})" if data_dir is not None else "")
        check_labels(getattr(data, f"{split}_labels"), data.num_classes, where)
    return data


# ---- config section ----------------------------------------------------------------------------------------
@dataclass
class DataSection(Section):
    """The ``data`` section of a config: which data set, where, how much of it, and its augmentation."""

    name: ClassVar[str] = "data"
    dataset: str = setting("digits", "the data set (DATASETS): digits, mnist, fashion_mnist, svhn, cifar10, ...")
    data_dir: str | None = setting(None, "folder holding the data set's files (not needed for digits)", path=True)
    download: bool = setting(False, "fetch missing files through torchvision (needs internet)")
    verify_checksums: bool = setting(True, "check torchvision's checksums of the files")
    image_size: int = setting(16, "digits only: resize the 8x8 images to this size (file-based sets keep theirs)")
    flip: bool | None = setting(None, "random horizontal flips in training; null: the paper's choice per data set")
    crop_padding: int = setting(0, "random crops after padding by this many pixels; 0: off")
    crop_padding_mode: str = setting("constant", "the crops' padding: constant (black), edge (border pixels), reflect")
    normalization: str = setting(
        "dataset", "mean/std: dataset (its own), pcn (PCN paper's Table 4), hep (HEP code), none (pixels in [0, 1])"
    )
    limit_train: int | None = setting(None, "keep the first N training images (quick runs, tests)")
    limit_test: int | None = setting(None, "keep the first N test images")
    validation: float = setting(0.0, "hold out this fraction of the training set (seeded) for validation; 0: none")
    evaluate_test: bool = setting(
        True, "evaluate the test set after every epoch; false (with validation > 0): never read it (tuning trials)"
    )
    test_once: bool = setting(
        False, "evaluate the test set once, after the last epoch (the final runs of settings chosen on validation)"
    )

    def validate(self) -> None:
        self.dataset = check_choice("dataset", self.dataset, dataset_names())
        self.normalization = check_choice("normalization", self.normalization, list(NORMALIZATIONS))
        problem = normalization_error(self.normalization, self.dataset)
        if problem:
            raise ConfigError(f"normalization={self.normalization}: {problem}")
        self.at_least(1, "image_size", "limit_train", "limit_test")
        self.at_least(0, "crop_padding")
        self.crop_padding_mode = check_choice("crop_padding_mode", self.crop_padding_mode, list(PADDING_MODES))
        if not 0 <= self.validation < 1:
            raise ConfigError(f"config key 'validation' must be a fraction in [0, 1), got {self.validation}")
        if not self.evaluate_test and self.validation == 0:
            raise ConfigError(
                "evaluate_test=false leaves a run nothing to select or report on: hold out a validation split too "
                "(validation=0.1, say), or keep evaluate_test=true"
            )
