import re
from pathlib import Path

import pytest


@pytest.mark.slow
def test_readme_example_runs():
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 10
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["result"].free.iterations == 60
    assert all(p.grad is not None for p in scope["net"].parameters())


def test_the_citation_file_names_this_version():
    """CITATION.cff: Citation File Format 1.2.0 with its required keys, and its version is the package's."""
    import yaml

    import eqprop

    root = Path(__file__).resolve().parents[2]
    meta = yaml.safe_load((root / "CITATION.cff").read_text(encoding="utf-8"))
    assert meta["cff-version"] == "1.2.0" and meta["title"] and meta["authors"]
    assert str(meta["version"]) == eqprop.__version__
    pyproject = (root / "pyproject.toml").read_text()
    assert f'version = "{meta["version"]}"' in pyproject
    assert all(ref["title"] and ref["authors"] for ref in meta["references"])


def test_the_citation_file_passes_the_cff_schema():
    """Where cffconvert is installed (it pins jsonschema < 4, so it is no test dependency): the schema check."""
    cffconvert = pytest.importorskip("cffconvert")
    text = (Path(__file__).resolve().parents[2] / "CITATION.cff").read_text(encoding="utf-8")
    cffconvert.Citation(text).validate()  # raises on a schema error
