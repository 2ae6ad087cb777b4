"""The config in sections: each section validated by its owner, flat keys kept as aliases, old files loading."""

import json
import math

import pytest

from eqprop.training.config import SECTIONS, ConfigError, TrainConfig, config_from_dict, load_config, parse_overrides
from eqprop.training.trainer import build_phases, read_run_config


def test_sections_and_flat_aliases_are_the_same_settings():
    cfg = parse_overrides(["relax.free_iterations=7", "beta=0.3", "model=pcn", "algorithm=PC-CEP"])
    assert cfg.relax.free_iterations == cfg.free_iterations == 7
    assert cfg.rule.beta == cfg.beta == 0.3 and cfg.model.kind == "pcn" and cfg.rule.algorithm == "PC-CEP"
    cfg.out_dir = "somewhere"
    assert cfg.run.out_dir == "somewhere"
    # the seven core sections, then those the model families and rules register in their files
    families = {"dchn", "vgg", "pcn", "hssm", "resistive", "fhn", "hep", "echo", "rbp"}
    core = {"data", "model", "relax", "rule", "signals", "optim", "run"}
    assert set(cfg.to_dict()) == set(SECTIONS) == core | families
    assert list(SECTIONS)[:7] == ["data", "model", "relax", "rule", "signals", "optim", "run"]
    assert cfg.input_gain == cfg.resistive.input_gain == 1.0  # a registered section's keys are flat keys too
    assert TrainConfig(model="mlp", relax={"nudged_iterations": 3}).to_dict()["relax"]["nudged_iterations"] == 3
    assert build_phases(cfg).solver == "mod-pgd"  # the model's default solver
    with pytest.raises(AttributeError, match="no setting 'betta'"):
        cfg.betta = 1


def test_family_keys_live_in_their_files_and_old_configs_still_reach_them(tmp_path):
    """Each family's and rule's own keys are declared by the file that reads them; configs and run directories
    that wrote them under ``model:``/``rule:`` (every run before the move) load as the same config."""
    import dataclasses
    import inspect

    from eqprop.models import base as model_base
    from eqprop.rules import base as rule_base

    owners = {"dchn": "hopfield", "vgg": "hopfield", "pcn": "predictive_coding", "hssm": "hamiltonian"}
    owners |= {
        "fhn": "fitzhugh_nagumo",
        "resistive": "resistive",
        "hep": "holomorphic",
        "echo": "echo_learning",
        "rbp": "backprop",
    }
    for section, module in owners.items():
        assert SECTIONS[section].__module__.rsplit(".", 1)[-1] == module
    assert {f.name for f in dataclasses.fields(SECTIONS["model"])} == {
        "kind", "channels", "hidden", "gains", "activation", "readout", "bias_init", "bias_scale", "pooling",
        "pool_temperature",
    }  # fmt: skip
    assert {f.name for f in dataclasses.fields(SECTIONS["rule"])} == {"algorithm", "beta", "cost", "nudged_output"}
    for module, families in ((model_base, ("hamiltonian", "predictive_coding")), (rule_base, ("echo_learning",))):
        assert not any(f"from .{name} import" in inspect.getsource(module) for name in families)

    new = parse_overrides(["model=hssm", "algorithm=RHEL", "hru=linear", "dt=0.05", "echo_stack=sequential"])
    assert (new.hssm.hru, new.hssm.dt, new.echo.echo_stack) == ("linear", 0.05, "sequential")
    old = new.to_dict()
    for section in ("hssm", "echo", "hep", "rbp", "dchn", "vgg", "pcn"):  # the layout of a run made before the move
        moved = old.pop(section)
        old["rule" if section in ("echo", "hep", "rbp") else "model"].update(moved)
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert read_run_config(tmp_path).to_dict() == new.to_dict()
    assert parse_overrides(["model=hssm", "algorithm=RHEL", "model.hru=linear", "rule.points=3"]).flat() == (
        parse_overrides(["model=hssm", "algorithm=RHEL", "hssm.hru=linear", "hep.points=3"]).flat()
    )
    # a key under a section it never belonged to names the section it does belong to
    with pytest.raises(ConfigError, match="unknown key 'points' in section 'model'.*belongs to section 'hep'"):
        config_from_dict({"model": {"points": 3}})
    # a family's section still checks against the others: PCN pools, one per conv layer
    with pytest.raises(ConfigError, match="'pools'.*expected 2 entries"):
        parse_overrides(["model=pcn", "algorithm=PC-CEP", "channels=[4,8]", "pools=[true]"])
    with pytest.raises(ConfigError, match="'paddings'.*expected 3 entries"):
        parse_overrides(["paddings=[1]"])


def test_sectioned_and_flat_yaml_files_give_the_same_config(tmp_path):
    (tmp_path / "flat.yaml").write_text("algorithm: NEP\nbeta: 0.2\nfree_iterations: 11\nmodel: mlp\nhidden: [8]\n")
    (tmp_path / "sections.yaml").write_text(
        "rule: {algorithm: NEP, beta: 0.2}\nrelax: {free_iterations: 11}\nmodel: {kind: mlp, hidden: [8]}\n"
    )
    (tmp_path / "mixed.yaml").write_text("base: sections.yaml\nrule: {beta: 0.4}\nepochs: 2\n")
    flat, sections = load_config(tmp_path / "flat.yaml"), load_config(tmp_path / "sections.yaml")
    assert flat.to_dict() == sections.to_dict()
    mixed = load_config(tmp_path / "mixed.yaml")
    assert (mixed.beta, mixed.algorithm, mixed.epochs, mixed.hidden) == (0.4, "NEP", 2, [8])


def test_each_section_validates_its_own_keys(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'betta' in section 'rule'"):
        config_from_dict({"rule": {"betta": 0.1}})
    with pytest.raises(ConfigError, match="'solver'.*'jacobi'.*messages"):
        parse_overrides(["solver=jacobi"])
    with pytest.raises(ConfigError, match="'first'.*'middle'"):
        parse_overrides(["relax.first=middle"])
    with pytest.raises(ConfigError, match="'model'.*'resnet'.*dchn"):
        parse_overrides(["model=resnet"])
    for key in ("beta", "momentum", "kappa", "dt", "lrs"):  # non-finite numbers never pass
        with pytest.raises(ConfigError, match=f"'{key}(\\[0\\])?'.*finite"):
            parse_overrides([f"{key}=.nan"])
    with pytest.raises(ConfigError, match="'tau'.*finite"):
        TrainConfig(tau=math.inf)
    # the public code's conventions: only where they mean something
    with pytest.raises(ConfigError, match="'init=persistent'.*'pcn' does not relax.*dchn, mlp, vgg"):
        parse_overrides(["model=pcn", "algorithm=PC-CEP", "init=persistent"])
    with pytest.raises(ConfigError, match="'bias_init=uniform'.*'pcn' has its own bias init"):
        parse_overrides(["model=pcn", "algorithm=PC-CEP", "bias_init=uniform"])
    with pytest.raises(ConfigError, match="'bias_scale' must be > 0"):
        parse_overrides(["bias_init=uniform", "bias_scale=0"])
    with pytest.raises(ConfigError, match="'nudged_output'.*'jump'.*exact"):
        parse_overrides(["nudged_output=jump"])
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_run_directories_saved_with_flat_configs_still_load(tmp_path):
    """config.json of runs made before the sections (flat keys) reads as the same config."""
    cfg = parse_overrides(["algorithm=NEP", "beta=0.2", "epochs=3", "channels=[8,16]", "dtype=bfloat16"])
    (tmp_path / "config.json").write_text(json.dumps(cfg.flat()))
    assert read_run_config(tmp_path).to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "key, optional",
    [
        ("fallback_tol", True),
        ("epsilon", False),
        ("max_loss", True),
        ("tau", False),
        ("tol", True),
        ("bias_scale", False),
        ("pool_temperature", False),
        ("dt", False),
    ],
)
def test_keys_that_must_be_positive_refuse_zero_and_negatives_and_say_whether_null_is_allowed(key, optional):
    for bad in ("0", "-1.5"):
        with pytest.raises(ConfigError, match=f"^config key '{key}' must be > 0{' or null' if optional else ''}, got"):
            parse_overrides([f"{key}={bad}"])
    assert getattr(parse_overrides([f"{key}=0.25"]), key) == 0.25
    if optional:
        assert getattr(parse_overrides([f"{key}=null"]), key) is None
    else:
        with pytest.raises(ConfigError, match=f"'{key}': expected float"):
            parse_overrides([f"{key}=null"])


def test_a_rules_own_section_passes_its_keyword_to_the_rule():
    """A rule registered with a section of its own (``options``: field -> keyword) is built with the field's value,
    from the flat key, the section key and the default; rules that do not ask for it never see it."""
    from dataclasses import dataclass
    from typing import ClassVar

    from eqprop import settings
    from eqprop.rules import base as rules
    from eqprop.settings import Section, register_section, setting
    from eqprop.training.trainer import build_algorithm

    saved = [dict(r) for r in (rules.ALGORITHMS, rules.ALGORITHM_FAMILIES, rules.ALGORITHM_OPTIONS)]
    saved_sections = dict(settings.SECTION_REGISTRY)
    try:

        @dataclass
        class WindowSection(Section):
            name: ClassVar[str] = "window"
            options: ClassVar[dict[str, str]] = {"window_width": "width"}
            window_width: int = setting(3, "test rule: a width")

            def validate(self) -> None:
                self.at_least(1, "window_width")

        register_section(WindowSection, "algorithm=WINDOW")
        built = []

        def factory(*, cost, phases, width):
            built.append(width)
            return rules.get_algorithm("CEP", cost=cost, phases=phases)

        rules.register_algorithm("WINDOW", factory, options=("cost", "phases", "width"))
        build_algorithm(parse_overrides(["algorithm=WINDOW"]))
        build_algorithm(parse_overrides(["algorithm=WINDOW", "window_width=7"]))
        build_algorithm(parse_overrides(["algorithm=WINDOW", "window.window_width=9"]))
        assert built == [3, 7, 9]
        build_algorithm(parse_overrides(["algorithm=CEP", "window_width=5"]))  # CEP does not take ``width``
        with pytest.raises(ConfigError, match="'window_width' must be >= 1"):
            parse_overrides(["algorithm=WINDOW", "window_width=0"])
    finally:
        for registry, before in zip((rules.ALGORITHMS, rules.ALGORITHM_FAMILIES, rules.ALGORITHM_OPTIONS), saved):
            registry.clear()
            registry.update(before)
        settings.SECTION_REGISTRY.clear()
        settings.SECTION_REGISTRY.update(saved_sections)


@pytest.mark.parametrize(
    "model, brings",
    [
        ("mlp", {"hidden": [256], "lrs": [0.05]}),
        ("vgg", {"blocks": [[16], [32], [64]], "gains": [0.8]}),
        ("pcn", {"algorithm": "PC-CEP", "lrs": [0.03]}),
        ("hssm", {"algorithm": "RHEL", "lrs": [0.01]}),
        ("fhn", {"cost": "half_squared_error", "lrs": [0.005]}),
    ],
)
def test_every_model_trains_on_digits_with_no_other_key(tmp_path, model, brings):
    """``eqprop train model=X`` runs: the model brings its own rule, widths, gains and rates; it learns (chance: 90%
    test error) in two short epochs. A key the user sets still wins over the model's default."""
    from eqprop.training.trainer import Trainer

    cfg = parse_overrides([f"model={model}", "epochs=2", "progress=false", f"out_dir={tmp_path}"])
    assert {k: cfg.flat()[k] for k in brings} == brings
    history = Trainer(cfg, log=lambda s: None).fit()
    assert history[-1]["test_error"] < 0.6, history[-1]  # measured: mlp 3%, vgg 29%, pcn 21%, hssm 46%
    assert parse_overrides([f"model={model}", "lrs=[0.002]"]).lrs == [0.002]


def test_a_misspelt_key_gets_the_closest_names():
    with pytest.raises(ConfigError, match=r"unknown config key 'betta' \(did you mean 'beta'\?\)"):
        parse_overrides(["betta=0.1"])
    with pytest.raises(ConfigError, match=r"'free_iteration' in section 'relax' \(did you mean 'free_iterations'"):
        parse_overrides(["relax.free_iteration=3"])
    with pytest.raises(ConfigError) as info:
        parse_overrides(["zzz=1"])
    assert "did you mean" not in str(info.value)


def test_a_config_with_several_problems_names_every_one_at_once(tmp_path, capsys):
    """Unknown keys, mistyped and out-of-range values and a rule that does not train the model: one error lists
    them all (not one per attempt), each naming its key."""
    from eqprop.cli import main

    with pytest.raises(ConfigError) as info:
        parse_overrides(["lr=3", "batch_size=-2", "free_iterations=-1", "algorithm=XEP", "beta=abc", "epoch=2"])
    problems = info.value.problems
    assert len(problems) == 6 and str(info.value).startswith("6 problems in the config:")
    needles = (
        "'lr' (did you mean 'lrs'",
        "'batch_size' must be >= 1",
        "'free_iterations' must be >= 1",
        "'algorithm': 'XEP' is not valid",
        "'beta': expected float",
        "'epoch' (did you mean 'epochs'",
    )
    for needle in needles:
        assert sum(needle in p for p in problems) == 1, needle
    # the checks across sections are collected too: a rule that does not train the model, and persistent init on
    # a model that does not relax
    with pytest.raises(ConfigError) as info:
        parse_overrides(["model=hssm", "algorithm=CEP", "init=persistent"])
    assert len(info.value.problems) == 2
    assert any("does not train model 'hssm'" in p for p in info.value.problems)
    assert any("init=persistent" in p for p in info.value.problems)
    # one problem keeps its plain message; a YAML file's problems are all named with the file
    with pytest.raises(ConfigError) as info:
        parse_overrides(["batch_size=0"])
    assert info.value.problems == [str(info.value)] and "problems in the config" not in str(info.value)
    path = tmp_path / "exp.yaml"
    path.write_text("batch_size: 0\nbetta: 1\nrelax: {free_iterations: 0, free_iteration: 3}\n")
    assert main(["train", str(path), "epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "4 problems in the config" in err and str(path) in err
    for needle in ("'batch_size' must be >= 1", "'betta' (did you mean 'beta'", "'free_iterations' must be >= 1",
                   "'free_iteration' in section 'relax'"):  # fmt: skip
        assert needle in err, needle
