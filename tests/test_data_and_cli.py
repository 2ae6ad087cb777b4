import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from eqprop.cli import main, parse_overrides
from eqprop.data import load_digits, load_mnist, read_idx
from eqprop.train import DivergenceError, TrainConfig, Trainer

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def _write_idx(path, arr, compress):
    code = {np.uint8: 0x08}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + arr.tobytes())


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_loader_on_generated_idx_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    imgs = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, size=7, dtype=np.uint8)
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte{suffix}", imgs, compress)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte{suffix}", labs, compress)
    train, test = load_mnist(tmp_path)
    x, y = train.tensors
    assert x.shape == (7, 1, 32, 32) and y.tolist() == labs.tolist()
    expected = (imgs[3, 5, 6] / 255.0 - 0.1307) / 0.3081
    assert float(x[3, 0, 7, 8]) == pytest.approx(expected, abs=1e-5)  # padded by 2 pixels (appendix D)
    assert float(x[0, 0, 0, 0]) == pytest.approx(-0.1307 / 0.3081, abs=1e-6)


def test_mnist_missing_files_error_names_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST.*train-images-idx3-ubyte"):
        load_mnist(tmp_path)
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)


@pytest.mark.skipif(not MNIST_DIR.exists(), reason="shared MNIST not available")
def test_real_mnist_subset():
    train, test = load_mnist(MNIST_DIR, limit_train=500, limit_test=100)
    assert train.tensors[0].shape == (500, 1, 32, 32)
    assert train.tensors[1][:5].tolist() == [5, 0, 4, 1, 9]
    assert test.tensors[1][:5].tolist() == [7, 2, 1, 0, 4]


def test_digits_split_is_fixed_and_seeded():
    a, _ = load_digits(16)
    b, _ = load_digits(16)
    c, _ = load_digits(16, seed=1)
    assert torch.equal(a.tensors[1], b.tensors[1]) and not torch.equal(a.tensors[1], c.tensors[1])
    assert a.tensors[0].shape[1:] == (1, 16, 16) and len(a) + 360 == 1797


def test_config_overrides_are_typed_and_validated():
    cfg = parse_overrides(["algorithm=NEP", "epochs=2", "lrs=[0.1,0.2,0.3,0.4]", "out_dir=none", "beta=0.3"])
    assert (cfg.algorithm, cfg.epochs, cfg.lrs, cfg.out_dir, cfg.beta) == ("NEP", 2, [0.1, 0.2, 0.3, 0.4], None, 0.3)
    with pytest.raises(ValueError, match="unknown config key 'epoch'.*valid keys"):
        parse_overrides(["epoch=2"])
    with pytest.raises(ValueError, match="'beta'.*float"):
        parse_overrides(["beta=big"])


def test_cli_train_end_to_end_writes_metrics_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "epochs=2", "free_iterations=6", "nudged_iterations=3", "channels=[8,16,16]",
               f"out_dir={out}"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "epoch   2" in printed and "test error" in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0.0 <= r["test_error"] <= 1.0 for r in rows)
    ckpt = torch.load(out / "checkpoint_last.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and "interactions.conv1.weight" in ckpt["network"]


def test_cli_reports_bad_input(capsys):
    assert main(["train", "algorithm=XEP", "epochs=1"]) == 2
    assert "valid algorithms" in capsys.readouterr().err


def test_divergence_stops_with_message_and_keeps_checkpoint(tmp_path):
    cfg = TrainConfig(model="mlp", image_size=8, hidden=[16], gains=[0.5, 0.5], lrs=[1e6, 1e6],
                      free_iterations=4, nudged_iterations=2, epochs=3, out_dir=str(tmp_path))
    trainer = Trainer(cfg, log=lambda s: None)
    with pytest.raises(DivergenceError, match="diverged"):
        trainer.fit()
    ckpt = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["network"].values())
