"""Settings of latent consistency distillation
(:func:`~leanvision.diffusion.consistency.distill`)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from leanvision.core.config import MethodConfig, check_choice, check_range

STUDENTS = ("lora", "unet")
# LCM-LoRA trains at 1e-4, a full LCM UNet at 1e-6 (diffusers' consistency_distillation README).
DEFAULT_LR = {"lora": 1e-4, "unet": 1e-6}


@dataclasses.dataclass
class DistillConfig(MethodConfig):
    """Latent consistency distillation settings of :func:`distill` (LCM paper defaults).

    Defaults follow the LCM paper and diffusers' LCD script.

    >>> DistillConfig(student="unet", steps=10).learning_rate_for_student
    1e-06
    """

    student: str = "lora"
    steps: int = 1000
    batch_size: int = 8
    learning_rate: float | None = None  # None: 1e-4 for "lora", 1e-6 for "unet"
    num_ddim_timesteps: int = 50
    w_min: float = 3.0
    w_max: float = 15.0
    timestep_scaling: float = 10.0
    sigma_data: float = 0.5
    huber_c: float = 0.001
    ema_decay: float = 0.95
    resolution: int = 512
    lora_rank: int = 64
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    time_cond_proj_dim: int = 256
    max_grad_norm: float = 1.0
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    mixed_precision: str = "no"  # "fp16" / "bf16": autocast for the student on CUDA
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0  # 0: only a final checkpoint (when checkpoint_dir is set)
    keep_checkpoints: int = 1
    resume: bool | str = False  # True: latest in checkpoint_dir; a str: that file
    output_dir: str | None = None  # loss JSON/PNG and the saved student; default checkpoint_dir
    eval_every: int = 50  # fixed-batch eval loss every N steps (also at the start and end)
    eval_batch_size: int | None = None  # None: batch_size
    synthetic_steps: int = 25  # teacher steps per x0 when no images are given
    synthetic_guidance: float = 7.5
    progress: bool = True

    def validate(self) -> None:
        check_choice("student", self.student, STUDENTS)
        for name in (
            "steps",
            "batch_size",
            "num_ddim_timesteps",
            "resolution",
            "lora_rank",
            "time_cond_proj_dim",
            "keep_checkpoints",
            "synthetic_steps",
        ):
            _check_int(name, getattr(self, name), 1)
        for name in ("checkpoint_every", "lr_warmup_steps", "eval_every", "seed"):
            _check_int(name, getattr(self, name), 0)
        check_range("num_ddim_timesteps", self.num_ddim_timesteps, 1, 1000)
        if self.eval_batch_size is not None:
            _check_int("eval_batch_size", self.eval_batch_size, 1)
        if self.learning_rate is not None:
            check_range("learning_rate", self.learning_rate, 0.0, low_inclusive=False)
        check_range("w_min", self.w_min, 0.0)
        check_range("w_max", self.w_max, self.w_min)
        check_range("timestep_scaling", self.timestep_scaling, 0.0, low_inclusive=False)
        check_range("sigma_data", self.sigma_data, 0.0, low_inclusive=False)
        check_range("huber_c", self.huber_c, 0.0, low_inclusive=False)
        check_range("ema_decay", self.ema_decay, 0.0, 1.0, high_inclusive=False)
        check_range("max_grad_norm", self.max_grad_norm, 0.0, low_inclusive=False)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("synthetic_guidance", self.synthetic_guidance, 0.0)
        check_choice("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"))
        if isinstance(self.lora_target_modules, str) or not self.lora_target_modules:
            raise ValueError(
                "lora_target_modules must be a non-empty tuple of module names, e.g. "
                f"('to_q', 'to_k', 'to_v', 'to_out.0'), got {self.lora_target_modules!r}"
            )
        self.lora_target_modules = tuple(self.lora_target_modules)
        # Paths are stored as str so the config round-trips through JSON and checkpoints.
        for name in ("checkpoint_dir", "output_dir"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.resume, os.PathLike):
            self.resume = os.fspath(self.resume)
        if self.checkpoint_every and self.checkpoint_dir is None:
            raise ValueError("checkpoint_every > 0 needs checkpoint_dir (a folder to write to)")
        if self.resume is True and self.checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir (where to look for checkpoints)")
        if isinstance(self.resume, str) and not os.path.isfile(self.resume):
            raise ValueError(f"resume={self.resume!r} is not a checkpoint file")

    @property
    def learning_rate_for_student(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.student]


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r}")
    check_range(name, value, low)
