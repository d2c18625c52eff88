"""``lv.diffusion.accelerate``: apply one or more step-caching / token-merging methods.

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
    one handle (``[DeepCache(interval=3), ToMe(ratio=0.5)]``). The returned
    :class:`~leanvision.Handle` lives on the denoiser module, so applying again to the
    pipeline or to the denoiser raises :class:`~leanvision.AlreadyPatchedError` until it is
    removed; ``handle.remove()`` (or leaving its ``with`` block) restores the model exactly.
    ``handle.stats`` counts denoiser calls: ``full_calls``, ``cached_calls``, ``runs`` and
    ``last_run`` (``"F"``/``"C"`` per call of the last pipeline run).

    Everything is validated (method names, options, model support) before the model is
    touched; if applying fails half-way, whatever was applied is rolled back.
    """
    registry = load_methods()
    if isinstance(method, (list, tuple)):
        if options:
            raise TypeError("pass options inside the configs when giving a list of methods")
        if not method:
            raise ValueError("method list is empty; give at least one config")
        resolved = [registry.resolve(config) for config in method]
    else:
        resolved = [registry.resolve(method, **options)]
    configs = [config for config, _ in resolved]
    names = [registry.entry(config).name for config in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"each method may appear once in a list, got {names}")
    denoiser, pipe, _spec = find_denoiser(pipe_or_denoiser)
    config: Any = configs[0] if len(configs) == 1 else configs
    with Handle.build(denoiser, FAMILY, "+".join(names), config) as handle:
        handle.on_remove(lambda: _forget_registries(denoiser))
        for config_item, apply in resolved:
            apply(denoiser, config_item, handle, pipe)
        _forget_registries(denoiser)
    return handle


def _forget_registries(denoiser: torch.nn.Module) -> None:
    # diffusers caches which submodules carry hooks (for cache_context); hooks changed.
    for module in denoiser.modules():
        forget_child_registries(module)
