"""docs/extending.md: its three examples (a model, a learning rule, a solver), each one file plus one registration,
run as written and checked against the oracles the library's own code is checked against."""

import json
import math
import re

import pytest
import torch

import eqprop.core.relaxation as relaxation
import eqprop.models.base as models
import eqprop.rules.base as rules
from eqprop import get_algorithm, hopfield_mlp, relax
from eqprop.training.config import parse_overrides
from eqprop.training.trainer import Trainer, build_algorithm
from helpers import CONVERGED, ROOT, loglog_slope, max_diff, rel_error, small_conv


@pytest.fixture(scope="module")
def examples():
    """The page's code blocks executed in order in one namespace; the registries restored afterwards."""
    registries = [
        rules.ALGORITHMS,
        rules.ALGORITHM_FAMILIES,
        rules.ALGORITHM_OPTIONS,
        relaxation.SOLVERS,
        models.MODELS,
    ]
    from eqprop import settings

    registries.append(settings.SECTION_REGISTRY)
    saved = [dict(r) for r in registries]
    text = (ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/extending.md", "exec"), namespace)
    yield namespace
    for registry, before in zip(registries, saved):
        registry.clear()
        registry.update(before)


def test_a_new_model_trains_from_a_config_and_its_update_is_the_gradient(examples, tmp_path):
    cfg = parse_overrides(
        ["model=skip_mlp", "hidden=[24]", "gains=[0.5]", "lrs=[0.01]", "image_size=8", "epochs=2", "batch_size=32"]
        + ["free_iterations=15", "nudged_iterations=6", "beta=0.2", "progress=false", f"out_dir={tmp_path}"]
    )
    history = Trainer(cfg, log=lambda s: None).fit()
    # measured: train loss 0.78 -> 0.36, test error 11.7% -> 6.1%
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"] and history[-1]["test_error"] < 0.1
    torch.manual_seed(0)
    net = examples["skip_mlp"]([12, 10, 4], gains=0.8).double()
    assert "skip" in net.terms and net.terms["skip"].pre == 0 and net.terms["skip"].post == 2
    x, labels = torch.rand(6, 12, dtype=torch.float64), torch.randint(0, 4, (6,))
    rbp = get_algorithm("RBP", cg_tol=1e-13, **CONVERGED).step(net, x, labels).grads
    cep = get_algorithm("CEP", beta=1e-3, **CONVERGED).step(net, x, labels).grads
    assert rel_error(cep, rbp) < 1e-4
    assert float(cep[-2].abs().max()) > 1e-3  # the skip weights get an update


def test_a_models_own_key_and_defaults_reach_its_builder(examples):
    from eqprop.errors import ConfigError

    cfg = parse_overrides(["model=skip_mlp2", "skip_gain=0.05", "image_size=8"])
    assert cfg.hidden == [24] and cfg.lrs == [0.01] and cfg.skip_mlp.skip_gain == 0.05  # defaults, then the key
    net = Trainer(cfg, log=lambda s: None).network
    bound = 0.05 / math.sqrt(64)
    assert 0 < float(net.terms["skip"].weight.detach().abs().max()) <= bound
    with pytest.raises(ConfigError, match="skip_gain"):
        parse_overrides(["model=skip_mlp2", "skip_gain=-1"])


def test_a_new_rule_has_the_bias_order_it_claims(examples):
    assert build_algorithm(parse_overrides(["algorithm=EP5", "beta=0.05"])).beta == 0.05
    torch.manual_seed(0)
    net = hopfield_mlp((10, 8, 6, 4), gains=0.5, activation="identity").double()
    x, labels = torch.rand(6, 10, dtype=torch.float64), torch.randint(0, 4, (6,))
    rbp = get_algorithm("RBP", cg_tol=1e-14, **CONVERGED).step(net, x, labels).grads
    betas = [0.05, 0.025, 0.0125]
    five = [rel_error(get_algorithm("EP5", beta=b, **CONVERGED).step(net, x, labels).grads, rbp) for b in betas]
    cep = [rel_error(get_algorithm("CEP", beta=b, **CONVERGED).step(net, x, labels).grads, rbp) for b in betas]
    assert 3.7 < loglog_slope(betas, five) < 4.5  # measured 4.1: O(beta^4)
    assert 1.8 < loglog_slope(betas, cep) < 2.2  # measured 2.0: O(beta^2)
    assert five[-1] < cep[-1] / 100


def test_a_new_solver_reaches_the_same_fixed_points_and_trains(examples):
    assert parse_overrides(["solver=damped"]).solver == "damped"
    net, x, labels = small_conv()
    damped = relaxation.get_solver("damped")(net, net.init_state(x), 400).states
    plain = relax(net, net.init_state(x), 200).states
    assert max_diff(damped, plain) < 1e-10
    assert max_diff(relaxation.get_solver("damped")(net, net.init_state(x), 3).states, plain) > 1e-3  # slower
    ours = get_algorithm("CEP", beta=0.05, solver="damped", free_iterations=400, nudged_iterations=400)
    ref = get_algorithm("CEP", beta=0.05, **CONVERGED)
    assert rel_error(ours.step(net, x, labels).grads, ref.step(net, x, labels).grads) < 1e-8
    assert math.isfinite(float(ours.step(net, x, labels).loss.mean()))


PLUGIN = """
import math

from eqprop import hopfield_mlp, register_model


def build(cfg, input_shape, num_classes):
    return hopfield_mlp([math.prod(input_shape), 32, num_classes], gains=0.5)


register_model("{name}", build, "hopfield", flat_input=True, defaults={{"lrs": [0.05], "gains": [0.5]}})
"""
QUICK = ["epochs=1", "limit_train=128", "limit_test=64", "progress=false", "tensorboard=false", "threads=1"]


def eqprop_cli(*args, cwd, env=None):
    import os
    import subprocess
    import sys

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "eqprop", *args], cwd=cwd, env=full_env, capture_output=True, text=True
    )


def test_a_users_module_is_usable_from_the_command_line_and_recorded_for_later(tmp_path):
    """``--import my_models`` (a module in the current folder) or ``--import path/to/file.py`` registers the user's
    model for this command; the run's config records it, so ``eqprop eval`` imports it again by itself."""
    (tmp_path / "my_models.py").write_text(PLUGIN.format(name="lab_mlp"))
    refused = eqprop_cli("train", "model=lab_mlp", *QUICK, cwd=tmp_path)
    assert refused.returncode == 2 and "'lab_mlp' is not valid" in refused.stderr
    done = eqprop_cli("train", "--import", "my_models", "model=lab_mlp", *QUICK, "out_dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["run"]["imports"] == ["my_models"]
    again = eqprop_cli("eval", "run", cwd=tmp_path)
    assert again.returncode == 0 and "test error" in again.stdout, again.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    by_path = eqprop_cli(
        "train", "--import", str(tmp_path / "my_models.py"), "model=lab_mlp", *QUICK, "out_dir=r", cwd=elsewhere
    )
    assert by_path.returncode == 0, by_path.stderr[-2000:]
    missing = eqprop_cli("train", "--import", "no_such_module", *QUICK, cwd=elsewhere)
    assert missing.returncode == 2 and "cannot import 'no_such_module'" in missing.stderr


def test_an_installed_package_registers_through_the_eqprop_plugins_entry_point(tmp_path):
    """A package that lists a module under the ``eqprop.plugins`` entry points (its dist-info on the path, as pip
    installs it) is imported by the command line with no option."""
    site = tmp_path / "site"
    (site / "lab_plugin").mkdir(parents=True)
    (site / "lab_plugin" / "__init__.py").write_text(PLUGIN.format(name="plugin_mlp"))
    info = site / "lab_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[eqprop.plugins]\nmodels = lab_plugin\n")
    import os

    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    done = eqprop_cli("train", "model=plugin_mlp", *QUICK, "out_dir=run", cwd=tmp_path, env={"PYTHONPATH": path})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["kind"] == "plugin_mlp"
