"""A module imported on the first use of one of its names, for imports that cost a command's start-up."""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for the module ``name`` and imports it when one of its names is first used. Declare it
    under ``if TYPE_CHECKING: import ... else: x = LazyModule(...)`` so that type checkers see the module."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)  # imported once; then a dict lookup
