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

    ``method`` is a registered name (``lv.vlm.methods()`` lists them with one line each) with
    its options as keywords, or a config instance (``lv.vlm.VisionZip(tokens=64)``). Pre-LLM
    methods (``"visionzip"``, ``"prumerge+"``, ``"tome"``, ``"bipartite-merge"``,
    ``"divprune"``, ``"random"``, ``"pool"``, the video ``"temporal"`` and
    ``"progressive_pool"``) shorten the visual part of the prompt before the language model;
    in-LLM methods (``"fastv"``, ``"pdrop"``, ``"sparsevlm"``) drop visual tokens inside it.

    Budget, one meaning everywhere: ``tokens=`` (an int) or ``keep=`` (a ratio in (0, 1]) of
    the visual tokens that are left: per image (crop, or video frame) for pre-LLM methods,
    per prompt after the last stage for in-LLM ones. ``tokens`` above an image's token count
    raises ``ValueError``: at ``compress()`` where the model fixes the count, at the forward
    (before anything is compressed) for dynamic-resolution models (LLaVA-NeXT/OneVision,
    Qwen2-VL/2.5-VL).

    Returns a :class:`leanvision.Handle`; ``handle.remove()`` (or leaving a ``with`` block)
    restores the model bit for bit. ``handle.stats`` describes the last prefill:
    ``tokens_before``/``tokens_after`` (visual tokens; a list per image, crop or video for
    pre-LLM methods, per prompt row for in-LLM ones), ``sequence_length_before``/``_after``
    (tokens per row entering the language model / its last layer),
    ``prefill_flops_before``/``_after`` (estimated FLOPs of the language model's prefill, whole
    batch) and their ``flops_ratio``, ``avg_tokens_per_layer`` and
    ``avg_visual_tokens_per_layer`` (mean over decoder layers, comparable across pre- and
    in-LLM methods), ``method`` and ``renumber``; in-LLM methods add ``stages`` (the decoder
    layers where stages start, resolved from the model's depth), ``tokens_per_layer``,
    ``visual_tokens_per_layer`` and ``kept_index``; pre-LLM ones add ``kept_positions``.

    Raises ``leanvision.UnsupportedModelError`` for a model of another family (a diffusers
    pipeline is pointed at ``lv.diffusion.accelerate``), ``ValueError`` for an unknown method
    (with "did you mean") and ``ValueError``/``TypeError`` for a bad option, all before the
    model is touched.

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_llava
    >>> tiny = tiny_llava()  # a random-weight LLaVA with 64 visual tokens per image
    >>> with lv.vlm.compress(tiny.model, "visionzip", tokens=16) as handle:
    ...     out = tiny.model.generate(**tiny.inputs, max_new_tokens=2, do_sample=False)
    >>> handle.stats["tokens_before"], handle.stats["tokens_after"]
    ([64], [16])
    >>> handle.stats["flops_ratio"] < 1
    True
    >>> lv.vlm.compress(tiny.model, "visonzip")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown vlm method 'visonzip'; did you mean 'visionzip'? known: ...
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
