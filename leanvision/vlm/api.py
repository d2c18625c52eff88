"""``lv.vlm.compress``: the one entry point of the vlm family.

Contract for method modules (pre-LLM here, in-LLM in ``leanvision.vlm.inllm``): register
``@METHODS.register(name, ConfigClass)`` an ``apply(model, config, handle, adapter) -> None``
that patches ``model`` only through ``handle`` (``add_hook``/``set_attr``/``on_remove``) and
may fill ``handle.stats``. A config may define ``check_model(model, adapter)`` that raises
``ValueError`` for settings this model cannot take (layer past the depth, video method on an
image-only model...); it runs before anything is patched. If ``apply`` raises, the handle
rolls back every step it recorded.
"""

from __future__ import annotations

from typing import Any

from leanvision.core.config import MethodConfig
from leanvision.core.handle import Handle
from leanvision.vlm.adapters import get_adapter
from leanvision.vlm.registry import load_methods


def compress(model: Any, method: str | MethodConfig, **config: Any) -> Handle:
    """Compress the visual tokens ``model`` (a transformers VLM) feeds its language model.

    ``method`` is a registered name (``"visionzip"``, ``"prumerge+"``, ``"tome"``,
    ``"bipartite-merge"``, ``"divprune"``, ``"random"``, ``"pool"``, ``"temporal"``,
    ``"progressive_pool"``, and the
    in-LLM ``"fastv"``, ``"pdrop"``, ``"sparsevlm"``) with its options as keywords, or a
    config instance. Returns a :class:`leanvision.Handle`; ``handle.remove()`` (or leaving a
    ``with`` block) restores the model bit for bit, and ``handle.stats`` reports tokens and
    estimated prefill FLOPs before/after for the last prefill.

    Raises ``leanvision.UnsupportedModelError`` for a model of another family, and
    ``ValueError``/``TypeError`` for a bad option, both before the model is touched.

    >>> import leanvision as lv                                   # doctest: +SKIP
    >>> with lv.vlm.compress(model, "visionzip", tokens=64) as h:  # doctest: +SKIP
    ...     out = model.generate(**inputs, max_new_tokens=20)
    >>> h.stats["tokens_after"]                                  # doctest: +SKIP
    [64]
    """
    adapter = get_adapter(model)
    resolved, apply = load_methods().resolve(method, **config)
    check = getattr(resolved, "check_model", None)
    if check is not None:
        check(model, adapter)
    name = load_methods().entry(resolved).name
    with Handle.build(model, "vlm", name, resolved) as handle:
        apply(model, resolved, handle, adapter)
    return handle
