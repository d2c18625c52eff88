"""Warnings that point at the user's line, not at the leanvision (or torch) frame that raised.

>>> import warnings
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     warn_user("deepcache: only 2 steps, nothing to cache")
>>> caught[0].filename.endswith("warn.py")
False
"""

from __future__ import annotations

import sys
import warnings

# Frames of these packages are skipped: a warning raised in a hook that torch or diffusers
# called is reported at the user's ``pipe(...)`` / ``model.generate(...)`` line.
LIBRARY_PACKAGES = (
    "leanvision",
    "torch",
    "transformers",
    "diffusers",
    "timm",
    "accelerate",
    "peft",
    "contextlib",
    "functools",
)


def user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside :data:`LIBRARY_PACKAGES` (for a
    ``warnings.warn`` issued by the function that calls this one)."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        package = (frame.f_globals.get("__name__") or "").split(".")[0]
        if package not in LIBRARY_PACKAGES:
            return level
        frame = frame.f_back
        level += 1
    return 1


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the user's line."""
    warnings.warn(message, category, stacklevel=user_stacklevel())
