"""Trained networks outside their runs: :func:`export_model` writes a run's weights and config as a file that opens
with ``torch.load(..., weights_only=True)`` (or as safetensors), and :func:`load_model` builds the trained network
from a run directory or such a file, without loading the data set.

    net = eqprop.load_model("runs/digits_CEP_seed0_...")       # the best checkpoint's weights
    prediction = net(x)                                          # the free equilibrium's output (models' forward)

The exported ``.pt`` file holds plain values and tensors: ``format``, ``eqprop_version``, ``config`` (the run's
sectioned config), ``input_shape``, ``num_classes``, ``epoch``, ``test_error`` and ``network`` (the state dict).
A ``.safetensors`` file holds the state dict, with the rest as JSON strings in its metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RunError
from .config import TrainConfig, config_from_dict
from .run_directory import atomic_save, is_run_directory

__all__ = ["FORMAT", "export_model", "load_model", "model_input_shape"]

FORMAT = "eqprop-model/1"


def model_input_shape(cfg: TrainConfig) -> tuple[tuple[int, ...], int]:
    """(the input shape the model is built for, the number of classes), from the data set's registration alone."""
    from ..models.base import model_spec
    from .data import dataset_spec

    spec = dataset_spec(cfg.dataset)
    size = spec.image_size or cfg.image_size
    shape: tuple[int, ...] = (spec.in_channels, size, size)
    if model_spec(cfg.model.kind).flat_input:
        shape = (spec.in_channels * size * size,)
    return shape, spec.num_classes


def _build(cfg: TrainConfig, shape: tuple[int, ...], num_classes: int, state: dict[str, Any], where: Path) -> nn.Module:
    from .trainer import build_network

    network = build_network(cfg, shape, num_classes)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise RunError(f"{where} does not fit the network its config builds: {detail[:300]}") from None
    return network.to(getattr(torch, cfg.precision)).eval()


def _checkpoint(run_dir: Path, checkpoint: str) -> tuple[TrainConfig, dict[str, Any], Path]:
    from .trainer import read_run_checkpoint, read_run_config

    cfg = read_run_config(run_dir)
    state, path = read_run_checkpoint(run_dir, checkpoint, "eval")
    return cfg, state, path


def load_model(path: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> nn.Module:
    """The trained network of a run directory (its ``checkpoint_{checkpoint}.pt``: ``best`` or ``last``) or of a
    file written by :func:`export_model` (``.pt`` or ``.safetensors``), in eval mode on ``device``."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not is_run_directory(path):
            raise RunError(f"{path} is not a run directory (no config.json) and not an exported model file")
        cfg, state, where = _checkpoint(path, checkpoint)
        shape, classes = model_input_shape(cfg)
        return _build(cfg, shape, classes, state["network"], where).to(device)
    if not path.exists():
        raise RunError(f"{path} does not exist: give a run directory or a file written by `eqprop export`")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != FORMAT:
            raise RunError(f"{path} is a safetensors file, but not one that `eqprop export` wrote")
        saved: dict[str, Any] = {k: json.loads(v) for k, v in meta.items() if k != "format"}
        saved["network"] = weights
    else:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise RunError(f"{path} is damaged or not an exported eqprop model ({type(exc).__name__})") from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise RunError(f"{path} is not a file that `eqprop export` wrote (no format {FORMAT!r})")
    cfg = config_from_dict(saved["config"])
    shape = tuple(int(n) for n in saved["input_shape"])
    return _build(cfg, shape, int(saved["num_classes"]), saved["network"], path).to(device)


def export_model(run_dir: str | Path, output: str | Path, checkpoint: str = "best") -> Path:
    """Write the weights of ``run_dir``'s ``checkpoint_{checkpoint}.pt`` with its config to ``output``: a ``.pt``
    file that ``torch.load(..., weights_only=True)`` opens, or ``.safetensors``. Returns the file written."""
    run_dir, output = Path(run_dir).expanduser(), Path(output).expanduser()
    if output.is_dir():
        output = output / f"{run_dir.name}.pt"
    cfg, state, where = _checkpoint(run_dir, checkpoint)
    shape, classes = model_input_shape(cfg)
    _build(cfg, shape, classes, state["network"], where)  # the weights fit the network the config builds
    from .. import __version__

    history = state.get("history") or []
    epoch = int(state["epoch"])
    row = next((r for r in history if r.get("epoch") == epoch), None)
    record: dict[str, Any] = {
        "eqprop_version": __version__,
        "config": json.loads(json.dumps(cfg.to_dict())),
        "input_shape": list(shape),
        "num_classes": classes,
        "epoch": epoch,
        "test_error": None if row is None else row.get("test_error"),
    }
    weights = {k: v.detach().cpu().contiguous() for k, v in state["network"].items()}
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create {output.parent} ({exc.strerror}); choose a writable -o path") from None
    if output.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {"format": FORMAT, **{k: json.dumps(v) for k, v in record.items()}}
        save_file(weights, str(output), metadata=meta)
    else:
        atomic_save({"format": FORMAT, **record, "network": weights}, output)
    return output
