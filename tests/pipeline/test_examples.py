"""The scripts in examples/ run as shipped and do what their docstrings say (shorter schedules here)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_custom_training_loop_learns_the_digits(capsys):
    error = example("custom_loop").main(epochs=2)
    assert error < 0.15 and capsys.readouterr().out.count("test error") == 2  # measured here: 5.0% after 2 epochs


def test_the_new_energy_term_passes_its_autograd_check_and_learns(capsys):
    error = example("new_energy").main(epochs=2)
    assert error < 0.2 and "messages = autograd of Phi: ok" in capsys.readouterr().out  # measured: 5.3%


def test_the_sweep_writes_one_table_over_rules_and_seeds(tmp_path):
    out = str(tmp_path / "sweep")
    table = example("sweep").main(out, epochs=1, extra=("limit_train=128", "limit_test=64"), jobs=2)
    text = table.read_text()
    for rule in ("PEP", "NEP", "CEP"):
        assert f"| {rule} |" in text and f"{rule} 2 (0, 1)" in text
    assert (tmp_path / "sweep" / "curves.png").stat().st_size > 0
