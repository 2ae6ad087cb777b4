"""Oracle: the run's own checkpoint. A trained network leaves its run as a file that opens without running code
(``torch.load(weights_only=True)``, safetensors) and comes back, through ``eqprop.load_model``, as the same network:
the same weights and the same predictions as the checkpoint it came from."""

import random

import numpy as np
import pytest
import torch

import eqprop
from eqprop.cli import main
from eqprop.errors import RunError

TINY = [
    "model=mlp",
    "hidden=[16]",
    "gains=[0.5,0.5]",
    "lrs=[0.05,0.05]",
    "free_iterations=6",
    "nudged_iterations=3",
    "epochs=2",
    "limit_train=64",
    "limit_test=32",
    "batch_size=32",
    "progress=false",
    "tensorboard=false",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("saved") / "run"
    assert main(["train", *TINY, f"out_dir={out}"]) == 0
    return out


def test_checkpoints_open_with_weights_only(run):
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)
    assert state["epoch"] == 2 and set(state["network"]) == set(eqprop.load_model(run).state_dict())


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_export_and_load_give_back_the_checkpoints_network(run, tmp_path, capsys, suffix):
    out = tmp_path / f"model{suffix}"
    assert main(["export", str(run), "-o", str(out), "--checkpoint", "last"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    saved = torch.load(run / "checkpoint_last.pt", weights_only=True)["network"]
    if suffix == ".pt":
        exported = torch.load(out, weights_only=True)
        assert exported["format"] == "eqprop-model/1" and exported["epoch"] == 2 and exported["input_shape"] == [256]
        assert exported["config"]["model"]["hidden"] == [16]
    net = eqprop.load_model(out)
    assert not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, saved[key]), key
    x = torch.rand(7, 256, generator=torch.Generator().manual_seed(1))
    assert torch.equal(net(x), eqprop.load_model(run, "last")(x))


def test_forward_is_the_free_phase_output(run):
    net = eqprop.load_model(run, "last")
    x = torch.rand(5, 256, generator=torch.Generator().manual_seed(2))
    alg = eqprop.get_algorithm("CEP", free_iterations=60)
    with torch.no_grad():
        free = alg.free_phase(net, x)
    assert torch.equal(net(x), free.states[-1]) and net(x, iterations=6).shape == (5, 10)
    assert not torch.equal(net(x, iterations=1), net(x))


def test_load_model_names_what_it_cannot_read(tmp_path, run):
    with pytest.raises(RunError, match="not a run directory"):
        eqprop.load_model(tmp_path)
    (tmp_path / "weights.pt").write_bytes(b"not a model")
    with pytest.raises(RunError, match="weights.pt is damaged or not an exported eqprop model"):
        eqprop.load_model(tmp_path / "weights.pt")
    torch.save({"a": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(RunError, match="not a file that `eqprop export` wrote"):
        eqprop.load_model(tmp_path / "other.pt")
    with pytest.raises(RunError, match="does not exist"):
        eqprop.load_model(tmp_path / "missing.pt")


def test_seed_everything_seeds_every_generator_alike():
    def draw():
        g = eqprop.seed_everything(123)
        return (torch.rand(3), np.random.rand(3).tolist(), random.random(), torch.rand(3, generator=g))

    a, b = draw(), draw()
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2] and torch.equal(a[3], b[3])
    eqprop.seed_everything(124)
    assert not torch.equal(a[0], torch.rand(3))


def test_the_names_the_docs_use_are_exported():
    for name in ("Trainer", "evaluate", "load_run", "Callback", "StepResult", "load_model", "export_model"):
        assert getattr(eqprop, name) is not None and name in eqprop.__all__
