"""The registry of ``lv.vlm.compress`` methods (pre-LLM and in-LLM)."""

from __future__ import annotations

from leanvision.core.registry import Registry

# Modules whose import registers methods: pre-LLM methods and in-LLM methods.
METHOD_MODULES: tuple[str, ...] = ("leanvision.vlm.prellm", "leanvision.vlm.inllm")


METHODS: Registry = Registry("vlm", modules=METHOD_MODULES)


def load_methods() -> Registry:
    """Import every method module once and return the populated registry (reading
    ``METHODS`` does this too; kept for callers that used it).

    >>> "fastv" in load_methods().names()
    True
    """
    return METHODS.load()


def methods() -> dict[str, str]:
    """Every method ``lv.vlm.compress`` takes: name -> one-line description (the first line
    of its config class's docstring; the class, e.g. ``lv.vlm.VisionZip``, documents the
    options).

    >>> import leanvision as lv
    >>> catalogue = lv.vlm.methods()
    >>> catalogue["visionzip"]
    'VisionZip: CLS + dominant patches by CLS attention, plus merged contextual tokens.'
    >>> sorted(catalogue)[:3]
    ['bipartite-merge', 'divprune', 'fastv']
    """
    return METHODS.describe()
