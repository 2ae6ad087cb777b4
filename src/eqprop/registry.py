"""Name lookup shared by the registries (algorithms, data sets, config choices)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["canonical_name", "import_extensions", "load_plugins", "PLUGIN_GROUP"]

# installed packages announce their eqprop extensions under this entry-point group (pyproject.toml:
# [project.entry-points."eqprop.plugins"] my_models = "my_package.models"); the command line imports them all
PLUGIN_GROUP = "eqprop.plugins"


def _norm(name: str) -> str:
    return name.replace("-", "").replace("_", "").lower()


def canonical_name(name: str, valid: Iterable[str]) -> str | None:
    """The entry of ``valid`` that ``name`` spells, ignoring case, '-' and '_' ("C-EP" -> "CEP"); None if none."""
    return next((v for v in valid if _norm(v) == _norm(name)), None)


def import_extensions(names: Sequence[str]) -> None:
    """Import the modules that register a user's models, rules, solvers or data sets, so that a config can name
    them (config key ``imports``, ``eqprop train --import``): a module name (``my_lab.models``, found on
    ``sys.path``, the current folder included) or a ``.py`` file's path."""
    from .errors import ConfigError

    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"config key 'imports' lists module names or .py paths, got {name!r}")
        if name.endswith(".py"):
            path = Path(name).expanduser().resolve()
            module = f"eqprop_extension_{path.stem}"
            if module in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(module, path)
            if not path.is_file() or spec is None or spec.loader is None:
                raise ConfigError(f"config key 'imports': {name} is not a Python file")
            loaded = importlib.util.module_from_spec(spec)
            sys.modules[module] = loaded
            try:
                spec.loader.exec_module(loaded)
            except BaseException:
                del sys.modules[module]
                raise
            continue
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"config key 'imports': cannot import {name!r} ({exc}); give a module on the Python path (run from "
                "its folder, or pip install its package) or the path of a .py file"
            ) from None


_plugins_loaded = False


def load_plugins() -> list[str]:
    """Import every module that installed packages list under the ``eqprop.plugins`` entry points (once per
    process); returns their names."""
    global _plugins_loaded
    from importlib import metadata

    if _plugins_loaded:
        return []
    _plugins_loaded = True
    loaded = []
    for entry in metadata.entry_points(group=PLUGIN_GROUP):
        entry.load()
        loaded.append(entry.value)
    return loaded
