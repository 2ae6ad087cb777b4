"""Data: scikit-learn's bundled handwritten digits (the offline default) and MNIST from IDX files.

Every loader returns ``(train, test)`` ``TensorDataset``s of float images (N, C, H, W) and int64 labels.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

__all__ = ["load_digits", "load_mnist", "read_idx", "DATASETS", "load_dataset"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def load_digits(image_size: int = 8, flatten: bool = False, test_fraction: float = 0.2,
                seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 8x8 digits (1797 images, no download), standardised, with a fixed seeded split.

    ``image_size`` > 8 resizes bilinearly (e.g. 16 for a small DCHN); ``flatten`` gives (N, size*size).
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed,
                                           stratify=data.target)
    x = _resize(x, image_size)
    mean, std = x[idx_train].mean(), x[idx_train].std()
    x = (x - mean) / std
    if flatten:
        x = x.flatten(1)
    return (TensorDataset(x[idx_train], y[idx_train]), TensorDataset(x[idx_test], y[idx_test]))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed), the on-disk format of MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = raw[2], raw[3]
    if code not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type code 0x{code:02x}")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but the file holds {data.size} values")
    return data.reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for cand in (root / stem, root / f"{stem}.gz", root / "MNIST" / "raw" / stem, root / "MNIST" / "raw" / f"{stem}.gz"):
        if cand.exists():
            return cand
    return None


def load_mnist(data_dir: str | os.PathLike, pad_to_32: bool = True, flatten: bool = False,
               limit_train: int | None = None, limit_test: int | None = None) -> tuple[TensorDataset, TensorDataset]:
    """MNIST from the four IDX files in ``data_dir`` (plain or .gz), normalised as in Table 4.

    ``pad_to_32`` adds two pixels on each side (appendix D); ``limit_*`` keep the first N images.
    """
    root = Path(data_dir)
    stems = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
    paths = {k: _find(root, v) for k, v in stems.items()}
    missing = [stems[k] for k, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(f"MNIST: files {missing} not found in {root.resolve()} (looked for plain and .gz "
                                f"IDX files, also under MNIST/raw/); point data_dir at the folder holding them")

    def images(p: Path, limit: int | None) -> torch.Tensor:
        arr = read_idx(p)[:limit]
        x = torch.tensor(arr, dtype=torch.float32).unsqueeze(1) / 255.0
        x = (x - MNIST_MEAN) / MNIST_STD
        if pad_to_32:
            x = F.pad(x, (2, 2, 2, 2), value=(0.0 - MNIST_MEAN) / MNIST_STD)
        return x.flatten(1) if flatten else x

    def labels(p: Path, limit: int | None) -> torch.Tensor:
        return torch.tensor(read_idx(p)[:limit].astype(np.int64))

    train = TensorDataset(images(paths["train_x"], limit_train), labels(paths["train_y"], limit_train))
    test = TensorDataset(images(paths["test_x"], limit_test), labels(paths["test_y"], limit_test))
    return train, test


DATASETS = ("digits", "mnist")


def load_dataset(name: str, data_dir: str | None = None, image_size: int = 16, flatten: bool = False,
                 seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Load a data set by name; an unknown name lists the valid ones."""
    if name == "digits":
        return load_digits(image_size=image_size, flatten=flatten, seed=seed)
    if name == "mnist":
        if data_dir is None:
            raise ValueError("the mnist data set needs data_dir pointing at its IDX files")
        return load_mnist(data_dir, pad_to_32=not flatten, flatten=flatten)
    raise ValueError(f"unknown dataset {name!r}; valid datasets are {list(DATASETS)}")
