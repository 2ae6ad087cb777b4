"""Oracle: the interface. Registries, names, and clear errors for bad arguments."""

import re

import pytest
import torch

from eqprop import (
    Bias,
    ClampNudge,
    ConvPool,
    Dense,
    EnergyNetwork,
    EPNudge,
    Layer,
    SquaredError,
    get_algorithm,
    hopfield_mlp,
    relax,
)
from eqprop.models.base import model_names
from eqprop.models.hamiltonian import HamiltonianSSM
from eqprop.rules.base import ALGORITHMS, algorithm_models
from eqprop.rules.echo_learning import echo
from helpers import ALL, SIGNAL_TINY, signals_for, small_mlp


def test_registry_names_and_aliases():
    assert list(ALGORITHMS)[: len(ALL)] == ALL
    assert sorted(list(ALGORITHMS)[len(ALL) :]) == sorted(
        [
            "PC-CEP",
            "PC-PEP",
            "PC-NEP",
            "PC-REP",
            "PC-CCpL",
            "PC-PCpL",
            "PC-NCpL",
            "PC-RCpL",
            "PC-BP",
            "RHEL",
            "HSSM-BPTT",
            "HEP",
            "BP",
        ]
    )
    assert get_algorithm("pc_cep").name == "PC-CEP" and get_algorithm("hssm_bptt").name == "HSSM-BPTT"
    assert algorithm_models("C-EP") == ("dchn", "mlp", "vgg", "drn", "fhn") and algorithm_models("rhel") == ("hssm",)
    assert model_names("pcn", "hssm") == ["pcn", "hssm"] and model_names()[:3] == ["dchn", "mlp", "vgg"]
    assert get_algorithm("C-EP").name == "CEP" and get_algorithm("ncpl").name == "NCpL"
    assert get_algorithm("CEP", beta=0.3).betas == (-0.3, 0.3)
    assert get_algorithm("NEP", beta=0.3).betas == (-0.3, 0.0)
    assert get_algorithm("CL").betas == (0.0, 1.0)
    with pytest.raises(ValueError, match=r"valid algorithms are \['CL', 'PEP'"):
        get_algorithm("XEP")
    with pytest.raises(ValueError, match="valid costs"):
        get_algorithm("CEP", cost="hinge")
    with pytest.raises(ValueError, match="must differ"):
        get_algorithm("PEP", beta=0.0)


def test_bad_relaxation_arguments():
    net, x, _ = small_mlp()
    with pytest.raises(ValueError, match="valid schedules"):
        relax(net, net.init_state(x), 3, schedule="random")
    with pytest.raises(ValueError, match="valid engines"):
        relax(net, net.init_state(x), 3, engine="jax")
    with pytest.raises(ValueError, match="valid dtypes"):
        relax(net, net.init_state(x), 3, dtype="float8")
    with pytest.raises(ValueError, match="beta > -0.5"):
        y = torch.zeros(8, 5, dtype=torch.float64)
        relax(net, net.init_state(x), 3, nudge=EPNudge(SquaredError(), y, -0.6))


def test_nudges_describe_what_a_captured_phase_bakes_in():
    y = torch.eye(3)
    ep = EPNudge(SquaredError(), y, 0.25)
    assert ep.capture_key() != EPNudge(SquaredError(), y, -0.25).capture_key()  # beta is baked into a graph
    assert ep.capture_key() == EPNudge(SquaredError(), 2 * y, 0.25).capture_key()  # the target is copied in
    buf = torch.zeros(3, 3)
    assert ep.with_tensor(buf).tensor is buf and ep.with_tensor(buf).beta == 0.25
    clamp = ClampNudge(y)
    assert clamp.with_tensor(buf).tensor is buf and clamp.capture_key() != ep.capture_key()


def test_deviation_mode_needs_the_message_engine():
    net, x, _ = small_mlp()
    with pytest.raises(ValueError, match="deviation mode needs engine='messages'"):
        relax(net, net.init_state(x), 3, engine="autograd", deviation=True)


def test_bad_input_shape_is_a_clear_error():
    net = hopfield_mlp((4, 3, 2))
    with pytest.raises(ValueError, match=r"expected \(batch, 4\)"):
        net.init_state(torch.zeros(2, 5))


def test_mismatched_interaction_shapes_are_rejected():
    layers = [Layer("s0", (1, 8, 8), None), Layer("s1", (4, 8, 8)), Layer("s2", (3,), "identity")]
    inters = {"conv1": ConvPool(0, 1, 1, 4), "dense2": Dense(1, 2, (4, 8, 8), (3,)), "bias1": Bias(1, (4, 8, 8))}
    with pytest.raises(ValueError, match="conv1"):
        EnergyNetwork(layers, inters)  # pooling makes 4x4, layer says 8x8
    with pytest.raises(ValueError, match="unknown activation"):
        Layer("s1", (3,), "tanhh")


def test_bad_inputs_are_clear_errors():
    model = HamiltonianSSM(16, [8], 10)
    with pytest.raises(ValueError, match=r"sequence \(T, B, 16\)"):
        model(torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match="unknown HRU type 'cubic'; valid types are"):
        HamiltonianSSM(16, [8], 10, hru="cubic")
    with pytest.raises(ValueError, match="dt must be a positive"):
        HamiltonianSSM(16, [8], 10, dt=0.0)
    with pytest.raises(ValueError, match="one loss gradient .* per step"):
        echo(model.units[0], torch.zeros(2, 8), torch.zeros(2, 8), torch.zeros(5, 2, 16), [None] * 4, 0.1)


def test_signals_need_ep_nudging():
    net, _, _ = small_mlp()
    with pytest.raises(ValueError, match="need EP nudging"):
        get_algorithm("CCpL", signals=signals_for(net, "LE"))


def test_signal_configs_reject_what_cannot_work():
    from eqprop.training.config import ConfigError, load_config
    from eqprop.training.trainer import Trainer

    with pytest.raises(ConfigError, match="need EP nudging"):
        load_config(None, SIGNAL_TINY + ["signals=le", "algorithm=CCpL"])
    with pytest.raises(ConfigError, match="use model=vgg"):
        load_config(None, ["signals=kd"])
    with pytest.raises(ConfigError, match="signal_layers \\[9\\]"):
        Trainer(load_config(None, SIGNAL_TINY + ["signals=le", "signal_layers=[9]"]), log=lambda s: None)
    with pytest.raises(ConfigError, match="KD signals attach to block ends"):
        Trainer(
            load_config(None, SIGNAL_TINY + ["signals=kd", "blocks=[[4,4],[8]]", "signal_layers=[1]"]),
            log=lambda s: None,
        )


def test_cli_maps_only_bad_input_to_exit_code_2(monkeypatch, capsys, tmp_path):
    """Config and data errors are one line and exit code 2; anything else is a bug and keeps its traceback."""
    from eqprop.cli import main
    from eqprop.training.trainer import Trainer

    assert main(["train", "beta=.nan"]) == 2
    assert "finite" in capsys.readouterr().err

    def bug(self):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(Trainer, "fit", bug)
    with pytest.raises(ValueError, match="internal inconsistency"):
        main(["train", "epochs=1", "progress=false", f"out_dir={tmp_path}"])


# ---- packaging: the version, the typing marker, a torch/torchvision pair that does not match
def test_version_option_names_eqprop_torch_and_python(capsys):
    import re
    from pathlib import Path

    import eqprop
    from eqprop.cli import main

    root = Path(__file__).resolve().parents[2]
    declared = re.search(r'^version = "([^"]+)"', (root / "pyproject.toml").read_text(), re.M)[1]
    assert eqprop.__version__ == declared
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith(f"eqprop {declared} (torch ") and "torchvision" in out
    assert (Path(eqprop.__file__).parent / "py.typed").exists() and (root / "LICENSE").exists()


@pytest.mark.parametrize(
    "torch_version, vision_version, matches",
    [
        ("2.14.1+cu130", "0.29.1", True),
        ("2.14.1", "0.28.0", False),
        ("2.1.0", "0.16.2", True),
        ("2.4.0", "0.20.0", False),
    ],
)
def test_a_torchvision_built_for_another_torch_is_named(monkeypatch, torch_version, vision_version, matches):
    from importlib import metadata

    from eqprop.errors import DataError
    from eqprop.training import data

    versions = {"torch": torch_version, "torchvision": vision_version}
    monkeypatch.setattr(metadata, "version", lambda name: versions[name])
    data.check_torchvision.cache_clear()
    try:
        if matches:
            data.check_torchvision()
        else:
            with pytest.raises(DataError, match=rf"torchvision {vision_version} does not match torch {torch_version}"):
                data.check_torchvision()
    finally:
        data.check_torchvision.cache_clear()


def test_one_set_of_keywords_builds_every_rule_or_names_what_a_rule_does_not_take():
    """The same keywords for every registered rule: with ignore_unknown=True each is built with the keywords it
    takes (beta reaches the nudging rules only); without, each rule that lacks one says so in the same words."""
    from eqprop.rules.base import accepted_options

    keywords = dict(beta=0.3, free_iterations=7, nudged_iterations=3, cost="squared_error")
    for name in ALGORITHMS:
        rule = get_algorithm(name, ignore_unknown=True, **keywords)
        takes = accepted_options(name)
        if "beta" in takes and name == "HEP":
            assert abs(rule.beta) == 0.3
        elif "beta" in takes and getattr(getattr(rule, "scheme", None), "name", "") != "random":
            assert 0.3 in [abs(b) for b in rule.betas if b], name
        if "free_iterations" in takes:
            assert rule.phases.free_iterations == 7, name
        extra = sorted(set(keywords) - takes)
        if extra:
            with pytest.raises(TypeError, match=rf"rule '{name}' takes no option\(s\) {re.escape(str(extra))}"):
                get_algorithm(name, **keywords)
    with pytest.raises(TypeError, match=r"rule 'CEP' takes no option\(s\) \['betta'\]"):
        get_algorithm("CEP", betta=0.1)
