"""``lv.diffusion.accelerate``: apply step caching, token merging or a few-step sampler.

>>> import leanvision as lv
>>> from leanvision.testing.tiny_diffusion import tiny_sd_pipeline
>>> tiny = tiny_sd_pipeline()
>>> handle = lv.diffusion.accelerate(tiny.model, "deepcache", interval=2)
>>> handle.method, handle.family
('deepcache', 'diffusion')
>>> handle.remove()
"""

from __future__ import annotations

from typing import Any

import torch

from leanvision.compat.diffusers import forget_child_registries
from leanvision.core.config import MethodConfig
from leanvision.core.handle import Handle
from leanvision.diffusion.denoisers import find_denoiser
from leanvision.diffusion.registry import load_methods

__all__ = ["FAMILY", "accelerate"]

FAMILY = "diffusion"


def accelerate(
    pipe_or_denoiser: Any,
    method: str | MethodConfig | list[MethodConfig] | tuple[MethodConfig, ...],
    **options: Any,
) -> Handle:
    """Apply ``method`` to a diffusers pipeline (or its ``unet`` / ``transformer``).

    ``method`` is a registered name with its ``options`` as keywords
    (``accelerate(pipe, "deepcache", interval=3)``), a config
    (``accelerate(pipe, DeepCache(interval=3))``) or a list of configs applied together in
    one handle (``[DeepCache(interval=3), ToMe(ratio=0.5)]``); ``lv.diffusion.methods()``
    lists the names. The returned :class:`~leanvision.Handle` lives on the denoiser module,
    so applying again raises :class:`~leanvision.AlreadyPatchedError` until it is removed;
    ``handle.remove()`` (or leaving its ``with`` block) restores the model exactly.

    ``"lcm"`` / ``"tcd"`` (or a :class:`FewStepConfig`, :class:`LCM`, :class:`TCD`) swap the
    pipeline's scheduler for a 1-8 step consistency sampler, exactly like
    :func:`~leanvision.diffusion.few_step` (options ``steps``, ``guidance_scale``, ``eta``,
    ``lora``), and need the pipeline itself. Their handle belongs to the
    ``"diffusion-sampler"`` family, so one step cache can be applied on top of it.

    ``handle.stats`` keys (counts are per denoiser forward, i.e. per step and CFG branch):

    * step caches: ``denoiser_calls``, ``full_calls`` (computed in full), ``cached_calls``
      (reused cached features), ``runs`` (pipeline calls) and ``last_run`` (one ``"F"`` /
      ``"C"`` per call of the last run); ``residual`` adds ``full_steps`` (a bool per step);
    * ``tome``: ``tome_blocks`` (patched transformer blocks), and for the last denoiser call
      ``tome_merged_blocks`` and ``tome_merged_tokens`` (tokens merged away, summed over
      blocks and batch);
    * ``lcm`` / ``tcd``: ``scheduler`` (class name), ``steps``, ``call_defaults`` (the
      ``pipe(...)`` keywords filled in when the caller leaves them out), ``lora_adapter``.

    Everything is validated (method names, options, model support) before the model is
    touched; if applying fails half-way, whatever was applied is rolled back. A model of
    another family (e.g. a transformers VLM) raises :class:`~leanvision.UnsupportedModelError`
    pointing at its entry point.

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_sd_pipeline
    >>> tiny = tiny_sd_pipeline()
    >>> with lv.diffusion.accelerate(tiny.model, "deepcache") as handle:
    ...     images = tiny.model(**tiny.inputs).images  # (batch, height, width, RGB) in [0, 1]
    >>> images.shape, handle.stats["last_run"]
    ((1, 32, 32, 3), 'FCCFCCFCCF')
    >>> with lv.diffusion.accelerate(tiny.model, "tcd", steps=2, eta=0.5) as handle:
    ...     images = tiny.model(**tiny.inputs).images
    >>> handle.family, handle.stats["steps"], handle.stats["scheduler"]
    ('diffusion-sampler', 2, 'TCDScheduler')
    """
    registry = load_methods()
    sampler = _sampler_config(registry, method, options)
    if sampler is not None:
        from leanvision.diffusion.consistency.sampling import apply_few_step

        return apply_few_step(pipe_or_denoiser, sampler)
    resolved = registry.resolve_many(method, **options)
    configs = [config for config, _ in resolved]
    names = [registry.entry(config).name for config in configs]
    denoiser, pipe, _spec = find_denoiser(pipe_or_denoiser)
    config: Any = configs[0] if len(configs) == 1 else configs
    with Handle.build(denoiser, FAMILY, "+".join(names), config) as handle:
        handle.on_remove(lambda: _forget_registries(denoiser))
        for config_item, apply in resolved:
            apply(denoiser, config_item, handle, pipe)
        _forget_registries(denoiser)
    return handle


def _sampler_config(registry: Any, method: Any, options: dict[str, Any]) -> Any:
    """The few-step sampler config ``method`` asks for (``"lcm"``, ``"tcd"`` or a
    ``FewStepConfig``), or None for any other method."""
    from leanvision.diffusion.consistency.sampling import FewStepConfig

    if isinstance(method, (list, tuple)):
        if any(isinstance(item, FewStepConfig) for item in method):
            raise TypeError(
                "lcm/tcd swap the scheduler and return a handle of their own: apply them "
                "separately, e.g. accelerate(pipe, 'lcm', steps=4) and then "
                "accelerate(pipe, [DeepCache(...), ...])"
            )
        return None
    if isinstance(method, FewStepConfig):
        if options:
            raise TypeError(
                f"pass options either in the config or as keywords, not both: {sorted(options)}"
            )
        return method
    is_sampler = isinstance(method, str) and method in registry
    if is_sampler and issubclass(registry.entry(method).config_class, FewStepConfig):
        return registry.resolve(method, **options)[0]
    return None


def _forget_registries(denoiser: torch.nn.Module) -> None:
    # diffusers caches which submodules carry hooks (for cache_context); hooks changed.
    for module in denoiser.modules():
        forget_child_registries(module)
