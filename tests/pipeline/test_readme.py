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
