"""Loaders on files written in each data set's real on-disk format, plus the shared real MNIST."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from eqprop.errors import DataError
from eqprop.training.data import Augmentation, dataset_spec, load_dataset, random_crop, random_flip, read_idx

MNIST_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


def _write_idx(path, arr, compress):
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(header + arr.tobytes())


def _idx_set(root, n=7, compress=False, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, size=n, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    for split in ("train", "t10k"):
        _write_idx(root / f"{split}-images-idx3-ubyte{suffix}", imgs, compress)
        _write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labs, compress)
    return imgs, labs


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files_are_padded_and_normalised_as_table4(tmp_path, compress):
    imgs, labs = _idx_set(tmp_path, compress=compress)
    data = load_dataset("mnist", tmp_path)
    x, y = data.normalized("train").tensors
    assert x.shape == (7, 1, 32, 32) and y.tolist() == labs.tolist() and not data.flip
    expected = (imgs[3, 5, 6] / 255.0 - 0.1307) / 0.3081
    assert float(x[3, 0, 7, 8]) == pytest.approx(expected, abs=1e-5)  # padded by 2 pixels (appendix D)
    assert float(x[0, 0, 0, 0]) == pytest.approx(-0.1307 / 0.3081, abs=1e-6)


def test_fashion_mnist_in_torchvision_layout_flips_by_default(tmp_path):
    imgs, labs = _idx_set(tmp_path / "FashionMNIST" / "raw", n=5, seed=1)
    data = load_dataset("Fashion-MNIST", tmp_path)
    x = data.normalized("test").tensors[0]
    assert data.name == "fashion_mnist" and data.flip and data.test_labels.tolist() == labs.tolist()
    assert float(x[2, 0, 10, 12]) == pytest.approx((imgs[2, 8, 10] / 255.0 - 0.2860) / 0.3530, abs=1e-5)


def _cifar_pickles(root, folder, files, n, label_key, meta):
    rng = np.random.default_rng(0)
    data = {}
    for name in files:
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=n).tolist()
        data[name] = (x, y)
        (root / folder).mkdir(parents=True, exist_ok=True)
        with open(root / folder / name, "wb") as f:
            pickle.dump({"data": x, label_key: y, "batch_label": name}, f, protocol=2)
    with open(root / folder / meta[0], "wb") as f:
        pickle.dump({meta[1]: [f"class{i}" for i in range(10)]}, f, protocol=2)
    return data


def test_cifar10_pickle_batches(tmp_path):
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    raw = _cifar_pickles(tmp_path, "cifar-10-batches-py", batches, 4, "labels", ("batches.meta", "label_names"))
    data = load_dataset("CIFAR-10", tmp_path, verify_checksums=False)
    assert data.train_images.shape == (20, 3, 32, 32) and data.test_images.shape == (4, 3, 32, 32)
    assert data.train_labels.tolist() == sum((raw[b][1] for b in batches[:5]), [])
    row = raw["data_batch_2"][0][1]  # image 5 of the train set; rows hold R, G, B planes of 32x32
    assert int(data.train_images[5, 1, 3, 7]) == int(row[1024 + 3 * 32 + 7])
    x = data.normalized("train").tensors[0]
    assert float(x[5, 1, 3, 7]) == pytest.approx((row[1024 + 3 * 32 + 7] / 255 - 0.4822) / (3 * 0.1994), abs=1e-5)
    assert data.flip and data.num_classes == 10


def test_cifar100_uses_fine_labels(tmp_path):
    raw = _cifar_pickles(
        tmp_path, "cifar-100-python", ["train", "test"], 6, "fine_labels", ("meta", "fine_label_names")
    )
    data = load_dataset("cifar100", tmp_path, verify_checksums=False, limit_train=4)
    assert data.train_labels.tolist() == raw["train"][1][:4] and data.num_classes == 100
    assert dataset_spec("cifar100").num_classes == 100


def test_svhn_mat_files_map_label_10_to_0(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        x = rng.integers(0, 256, size=(32, 32, 3, 6), dtype=np.uint8)
        y = np.array([[10], [1], [2], [10], [9], [5]], dtype=np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    data = load_dataset("svhn", tmp_path, verify_checksums=False)
    assert data.test_labels.tolist() == [0, 1, 2, 0, 9, 5]
    assert int(data.test_images[4, 2, 5, 9]) == int(x[5, 9, 2, 4])  # (H, W, C, N) -> (N, C, H, W)
    assert not data.flip


def test_checksums_reject_files_that_are_not_the_release(tmp_path):
    from scipy.io import savemat

    for split in ("train", "test"):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": np.zeros((32, 32, 3, 1), np.uint8), "y": np.ones((1, 1))})
    with pytest.raises(FileNotFoundError, match="SVHN.*checksum"):
        load_dataset("svhn", tmp_path)


@pytest.mark.parametrize(
    "name, title, file",
    [
        ("mnist", "MNIST", "train-images-idx3-ubyte"),
        ("fashion_mnist", "Fashion-MNIST", "train-images-idx3-ubyte"),
        ("svhn", "SVHN", "train_32x32.mat"),
        ("cifar10", "CIFAR-10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "CIFAR-100", "cifar-100-python/train"),
    ],
)
def test_missing_files_error_names_set_directory_and_fix(tmp_path, name, title, file):
    with pytest.raises(FileNotFoundError, match=f"(?s)^{title}: .*{file}.*{tmp_path}.*download=true"):
        load_dataset(name, tmp_path)
    with pytest.raises(ValueError, match=f"{name}.*data_dir"):
        load_dataset(name, None)
    with pytest.raises(ValueError, match="valid datasets"):
        load_dataset("tiny_imagenet", tmp_path)


def test_read_idx_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)


@pytest.mark.skipif(not MNIST_DIR.exists(), reason="shared MNIST not available")
def test_real_mnist_subset():
    data = load_dataset("mnist", MNIST_DIR, limit_train=500, limit_test=100)
    assert data.train_images.shape == (500, 1, 32, 32)
    assert data.train_labels[:5].tolist() == [5, 0, 4, 1, 9] and data.test_labels[:5].tolist() == [7, 2, 1, 0, 4]
    x = data.normalized("train").tensors[0]
    assert abs(float(x[:, :, 2:30, 2:30].mean())) < 0.1  # Table 4's statistics fit the real images


def test_digits_split_is_fixed_and_seeded():
    a, b, c = (load_dataset("digits", image_size=16, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.train_labels, b.train_labels) and not torch.equal(a.train_labels, c.train_labels)
    assert a.image_shape == (1, 16, 16) and len(a.train_labels) + len(a.test_labels) == 1797
    x = a.normalized("train").tensors[0]
    assert abs(float(x.mean())) < 1e-5 and float(x.std()) == pytest.approx(1.0, abs=1e-4)


def test_the_digits_cache_gives_scikit_learns_split_without_importing_it(tmp_path, monkeypatch):
    """The cached digits equal scikit-learn's load_digits and train_test_split (stratified, seeded), a cached
    load imports no scikit-learn, and a damaged cache file is recomputed and rewritten."""
    import sys

    import numpy as np
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    monkeypatch.setenv("EQPROP_CACHE_DIR", str(tmp_path))
    first = load_dataset("digits", image_size=8, seed=3)
    (cached,) = tmp_path.glob("digits-*-seed3-*.npz")
    sk = sk_digits()
    train, test = train_test_split(np.arange(1797), test_size=0.2, random_state=3, stratify=sk.target)
    assert torch.equal(first.train_labels, torch.as_tensor(sk.target[train]))
    assert torch.equal(first.test_images, torch.as_tensor(sk.images[test], dtype=torch.float32).unsqueeze(1) / 16)
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # importing it now fails
    again = load_dataset("digits", image_size=8, seed=3)
    assert torch.equal(again.train_images, first.train_images) and torch.equal(again.test_labels, first.test_labels)
    monkeypatch.delitem(sys.modules, "sklearn")
    cached.write_bytes(b"damaged")
    assert torch.equal(load_dataset("digits", image_size=8, seed=3).train_labels, first.train_labels)
    assert cached.read_bytes()[:2] == b"PK"  # rewritten (an .npz is a zip file)
    monkeypatch.setenv("EQPROP_CACHE_DIR", "off")
    assert torch.equal(load_dataset("digits", image_size=8, seed=3).train_labels, first.train_labels)


def test_random_flip_and_crop_are_per_image_and_seeded():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2 * 3, 1, 4, 5).repeat(10, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    flipped = random_flip(x, g)
    same = [(flipped[i] == x[i]).all().item() for i in range(len(x))]
    mirrored = [(flipped[i] == x[i].flip(-1)).all().item() for i in range(len(x))]
    assert all(s or m for s, m in zip(same, mirrored)) and 10 < sum(mirrored) < 50
    cropped = random_crop(x, 2, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(x)):
        match = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(cropped[i], padded[i, :, dy : dy + 4, dx : dx + 5])
        ]
        assert match, f"image {i} is not a window of its padded image"
        offsets.add(match[0])
    assert len(offsets) > 5
    assert torch.equal(random_crop(x, 2, torch.Generator().manual_seed(1)), cropped)


@pytest.mark.parametrize("mode", ["edge", "reflect"])
def test_crops_pad_as_torchvision_does(mode):
    """Oracle: torchvision's pad in the same padding_mode (RandomCrop(padding_mode=...) pads with it). Every
    crop is a window of torchvision's padded image; black padding (control) does not explain the crops."""
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(40, 3, 6, 7) + 0.5  # no zero pixels, so any black padding would show
    cropped = Augmentation(crop_padding=3, padding_mode=mode)(x, torch.Generator().manual_seed(2))
    oracle = TF.pad(x, [3], padding_mode=mode)
    black = torch.nn.functional.pad(x, (3, 3, 3, 3))
    offsets, off_centre = set(), 0
    for i in range(len(x)):
        windows = [(dy, dx) for dy in range(7) for dx in range(7)]
        match = [(dy, dx) for dy, dx in windows if torch.equal(cropped[i], oracle[i, :, dy : dy + 6, dx : dx + 7])]
        assert match, f"crop {i} is not a window of torchvision's {mode}-padded image"
        offsets.add(match[0])
        if match[0] != (3, 3):
            off_centre += 1
            assert not any(torch.equal(cropped[i], black[i, :, dy : dy + 6, dx : dx + 7]) for dy, dx in windows)
    assert len(offsets) > 15 and off_centre > 30


def test_augmentation_refuses_bad_settings():
    with pytest.raises(ValueError, match="valid modes are"):
        Augmentation(crop_padding=2, padding_mode="wrap")
    with pytest.raises(ValueError, match="unknown padding_mode 'wrap'"):
        random_crop(torch.zeros(1, 1, 4, 4), 1, padding_mode="wrap")
    with pytest.raises(ValueError, match="crop_padding must be >= 0"):
        Augmentation(crop_padding=-1)
    from eqprop.errors import ConfigError
    from eqprop.training.config import load_config

    with pytest.raises(ConfigError, match="crop_padding_mode"):
        load_config("configs/default.yaml", ["crop_padding_mode=wrap"])


def write_image_folder(root, classes=("n01", "n02", "n03"), per_class=(6, 3), seed=0):
    """An ImageNet-layout tree of real JPEG/PNG files of varied sizes: train/<class>/*, val/<class>/*."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
                pixels = np.full((h, w, 3), 40 * (c + 1), dtype=np.uint8) + rng.integers(
                    0, 30, (h, w, 3), dtype=np.uint8
                )
                ext = "JPEG" if i % 2 else "png"
                Image.fromarray(pixels).save(root / split / name / f"img{i}.{ext}")


def test_image_folder_is_decoded_lazily_at_the_requested_size(tmp_path):
    write_image_folder(tmp_path)
    data = load_dataset("ImageNet", tmp_path, image_size=16)
    assert (len(data.train_labels), len(data.test_labels), data.num_classes, data.flip) == (18, 9, 3, True)
    assert data.image_shape == (3, 16, 16) and data.train_labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    batch = data.train_images[torch.tensor([0, 7, 17])]
    assert batch.shape == (3, 3, 16, 16) and batch.dtype == torch.uint8
    # the classes were written with increasing brightness: the decode keeps them apart
    assert float(batch[0].float().mean()) < float(batch[1].float().mean()) < float(batch[2].float().mean())
    x = data.prepare(data.test_images[0:4])
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    sub = load_dataset("imagenet", tmp_path, image_size=16, limit_train=5, seed=3)
    assert len(sub.train_labels) == 5 and len(set(sub.train_labels.tolist())) > 1  # a random subset, not class 0
    with pytest.raises(FileNotFoundError, match="train/ and val/ with one sub-folder per class"):
        load_dataset("imagenet", tmp_path / "nowhere", image_size=16)


def test_pcn_trains_on_an_image_folder_through_the_pipeline(tmp_path):
    from eqprop.training.config import load_config
    from eqprop.training.trainer import Trainer

    write_image_folder(tmp_path / "data", per_class=(12, 4))
    cfg = load_config(
        "configs/pcn/table8/vgg10_cep.yaml",
        [
            f"data_dir={tmp_path / 'data'}",
            "image_size=16",
            "channels=[4,4,8,8]",
            "pools=[true,true,false,true]",
            "hidden=[8]",
            "crop_padding=2",
            "batch_size=8",
            "epochs=2",
            "nudged_iterations=3",
            "progress=false",
            "tensorboard=false",
            f"out_dir={tmp_path / 'run'}",
        ],
    )
    lines: list[str] = []
    trainer = Trainer(cfg, log=lines.append)
    history = trainer.fit()
    assert len(history) == 2 and all(np.isfinite(row["train_loss"]) for row in history)
    notes = [line for line in lines if line.startswith("eqprop: note:")]  # K = 3 < L: said once, at the start
    expected = f"K = 3 nudged iterations, fewer than the model's {trainer.network.depth} layers"
    assert len(notes) == 1 and expected in notes[0]
    assert (tmp_path / "run" / "checkpoint_last.pt").exists()


# ---- ImageNet32 (the downsampled-ImageNet npz release) and the PCN paper's normalisation -------------------------
def write_imagenet32(root: Path, per_batch=3, val=4, sub=True):
    """Files in the release's format: data (N, 3072) uint8 in R, G, B planes, labels 1..1000 (a list)."""
    train_dir = root / "Imagenet32_train_npz" if sub else root
    val_dir = root / "Imagenet32_val_npz" if sub else root
    train_dir.mkdir(parents=True, exist_ok=True)
    val_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(1, 11):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(1, 1001, per_batch)]
        if i == 1:
            data[0, :1024], data[0, 1024:2048], data[0, 2048:] = 10, 20, 30  # sample 0: a flat (10, 20, 30) image
            labels[0] = 1000
        np.savez(train_dir / f"train_data_batch_{i}.npz", data=data, labels=labels, mean=np.zeros(3072))
    data = rng.integers(0, 256, (val, 3072), dtype=np.uint8)
    np.savez(val_dir / "val_data.npz", data=data, labels=[1] * val)


@pytest.mark.parametrize("sub", [True, False])
def test_imagenet32_npz_release(tmp_path, sub):
    write_imagenet32(tmp_path, sub=sub)
    data = load_dataset("imagenet32", tmp_path)
    assert data.train_images.shape == (30, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (4, 3, 32, 32) and data.num_classes == 1000
    assert data.train_images[0, :, 5, 7].tolist() == [10, 20, 30]  # channel-major planes
    assert int(data.train_labels[0]) == 999 and int(data.train_labels.min()) >= 0  # labels 1..1000 -> 0..999
    assert data.test_labels.tolist() == [0] * 4 and data.flip
    assert dataset_spec("ImageNet32").image_size == 32
    limited = load_dataset("imagenet32", tmp_path, limit_train=5, limit_test=2)
    assert len(limited.train_labels) == 5 and len(limited.test_labels) == 2
    assert torch.equal(limited.train_images, data.train_images[:5])


def test_imagenet32_bad_files_are_named(tmp_path):
    write_imagenet32(tmp_path)
    (tmp_path / "Imagenet32_train_npz" / "train_data_batch_7.npz").unlink()
    with pytest.raises(FileNotFoundError, match="train_data_batch_7.npz"):
        load_dataset("imagenet32", tmp_path)
    write_imagenet32(tmp_path)
    np.savez(tmp_path / "Imagenet32_val_npz" / "val_data.npz", data=np.zeros((2, 3072), np.uint8), labels=[0, 1])
    with pytest.raises(DataError, match="labels must lie in 1..1000"):
        load_dataset("imagenet32", tmp_path)
    np.savez(tmp_path / "Imagenet32_val_npz" / "val_data.npz", data=np.zeros((2, 3072), np.uint8), labels=[1])
    with pytest.raises(DataError, match="2 images but 1 labels"):
        load_dataset("imagenet32", tmp_path)


def test_pcn_normalization_is_the_pcn_papers_table4(tmp_path):
    from eqprop.training.config import ConfigError, parse_overrides
    from eqprop.training.trainer import load_data

    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    _cifar_pickles(tmp_path, "cifar-10-batches-py", batches, 2, "labels", ("batches.meta", "label_names"))
    cfg = parse_overrides(["dataset=cifar10", f"data_dir={tmp_path}", "verify_checksums=false", "normalization=pcn"])
    data = load_data(cfg)
    assert data.std == (0.2023, 0.1994, 0.2010) and data.mean == (0.4914, 0.4822, 0.4465)
    comparative = load_data(parse_overrides(["dataset=cifar10", f"data_dir={tmp_path}", "verify_checksums=false"]))
    assert comparative.std == pytest.approx((3 * 0.2023, 3 * 0.1994, 3 * 0.2010))  # the comparative study's Table 4
    x = data.prepare(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(
        x[0, :, 0, 0], torch.tensor([(1 - 0.4914) / 0.2023, (1 - 0.4822) / 0.1994, (1 - 0.4465) / 0.2010])
    )
    with pytest.raises(ConfigError, match="no statistics for svhn"):
        parse_overrides(["dataset=svhn", "normalization=pcn"])


@pytest.mark.parametrize("name, folder", [("mnist", "mnist"), ("fashion_mnist", "fashion_mnist")])
def test_normalisation_constants_are_the_training_sets_own_statistics(name, folder):
    """Oracle: the mean and std of the real training images (../shared/data), computed here, equal the library's
    constants to their 4 decimals; one normalised pixel is (x - mean) / std."""
    from pathlib import Path

    from eqprop.training.data import load_dataset, read_idx

    root = Path(__file__).resolve().parents[3] / "shared" / "data" / folder
    files = sorted(root.glob("train-images-idx3-ubyte*"))
    if not files:
        pytest.skip(f"the shared {name} files are not here")
    pixels = read_idx(files[0]).astype(np.float64) / 255.0
    data = load_dataset(name, root, limit_train=4, limit_test=4)
    assert data.mean[0] == pytest.approx(pixels.mean(), abs=5e-5)
    assert data.std[0] == pytest.approx(pixels.std(), abs=5e-5)
    x, _ = data.normalized("train").tensors
    raw = float(data.train_images[2, 0, 16, 16]) / 255.0  # padded to 32x32: pixel (14, 14) of the image
    assert float(x[2, 0, 16, 16]) == pytest.approx((raw - data.mean[0]) / data.std[0], abs=1e-6)


# Transcribed from the sources, independently of eqprop.training.data: the comparative study's Table 4 (the default,
# normalization=dataset), the PCN paper's Table 4 (normalization=pcn) and the holomorphic-EP code's tfds loaders
# (normalization=hep: CIFAR-10's mean and 1.5 x its std for CIFAR-10 and CIFAR-100, ImageNet's with 1.5 x std).
PUBLISHED = {
    ("mnist", "dataset"): ((0.1307,), (0.3081,)),
    ("fashion_mnist", "dataset"): ((0.2860,), (0.3530,)),
    ("svhn", "dataset"): ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    ("cifar10", "dataset"): ((0.4914, 0.4822, 0.4465), (0.6069, 0.5982, 0.6030)),
    ("cifar100", "dataset"): ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    ("imagenet32", "dataset"): ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("mnist", "pcn"): ((0.1307,), (0.3081,)),
    ("cifar10", "pcn"): ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    ("cifar100", "pcn"): ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    ("imagenet32", "pcn"): ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("cifar10", "hep"): ((0.4914, 0.4822, 0.4465), (0.30345, 0.2991, 0.3015)),
    ("cifar100", "hep"): ((0.4914, 0.4822, 0.4465), (0.30345, 0.2991, 0.3015)),
    ("imagenet32", "hep"): ((0.485, 0.456, 0.406), (0.3435, 0.336, 0.3375)),
}


def _write_set(name, root):
    """Two or three images of ``name`` in its real on-disk format; returns the first test image as uint8 (C, H, W)."""
    from scipy.io import savemat

    rng = np.random.default_rng(7)
    if name in ("mnist", "fashion_mnist"):
        imgs, _ = _idx_set(root, n=3, seed=3)
        return np.pad(imgs[0], 2)[None]  # padded to 32x32
    if name == "svhn":
        for split in ("train", "test"):
            x = rng.integers(0, 256, size=(32, 32, 3, 3), dtype=np.uint8)
            savemat(root / f"{split}_32x32.mat", {"X": x, "y": np.array([[1], [2], [10]], np.uint8)})
        return x[..., 0].transpose(2, 0, 1)
    if name in ("cifar10", "cifar100"):
        if name == "cifar10":
            files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
            raw = _cifar_pickles(root, "cifar-10-batches-py", files, 2, "labels", ("batches.meta", "label_names"))
            return raw["test_batch"][0][0].reshape(3, 32, 32)
        raw = _cifar_pickles(
            root, "cifar-100-python", ["train", "test"], 2, "fine_labels", ("meta", "fine_label_names")
        )
        return raw["test"][0][0].reshape(3, 32, 32)
    write_imagenet32(root)
    return np.load(root / "Imagenet32_val_npz" / "val_data.npz")["data"][0].reshape(3, 32, 32)


@pytest.mark.parametrize("name, normalization", sorted(PUBLISHED))
def test_every_data_sets_normalisation_is_the_published_table(tmp_path, name, normalization):
    """Each loader's (mean, std) under each normalisation equals the published values, channel by channel, and a
    normalised test pixel of every channel is (x / 255 - mean_c) / std_c: swapping a data set's mean and std, or
    two channels, fails here."""
    from eqprop.training.config import parse_overrides
    from eqprop.training.trainer import load_data

    image = _write_set(name, tmp_path)
    cfg = parse_overrides(
        [f"dataset={name}", f"data_dir={tmp_path}", "verify_checksums=false", f"normalization={normalization}"]
    )
    data = load_data(cfg)
    mean, std = PUBLISHED[(name, normalization)]
    assert data.mean == pytest.approx(mean, abs=1e-12) and data.std == pytest.approx(std, abs=1e-12)
    x = data.normalized("test").tensors[0][0]
    for c in range(len(mean)):
        for i, j in ((5, 9), (20, 13)):
            assert float(x[c, i, j]) == pytest.approx((image[c, i, j] / 255 - mean[c]) / std[c], abs=1e-5), (c, i, j)


def test_cifar10_mean_is_the_training_sets_pixel_mean():
    """Oracle on the real CIFAR-10 training set (../shared/data): the per-channel pixel mean equals the constants
    to their 4 decimals. (The std constants 0.2023, 0.1994, 0.2010 are not the pixel std, about 0.247, 0.243, 0.261:
    they are what the papers publish, and they are pinned above.)"""
    import lzma

    root = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10" / "cifar-10-batches-py"
    files = [root / f"data_batch_{i}.xz" for i in range(1, 6)]
    if not all(f.exists() for f in files):
        pytest.skip("the shared CIFAR-10 files are not here")
    sums, count = np.zeros(3), 0
    for f in files:
        with lzma.open(f) as handle:
            batch = pickle.load(handle, encoding="latin1")["data"].reshape(-1, 3, 1024).astype(np.float64) / 255
        sums += batch.sum(axis=(0, 2))
        count += batch.shape[0] * 1024
    mean = sums / count
    assert mean == pytest.approx(PUBLISHED[("cifar10", "pcn")][0], abs=5e-5)
