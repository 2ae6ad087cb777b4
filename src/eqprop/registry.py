"""Name lookup shared by the registries (algorithms, data sets, config choices)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["canonical_name"]


def _norm(name: str) -> str:
    return name.replace("-", "").replace("_", "").lower()


def canonical_name(name: str, valid: Iterable[str]) -> str | None:
    """The entry of ``valid`` that ``name`` spells, ignoring case, '-' and '_' ("C-EP" -> "CEP"); None if none."""
    return next((v for v in valid if _norm(v) == _norm(name)), None)
