"""The two students of latent consistency distillation, built from a teacher UNet.

* ``"unet"``: a full copy of the teacher with a guidance-scale embedding (``time_cond_proj_dim``)
  added to its timestep embedding, as in the LCM paper. The new ``cond_proj`` is zero-initialised,
  so before training the student computes exactly what the teacher computes.
* ``"lora"``: a frozen copy of the teacher with peft LoRA adapters on the attention projections
  (LCM-LoRA). Guidance is baked in (no w-embedding), so it samples at ``guidance_scale=1``.
"""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import torch

from leanvision.core.errors import MissingDependencyError

ADAPTER = "default"


def make_unet_student(teacher_unet: Any, time_cond_proj_dim: int) -> torch.nn.Module:
    """Full-UNet student in float32 on the teacher's device (see module docstring).

    >>> from leanvision.testing import tiny_sd_pipeline
    >>> student = make_unet_student(tiny_sd_pipeline().model.unet, 32)
    >>> student.config.time_cond_proj_dim, student.time_embedding.cond_proj.weight.abs().max().item()
    (32, 0.0)
    """
    device = teacher_unet.device
    if teacher_unet.config.time_cond_proj_dim is not None:  # already guidance-embedded
        return _float32(copy.deepcopy(teacher_unet)).train()
    student = type(teacher_unet).from_config(
        teacher_unet.config, time_cond_proj_dim=time_cond_proj_dim
    )
    missing, unexpected = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    new = [name for name in missing if "cond_proj" not in name]
    if new or unexpected:
        raise RuntimeError(f"student/teacher mismatch: missing {new}, unexpected {unexpected}")
    with torch.no_grad():
        student.time_embedding.cond_proj.weight.zero_()
    return _float32(student.to(device)).train()


def make_lora_student(teacher_unet: Any, rank: int, target_modules: tuple[str, ...]) -> Any:
    """LoRA student: frozen float32 copy of the teacher plus trainable rank-``rank`` adapters.

    LoRA ``B`` matrices start at zero (peft's default), so the student starts as the teacher.
    """
    if importlib.util.find_spec("peft") is None:
        raise MissingDependencyError("peft", "train", "distill(student='lora')")
    from peft import LoraConfig

    student = _float32(copy.deepcopy(teacher_unet))
    student.requires_grad_(False)
    # lora_alpha == rank: scale 1, so the saved weights mean the same without metadata.
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=list(target_modules), init_lora_weights=True
    )
    try:
        student.add_adapter(config, adapter_name=ADAPTER)
    except ValueError as error:  # peft: no module matched
        raise ValueError(
            f"lora_target_modules={list(target_modules)} match no layer of the UNet: {error}"
        ) from error
    return student.train()


def _float32(module: Any) -> Any:
    """The student trains in float32 (beside a float16 teacher too); ``float()`` rather than
    ``to(dtype)`` avoids diffusers' keep-in-fp32 warning when nothing needs casting."""
    if any(p.dtype != torch.float32 for p in module.parameters()):
        module.float()
    return module


def trainable_parameters(student: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Name -> parameter for everything the optimizer updates, in a stable order."""
    return {name: p for name, p in student.named_parameters() if p.requires_grad}


def save_student(student: Any, kind: str, pipeline_class: type, directory: str) -> str:
    """Save the trained student: a diffusers LoRA file (loadable by ``few_step(lora=...)`` and
    ``load_lora_weights``) or a full UNet folder (``UNet2DConditionModel.from_pretrained``)."""
    if kind == "unet":
        student.save_pretrained(directory)
        return directory
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(
        get_peft_model_state_dict(student, adapter_name=ADAPTER)
    )
    pipeline_class.save_lora_weights(directory, unet_lora_layers=layers)
    return directory
