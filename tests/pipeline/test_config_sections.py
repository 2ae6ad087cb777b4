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
    # the seven core sections, then those the model families register (the DRN's "resistive")
    assert (
        set(cfg.to_dict())
        == set(SECTIONS)
        == {"data", "model", "relax", "rule", "signals", "optim", "run", "resistive"}
    )
    assert list(SECTIONS)[:7] == ["data", "model", "relax", "rule", "signals", "optim", "run"]
    assert cfg.input_gain == cfg.resistive.input_gain == 1.0  # a registered section's keys are flat keys too
    assert TrainConfig(model="mlp", relax={"nudged_iterations": 3}).to_dict()["relax"]["nudged_iterations"] == 3
    assert build_phases(cfg).solver == "mod-pgd"  # the model's default solver
    with pytest.raises(AttributeError, match="no setting 'betta'"):
        cfg.betta = 1


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
