"""Few-step sampling (LCM / TCD schedulers, local LCM / Hyper-SD LoRAs) and latent
consistency distillation for diffusers pipelines.

>>> from leanvision.diffusion.few_step import few_step, distill, DistillConfig  # doctest: +SKIP
>>> with few_step(pipe, "lcm", steps=4, lora="lcm-lora-sdv1-5/"):                # doctest: +SKIP
...     image = pipe("a red fox in snow").images[0]
"""

from leanvision.diffusion.few_step.config import DistillConfig
from leanvision.diffusion.few_step.distill import distill
from leanvision.diffusion.few_step.sampling import FewStepConfig, few_step

__all__ = ["DistillConfig", "FewStepConfig", "distill", "few_step"]
