"""leanvision: make the vision models you already use cheaper to run.

Sub-packages load on first access, so ``import leanvision`` imports neither transformers,
diffusers nor gradio and never initialises CUDA.

>>> import leanvision as lv
>>> sorted(lv.FAMILIES)[:3]
['bench', 'core', 'datasets']
"""

from __future__ import annotations

import importlib
from typing import Any

from leanvision.core.errors import (
    AlreadyPatchedError,
    MissingDependencyError,
    UnsupportedModelError,
    UpstreamVersionError,
)
from leanvision.core.handle import Handle

__version__ = "0.1.0"

# Only sub-packages that exist: ``from leanvision import *`` imports every one of them.
# (``quant`` is planned, see the README, and joins this list when its package lands.)
FAMILIES = (
    "bench",
    "core",
    "datasets",
    "diffusion",
    "kernels",
    "testing",
    "vision",
    "vlm",
)

__all__ = [
    "FAMILIES",
    "AlreadyPatchedError",
    "Handle",
    "MissingDependencyError",
    "UnsupportedModelError",
    "UpstreamVersionError",
    "__version__",
    *FAMILIES,
]


def __getattr__(name: str) -> Any:
    if name in FAMILIES:
        module = importlib.import_module(f"leanvision.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'leanvision' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
