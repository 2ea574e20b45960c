"""Module attributes that import their home module on first use (PEP 562).

``vlkit.plugin`` and ``vlkit.testing`` promise many names; importing them all would pull in
torch and transformers for a plugin's hooks module that needs two of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(module: str, table: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable[[str], Any],
                                                                          Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``module`` exporting ``table``: home module ->
    names (a home starting with ``.`` is relative to ``module``). A loaded name is cached in
    the module's globals, so each is resolved once."""
    where = {name: home for home, names in table.items() for name in names}
    names = sorted(where)

    def __getattr__(name: str) -> Any:
        home = where.get(name)
        if home is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home if not home.startswith(".") else module + home), name)
        setattr(importlib.import_module(module), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(module))) | set(names))

    return names, __getattr__, __dir__
