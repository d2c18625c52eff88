"""Package attributes imported on first access, so importing a family stays cheap.

>>> getattr_ = lazy_exports("leanvision.core", {"check_range": "leanvision.core.config"})
>>> getattr_("check_range").__name__
'check_range'
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package``: ``name`` is imported from the module
    ``exports[name]`` on first access and then kept in the package's namespace."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
