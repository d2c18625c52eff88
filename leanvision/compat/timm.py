"""Everything leanvision reads from timm that is not a documented public API.

timm builds EfficientViT-B (``efficientvit_b0..b3``) from classes in
``timm.models.efficientvit_mit``; leanvision builds its segmentation backbone from the same
blocks and swaps timm's ``LiteMLA`` for its own. Those classes are read here; a missing one
raises an :class:`~leanvision.UpstreamVersionError` naming the versions involved.

>>> efficientvit_class("LiteMLA").__name__
'LiteMLA'
"""

from __future__ import annotations

from leanvision.compat.versions import upstream_error

EFFICIENTVIT_MODULE = "timm.models.efficientvit_mit"
# the attributes of timm's LiteMLA that leanvision's LiteMLA shares or reads
LITE_MLA_PARTS = ("qkv", "aggreg", "proj", "dim", "eps", "kernel_func")


def efficientvit_class(name: str) -> type:
    """A class of timm's EfficientViT-B (MIT) module: ``LiteMLA``, ``EfficientVitStage``,
    ``Stem``, ``ConvNormAct``."""
    import importlib

    module = importlib.import_module(EFFICIENTVIT_MODULE)
    found = getattr(module, name, None)
    if found is None:
        raise upstream_error("timm", f"{EFFICIENTVIT_MODULE} has no {name}")
    return found
