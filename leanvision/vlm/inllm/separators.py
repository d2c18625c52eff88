"""Image-separator tokens: the newlines LLaVA-NeXT and LLaVA-OneVision put among an image's
tokens (one closing every row of the unpadded crops, one closing each OneVision video).

They carry the image placeholder id, so ``input_ids`` cannot tell them from image patches;
the rows the language model receives can: transformers writes the model's ``image_newline``
parameter there unchanged. The in-LLM methods keep them always and never rank, count or
merge them (the reference implementations, written for LLaVA-1.5, have no newlines).

>>> from types import SimpleNamespace
>>> newline = torch.tensor([1.0, 2.0])
>>> model = SimpleNamespace(model=SimpleNamespace(image_newline=newline))
>>> adapter = SimpleNamespace(inner=lambda m: m.model)
>>> embeds = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [1.0, 2.0]]])
>>> separator_mask(model, adapter, embeds, torch.tensor([[True, True, False]])).tolist()
[[False, True, False]]
"""

from __future__ import annotations

from typing import Any

import torch

# the parameter of transformers' LlavaNextModel / LlavaOnevisionModel (``model.model``) that
# ``pack_image_features`` and ``get_video_features`` insert as the newline token
IMAGE_NEWLINE = "image_newline"


def separator_mask(
    model: Any, adapter: Any, embeds: torch.Tensor | None, placeholders: torch.Tensor
) -> torch.Tensor | None:
    """``(B, L)`` bool: the image placeholders whose input embedding equals the model's
    ``image_newline`` exactly; ``None`` for models without one or without ``embeds``
    ``(B, L, D)`` (the rows the language model receives)."""
    newline = getattr(adapter.inner(model), IMAGE_NEWLINE, None)
    if not isinstance(newline, torch.Tensor) or embeds is None or newline.dim() != 1:
        return None
    if embeds.shape[:2] != placeholders.shape or embeds.shape[-1] != newline.shape[0]:
        return None
    equal = (embeds == newline.to(device=embeds.device, dtype=embeds.dtype)).all(dim=-1)
    return equal & placeholders.to(embeds.device)
