"""Step caches for diffusers denoisers; importing this package registers them.

``deepcache`` (UNet deep-feature reuse), ``inherit`` (A-SDM feature inheritance),
``residual`` (adaptive residual caching for UNets and DiTs) and the delegated diffusers
caches (``first_block_cache``, ``pyramid_attention_broadcast``, ``faster_cache``,
``taylorseer``).
"""

from leanvision.diffusion.cache.deepcache import DeepCache
from leanvision.diffusion.cache.delegated import (
    FasterCache,
    FirstBlockCache,
    PyramidAttentionBroadcast,
    TaylorSeer,
)
from leanvision.diffusion.cache.inherit import Inherit
from leanvision.diffusion.cache.residual import Residual, calibrate, load_mask

__all__ = [
    "DeepCache",
    "FasterCache",
    "FirstBlockCache",
    "Inherit",
    "PyramidAttentionBroadcast",
    "Residual",
    "TaylorSeer",
    "calibrate",
    "load_mask",
]
