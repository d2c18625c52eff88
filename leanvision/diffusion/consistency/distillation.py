"""``distill``: latent consistency distillation (LCD) of a Stable Diffusion teacher.

One training step (the LCM paper's Algorithm 1, with the skipping-step DDIM solver):

1. draw x0 latents and prompts, noise, a solver index ``n`` and a guidance weight
   ``w ~ U[w_min, w_max]``; noise x0 to ``z = x_{t_{n+k}}``;
2. online student: ``f(z, t_{n+k}) = c_skip z + c_out x0_student``;
3. teacher (no grad), conditional and unconditional, combined as ``(1 + w) cond - w uncond``
   for both x0 and noise, then one DDIM step to ``x_prev = x_{t_n}``;
4. EMA target (no grad): ``f_target(x_prev, t_n)``;
5. pseudo-Huber distance between 2 and 4, one AdamW step, EMA update of the target.

The student (``"unet"`` with a guidance embedding, or a ``"lora"``) is returned inside a
pipeline that shares the teacher's VAE, text encoder and tokenizer.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from tqdm.auto import tqdm

from leanvision.core.errors import UnsupportedModelError
from leanvision.diffusion.consistency import checkpoint as ckpt
from leanvision.diffusion.consistency import lcm_math as lcm
from leanvision.diffusion.consistency.config import DistillConfig
from leanvision.diffusion.consistency.data import build_source, encode_prompts, step_generator
from leanvision.diffusion.consistency.students import (
    make_lora_student,
    make_unet_student,
    save_student,
    trainable_parameters,
)

SUPPORTED = (
    "Stable Diffusion 1.x/2.x pipelines (a UNet2DConditionModel without added "
    "conditioning, a VAE, encode_prompt and a DDPM-style scheduler)"
)


def _check_teacher(pipe: Any, config: DistillConfig) -> None:
    unet = getattr(pipe, "unet", None)
    scheduler = getattr(pipe, "scheduler", None)
    usable = (
        unet is not None
        and hasattr(unet.config, "time_cond_proj_dim")
        and getattr(unet.config, "addition_embed_type", None) is None
        and getattr(pipe, "vae", None) is not None
        and hasattr(pipe, "encode_prompt")
        and hasattr(scheduler, "alphas_cumprod")
    )
    if not usable:
        raise UnsupportedModelError(pipe, [SUPPORTED], what="teacher pipeline", family="diffusion")
    total = scheduler.config.num_train_timesteps
    if config.num_ddim_timesteps > total:
        raise ValueError(
            f"num_ddim_timesteps={config.num_ddim_timesteps} exceeds the "
            f"teacher's num_train_timesteps={total}"
        )
    factor = getattr(pipe, "vae_scale_factor", 8)
    if config.resolution % factor:
        raise ValueError(
            f"resolution={config.resolution} must be a multiple of the VAE scale factor {factor}"
        )


@dataclasses.dataclass
class _Objective:
    """Everything fixed for the run that one loss evaluation needs."""

    teacher: Any
    student: Any
    ema: dict[str, torch.Tensor]
    alphas_cumprod: torch.Tensor
    grid: torch.Tensor
    skip: int
    prediction_type: str
    w_dim: int | None
    uncond: torch.Tensor
    config: DistillConfig

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        config, device = self.config, batch["latents"].device
        x0, noise, index, w = batch["latents"], batch["noise"], batch["index"], batch["w"]
        start = self.grid.to(device)[index]
        end = (start - self.skip).clamp(min=0)
        bar = self.alphas_cumprod.to(device)
        a = bar[start].sqrt().view(-1, 1, 1, 1)
        z = a * x0 + (1 - bar[start]).sqrt().view(-1, 1, 1, 1) * noise
        cond = batch["cond"]
        w_embedding = None
        if self.w_dim is not None:
            w_embedding = lcm.guidance_scale_embedding(w.cpu(), self.w_dim).to(device)
        c_skip_start, c_out_start = _scalings(start, config, z)
        c_skip_end, c_out_end = _scalings(end, config, z)

        with _autocast(config, device):
            online = self.student(
                z, start, encoder_hidden_states=cond, timestep_cond=w_embedding
            ).sample.float()
        x0_online, _ = lcm.predicted_x0_and_noise(online, start, z, bar, self.prediction_type)
        prediction = c_skip_start * z + c_out_start * x0_online

        with torch.no_grad():
            dtype = self.teacher.dtype
            both = self.teacher(
                torch.cat([z, z]).to(dtype),
                torch.cat([start, start]),
                encoder_hidden_states=torch.cat([cond, self.uncond.expand_as(cond)]).to(dtype),
            ).sample.float()
            x0_both, noise_both = lcm.predicted_x0_and_noise(
                both, torch.cat([start, start]), torch.cat([z, z]), bar, self.prediction_type
            )
            x0_cond, x0_uncond = x0_both.chunk(2)
            noise_cond, noise_uncond = noise_both.chunk(2)
            x_prev = lcm.ddim_step_to(
                lcm.guided(x0_cond, x0_uncond, w),
                lcm.guided(noise_cond, noise_uncond, w),
                bar[end],
            )
            with _autocast(config, device):
                target_out = torch.func.functional_call(
                    self.student,
                    self.ema,
                    (x_prev, end),
                    {"encoder_hidden_states": cond, "timestep_cond": w_embedding},
                ).sample.float()
            x0_target, _ = lcm.predicted_x0_and_noise(
                target_out, end, x_prev, bar, self.prediction_type
            )
            target = c_skip_end * x_prev + c_out_end * x0_target
        return lcm.pseudo_huber(prediction, target, config.huber_c)


def _scalings(t: torch.Tensor, config: DistillConfig, like: torch.Tensor):
    c_skip, c_out = lcm.boundary_scalings(t, config.sigma_data, config.timestep_scaling)
    return c_skip.view(-1, 1, 1, 1).to(like), c_out.view(-1, 1, 1, 1).to(like)


def _autocast(config: DistillConfig, device: torch.device):
    if config.mixed_precision == "no" or device.type != "cuda":
        return nullcontext()
    dtype = torch.float16 if config.mixed_precision == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


class _EpochOrder:
    """Sample index of every (step, slot): a fresh seeded permutation per pass over the data."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self._cache = size, seed, {}

    def indices(self, step: int, batch_size: int) -> list[int]:
        out = []
        for position in range(step * batch_size, (step + 1) * batch_size):
            epoch, offset = divmod(position, self.size)
            if epoch not in self._cache:
                generator = torch.Generator("cpu").manual_seed(self.seed * 7919 + epoch)
                self._cache = {epoch: torch.randperm(self.size, generator=generator).tolist()}
            out.append(self._cache[epoch][offset])
        return out


def _draw_batch(pipe, source, indices, generator, config, device) -> dict[str, torch.Tensor]:
    latents = source.latents(indices, generator).to(device)
    count = len(indices)
    return {
        "latents": latents,
        "noise": torch.randn(latents.shape, generator=generator).to(device),
        "index": torch.randint(0, config.num_ddim_timesteps, (count,), generator=generator).to(
            device
        ),
        "w": (
            torch.rand(count, generator=generator) * (config.w_max - config.w_min) + config.w_min
        ).to(device),
        # float32: the student trains in float32 even beside a float16 teacher.
        "cond": encode_prompts(pipe, [source.prompt(i) for i in indices]).to(device).float(),
    }


def distill(
    teacher_pipe: Any,
    *,
    prompts: str | Sequence[str] | None = None,
    images: Any = None,
    config: DistillConfig | None = None,
    **options: Any,
) -> Any:
    """Distill ``teacher_pipe`` into a few-step latent consistency model; returns the student
    pipeline (an ``LCMScheduler`` on the teacher's schedule), ready for
    ``few_step(student_pipe, "lcm", steps=4)``.

    ``images`` (a folder, an ``ImageFolder``, a list of images/paths or an (N, 3, H, W) tensor
    in [0, 1]) are encoded to x0 latents by the teacher's VAE; with one prompt, one per image,
    or the class folder names. Without images the teacher samples one x0 per prompt first.
    ``options`` override fields of ``config`` (see :class:`DistillConfig`). The loss history
    is on ``student_pipe.distill_history``; ``output_dir`` receives ``loss_history.json``,
    ``loss.png`` and the student (``lora/`` or ``unet/``). The teacher is never modified.

    >>> from leanvision.testing import tiny_sd_pipeline
    >>> teacher = tiny_sd_pipeline().model
    >>> student = distill(teacher, prompts=["a red fox"], images=torch.rand(2, 3, 32, 32),
    ...                   student="unet", steps=2, batch_size=2, resolution=32, progress=False)
    >>> len(student.distill_history["loss"]), student.unet.config.time_cond_proj_dim
    (2, 256)
    """
    config = dataclasses.replace(config or DistillConfig(), **options)  # re-validates
    _check_teacher(teacher_pipe, config)
    teacher, device = teacher_pipe.unet, teacher_pipe.unet.device
    output_dir = config.output_dir or config.checkpoint_dir
    cache = (
        os.path.join(config.checkpoint_dir, "synthetic_latents.pt")
        if (config.checkpoint_dir)
        else None
    )
    source = build_source(
        teacher_pipe,
        prompts,
        images,
        config.resolution,
        config.synthetic_steps,
        config.synthetic_guidance,
        config.seed,
        cache,
    )

    # peft draws the LoRA A matrices from the global RNG: seed it (in a fork, leaving the
    # caller's RNG alone) so two runs with the same seed start from the same student.
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(config.seed)
        if config.student == "unet":
            student = make_unet_student(teacher, config.time_cond_proj_dim)
        else:
            student = make_lora_student(teacher, config.lora_rank, config.lora_target_modules)
    trainable = trainable_parameters(student)
    ema = {name: p.detach().clone() for name, p in trainable.items()}
    optimizer = torch.optim.AdamW(
        list(trainable.values()),
        lr=config.learning_rate_for_student,
        weight_decay=config.weight_decay,
    )
    # float16 autocast needs loss scaling or small gradients flush to zero (bf16 does not).
    scaler = torch.amp.GradScaler(
        "cuda", enabled=config.mixed_precision == "fp16" and device.type == "cuda"
    )
    scheduler = teacher_pipe.scheduler
    objective = _Objective(
        teacher=teacher,
        student=student,
        ema=ema,
        alphas_cumprod=scheduler.alphas_cumprod.float().cpu(),
        grid=lcm.ddim_timesteps(scheduler.config.num_train_timesteps, config.num_ddim_timesteps),
        skip=scheduler.config.num_train_timesteps // config.num_ddim_timesteps,
        prediction_type=scheduler.config.prediction_type,
        w_dim=student.config.time_cond_proj_dim,
        config=config,
        uncond=encode_prompts(teacher_pipe, [""]).to(device).float(),
    )
    history: dict[str, list] = {"step": [], "loss": [], "lr": [], "eval_step": [], "eval_loss": []}
    start = 0
    resume_path = _resume_path(config)
    if resume_path is not None:
        state = ckpt.load_checkpoint(resume_path, _config_dict(config))
        with torch.no_grad():
            for name, parameter in trainable.items():
                parameter.copy_(state["trainable"][name])
                ema[name].copy_(state["ema"][name])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        start, history = state["step"], state["history"]

    eval_count = min(config.eval_batch_size or config.batch_size, len(source))
    eval_batch = _draw_batch(
        teacher_pipe,
        source,
        list(range(eval_count)),
        step_generator(config.seed, -1),
        config,
        device,
    )

    def evaluate(step: int) -> None:
        if history["eval_step"] and history["eval_step"][-1] == step:
            return
        with torch.no_grad():
            history["eval_loss"].append(objective.loss(eval_batch).item())
        history["eval_step"].append(step)

    def save(step: int) -> None:
        state = {
            "step": step,
            "history": history,
            "config": _config_dict(config),
            "trainable": {n: p.detach().cpu() for n, p in trainable.items()},
            "ema": {n: t.cpu() for n, t in ema.items()},
            "optimizer": optimizer.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler.is_enabled() else {},
        }
        ckpt.save_checkpoint(config.checkpoint_dir, step, state, config.keep_checkpoints)

    order = _EpochOrder(len(source), config.seed)
    evaluate(start)
    bar = tqdm(
        total=config.steps,
        initial=start,
        desc=f"LCD ({config.student})",
        disable=not config.progress,
    )
    for step in range(start, config.steps):
        lr = config.learning_rate_for_student * min(
            1.0, (step + 1) / max(1, config.lr_warmup_steps)
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = _draw_batch(
            teacher_pipe,
            source,
            order.indices(step, config.batch_size),
            step_generator(config.seed, step),
            config,
            device,
        )
        loss = objective.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(list(trainable.values()), config.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        lcm.ema_update(ema.values(), trainable.values(), config.ema_decay)
        done = step + 1
        history["step"].append(done)
        history["loss"].append(loss.item())
        history["lr"].append(lr)
        if config.eval_every and done % config.eval_every == 0:
            evaluate(done)
        if config.checkpoint_every and done % config.checkpoint_every == 0:
            save(done)
        bar.update(1)
        bar.set_postfix(loss=f"{history['loss'][-1]:.4g}")
    bar.close()
    evaluate(config.steps)
    if (
        config.checkpoint_dir is not None
        and not (config.checkpoint_every and config.steps % config.checkpoint_every == 0)
        and start < config.steps
    ):
        save(config.steps)
    return _finish(teacher_pipe, student, history, config, output_dir)


def _resume_path(config: DistillConfig) -> str | None:
    if isinstance(config.resume, str):
        return config.resume
    if config.resume:
        return ckpt.latest_checkpoint(config.checkpoint_dir)  # None: nothing yet, start fresh
    return None


def _config_dict(config: DistillConfig) -> dict[str, Any]:
    values = config.to_dict()
    values["lora_target_modules"] = list(config.lora_target_modules)
    return values


def _finish(teacher_pipe, student, history, config, output_dir) -> Any:
    import diffusers

    student.eval().requires_grad_(False)
    if student.dtype != teacher_pipe.unet.dtype:  # sample in the teacher's precision
        student.to(teacher_pipe.unet.dtype)
    scheduler = diffusers.LCMScheduler.from_config(
        teacher_pipe.scheduler.config,
        original_inference_steps=config.num_ddim_timesteps,
        timestep_spacing="trailing",
    )
    pipe = type(teacher_pipe).from_pipe(teacher_pipe, unet=student, scheduler=scheduler)
    pipe.distill_history = history
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        ckpt.write_history(
            os.path.join(output_dir, "loss_history.json"), history, {"config": _config_dict(config)}
        )
        ckpt.plot_history(
            os.path.join(output_dir, "loss.png"),
            history,
            f"latent consistency distillation ({config.student} student)",
        )
        save_student(
            student, config.student, type(teacher_pipe), os.path.join(output_dir, config.student)
        )
    return pipe
