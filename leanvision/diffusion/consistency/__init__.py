"""Consistency models for diffusers pipelines: few-step sampling (LCM / TCD schedulers, local
LCM / TCD / Hyper-SD LoRAs) and latent consistency distillation (LCD).

:func:`few_step` (also ``lv.diffusion.accelerate(pipe, "lcm" | "tcd", ...)``) samples in 1-8
steps; :func:`distill` trains the LCM student it samples with.

>>> from leanvision.diffusion.consistency import few_step
>>> from leanvision.testing import tiny_sd_pipeline
>>> pipe = tiny_sd_pipeline().model
>>> with few_step(pipe, "lcm", steps=2):
...     images = pipe("a red fox", height=32, width=32, output_type="np").images
>>> images.shape  # (batch, height, width, RGB)
(1, 32, 32, 3)
"""

from leanvision.diffusion.consistency.config import DistillConfig
from leanvision.diffusion.consistency.distillation import distill
from leanvision.diffusion.consistency.sampling import LCM, TCD, FewStepConfig, few_step

__all__ = ["LCM", "TCD", "DistillConfig", "FewStepConfig", "distill", "few_step"]
