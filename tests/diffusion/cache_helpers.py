"""What the step-cache tests share: one pipeline run to final latents."""

from __future__ import annotations

import numpy as np
import torch

STEPS = 6


def run(tiny, **overrides) -> torch.Tensor:
    """The final latents of ``tiny``'s pipeline, ``STEPS`` steps unless ``overrides`` say."""
    inputs = {**tiny.info["make_inputs"](), "num_inference_steps": STEPS, "output_type": "latent"}
    inputs.update(overrides)
    return torch.as_tensor(np.asarray(tiny.model(**inputs).images))
