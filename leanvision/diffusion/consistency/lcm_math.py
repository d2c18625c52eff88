"""The arithmetic of latent consistency distillation (LCM, Luo et al. 2023, arXiv:2310.04378).

Everything here is a pure function of tensors, so the trainer in ``distill.py`` reads as the
paper's Algorithm 1 and each formula is tested on its own:

* the skipping-step DDIM grid ``t_n = (n + 1) * k - 1`` with ``k = T // num_ddim_timesteps``;
* the consistency-model boundary scalings ``c_skip(t)``, ``c_out(t)`` (``c_skip(0) == 1``,
  ``c_out(0) == 0``, so ``f(x, 0) == x``), with ``t`` multiplied by ``timestep_scaling``;
* x0 / noise recovered from an epsilon-, v- or sample-predicting denoiser;
* the augmented-PF-ODE guidance ``z + (1 + w) * cond - w * uncond`` (the LCM paper's form:
  ``w`` here equals ``guidance_scale - 1`` of diffusers' pipelines);
* the pseudo-Huber distance and the EMA (Polyak) update of the target network.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def ddim_timesteps(num_train_timesteps: int, num_ddim_timesteps: int) -> torch.Tensor:
    """The skipping-step solver grid: ``[k-1, 2k-1, ..., T-1]`` with ``k = T // N`` (long, (N,)).

    >>> ddim_timesteps(1000, 4).tolist()
    [249, 499, 749, 999]
    """
    if not 1 <= num_ddim_timesteps <= num_train_timesteps:
        raise ValueError(
            f"num_ddim_timesteps={num_ddim_timesteps} must lie in [1, {num_train_timesteps}]"
        )
    skip = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1, dtype=torch.long) * skip - 1


def boundary_scalings(
    timesteps: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` of the consistency parameterisation ``f = c_skip x + c_out x0``.

    ``timesteps`` are discrete training timesteps; multiplying them by ``timestep_scaling``
    makes ``c_skip`` fall to ~0 after the first few steps, so the model's own x0 prediction
    dominates everywhere but at ``t = 0``, where ``f`` is the identity (the boundary condition).

    >>> c_skip, c_out = boundary_scalings(torch.tensor([0.0, 999.0]))
    >>> c_skip[0].item(), c_out[0].item()
    (1.0, 0.0)
    """
    scaled = timesteps.double() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2).sqrt()
    return c_skip.float(), c_out.float()


def _per_sample(values: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[timesteps]`` shaped (B, 1, 1, ...) to broadcast against ``like``."""
    picked = values.to(like.device)[timesteps.to(like.device)]
    return picked.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def predicted_x0_and_noise(
    model_output: torch.Tensor,
    timesteps: torch.Tensor,
    sample: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recover ``(x0, noise)`` from a denoiser output at ``x_t = a_t x0 + s_t noise``.

    ``alphas_cumprod`` is the scheduler's (T,) table; ``a_t = sqrt(alphas_cumprod[t])``,
    ``s_t = sqrt(1 - alphas_cumprod[t])``.

    >>> bar = torch.linspace(0.99, 0.01, 10)
    >>> x0, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    >>> t = torch.tensor([2, 7])
    >>> a, s = bar[t].sqrt().view(2, 1, 1, 1), (1 - bar[t]).sqrt().view(2, 1, 1, 1)
    >>> got, _ = predicted_x0_and_noise(noise, t, a * x0 + s * noise, bar)
    >>> torch.allclose(got, x0, atol=1e-4)
    True
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type={prediction_type!r} is not supported; choose one of "
            f"{list(PREDICTION_TYPES)}"
        )
    alpha = _per_sample(alphas_cumprod.sqrt(), timesteps, sample)
    sigma = _per_sample((1 - alphas_cumprod).sqrt(), timesteps, sample)
    if prediction_type == "epsilon":
        noise = model_output
        x0 = (sample - sigma * noise) / alpha
    elif prediction_type == "v_prediction":
        x0 = alpha * sample - sigma * model_output
        noise = alpha * model_output + sigma * sample
    else:
        x0 = model_output
        noise = (sample - alpha * x0) / sigma
    return x0, noise


def ddim_step_to(
    x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod_prev: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM step: ``sqrt(a_prev) x0 + sqrt(1 - a_prev) noise``.

    ``alphas_cumprod_prev`` is per sample, shape (B,).

    >>> ddim_step_to(torch.ones(1, 1), torch.zeros(1, 1), torch.tensor([0.25])).item()
    0.5
    """
    prev = alphas_cumprod_prev.reshape(-1, *([1] * (x0.ndim - 1))).to(x0)
    return prev.sqrt() * x0 + (1 - prev).sqrt() * noise


def guided(cond: torch.Tensor, uncond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The LCM paper's guided estimate ``(1 + w) cond - w uncond``, ``w`` of shape (B,).

    >>> guided(torch.ones(2, 1), torch.zeros(2, 1), torch.tensor([3.0, 0.0])).flatten().tolist()
    [4.0, 1.0]
    """
    scale = w.reshape(-1, *([1] * (cond.ndim - 1))).to(cond)
    return cond + scale * (cond - uncond)


def guidance_scale_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of guidance weights ``w`` (B,) -> (B, dim), as diffusers' LCM and
    SD pipelines compute it for ``timestep_cond`` (they embed ``guidance_scale - 1``).

    >>> guidance_scale_embedding(torch.tensor([7.5]), 256).shape
    torch.Size([1, 256])
    """
    if w.ndim != 1:
        raise ValueError(f"w must be 1-D (one weight per sample), got shape {tuple(w.shape)}")
    half = dim // 2
    frequencies = torch.exp(
        torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1))
    )
    angles = (w.float() * 1000.0)[:, None] * frequencies[None, :]
    embedding = torch.cat([angles.sin(), angles.cos()], dim=1)
    if dim % 2:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding


def pseudo_huber(prediction: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    """Mean of ``sqrt((prediction - target)^2 + c^2) - c``: L2 near zero, L1 for outliers.

    >>> pseudo_huber(torch.zeros(3), torch.zeros(3), 0.001).item()
    0.0
    """
    difference = prediction.float() - target.float()
    return (torch.sqrt(difference**2 + c**2) - c).mean()


@torch.no_grad()
def ema_update(target: Iterable[torch.Tensor], online: Iterable[torch.Tensor], decay: float):
    """Polyak averaging in place: ``target = decay * target + (1 - decay) * online``.

    >>> t = [torch.zeros(2)]
    >>> ema_update(t, [torch.ones(2)], 0.95)
    >>> round(t[0][0].item(), 4)
    0.05
    """
    for target_tensor, online_tensor in zip(target, online, strict=True):
        target_tensor.mul_(decay).add_(online_tensor.detach().to(target_tensor), alpha=1 - decay)
