"""The diffusion family's method registry. Method modules register themselves on import.

>>> "deepcache" in METHODS and "lcm" in METHODS
True
"""

from __future__ import annotations

from leanvision.core.registry import Registry

# Modules whose import registers ``accelerate`` methods: the step caches (deepcache, inherit,
# residual, delegated diffusers caches), token merging and the few-step samplers (lcm, tcd).
METHOD_MODULES: tuple[str, ...] = (
    "leanvision.diffusion.cache",
    "leanvision.diffusion.tome",
    "leanvision.diffusion.consistency.sampling",
)


METHODS: Registry = Registry("diffusion", modules=METHOD_MODULES)


def load_methods() -> Registry:
    """Import every method module once and return the populated registry (reading
    ``METHODS`` does this too; kept for callers that used it).

    >>> load_methods() is METHODS
    True
    """
    return METHODS.load()


def methods() -> dict[str, str]:
    """Every ``lv.diffusion.accelerate`` method: name -> its one-line description.

    >>> import leanvision as lv
    >>> described = lv.diffusion.methods()
    >>> described["deepcache"].split(":")[0], sorted(set(described) & {"lcm", "tcd", "tome"})
    ('DeepCache', ['lcm', 'tcd', 'tome'])
    """
    return METHODS.describe()
