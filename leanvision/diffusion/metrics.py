"""Fidelity of an accelerated pipeline to its same-seed baseline: PSNR, SSIM, CLIP score.

Images may be given as diffusers returns them: a numpy array ``(B, H, W, C)`` or
``(H, W, C)`` (``output_type="np"``), a torch tensor ``(B, C, H, W)`` or ``(C, H, W)``
(``output_type="pt"``), a PIL image, or a list of any of these. Float images are taken to
span ``[0, data_range]``; ``uint8`` arrays and PIL images are scaled from ``[0, 255]`` to
``[0, 1]``.

>>> import numpy as np
>>> a = np.zeros((1, 16, 16, 3)); b = a + 0.1
>>> round(psnr(a, b), 6)
20.0
>>> ssim(a, a)
1.0
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from leanvision.core.errors import MissingDependencyError

__all__ = ["clip_score", "fidelity", "psnr", "ssim", "to_image_batch"]


def to_image_batch(images: Any) -> torch.Tensor:
    """``images`` as a float64 ``(B, C, H, W)`` tensor (see the module docstring for layouts).

    >>> to_image_batch(np.zeros((2, 8, 6, 3), dtype=np.uint8)).shape
    torch.Size([2, 3, 8, 6])
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images is an empty list")
        return torch.cat([to_image_batch(image) for image in images])
    if type(images).__module__.startswith("PIL."):
        images = np.asarray(images.convert("RGB"))
    if isinstance(images, np.ndarray):
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        array = torch.as_tensor(np.array(images, dtype=np.float64)) / scale
        if array.ndim == 2:  # a grayscale (H, W) image
            array = array[..., None]
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise ValueError(f"numpy images must be (H, W, C) or (B, H, W, C), got {images.shape}")
        return array.permute(0, 3, 1, 2)
    if isinstance(images, torch.Tensor):
        scale = 255.0 if images.dtype == torch.uint8 else 1.0
        tensor = images.detach().cpu().double() / scale
        if tensor.ndim == 3:
            tensor = tensor[None]
        if tensor.ndim != 4:
            raise ValueError(f"tensor images must be (C, H, W) or (B, C, H, W), got {images.shape}")
        return tensor
    raise TypeError(
        f"images must be a numpy array, torch tensor, PIL image or a list of them, "
        f"got {type(images).__name__}"
    )


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    first, second = to_image_batch(a), to_image_batch(b)
    if first.shape != second.shape:
        raise ValueError(
            f"images to compare must have the same shape, got {tuple(first.shape)} and "
            f"{tuple(second.shape)} (as B, C, H, W)"
        )
    return first, second


def psnr(a: Any, b: Any, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)`` per image, averaged
    over the batch; ``inf`` when the images are identical.

    >>> import torch
    >>> round(psnr(torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.01)), 6)
    40.0
    """
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    first, second = _pair(a, b)
    mse = (first - second).pow(2).flatten(1).mean(dim=1)
    values = 10 * torch.log10(data_range**2 / mse)  # mse 0 gives inf, as it should
    return float(values.mean())


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    return weights[:, None] * weights[None, :]


def ssim(
    a: Any,
    b: Any,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Structural similarity (Wang et al. 2004) with a Gaussian window, averaged over every
    window position ("valid": no padding), channel and image; 1.0 for identical images.

    Per window, with Gaussian-weighted means ``mu``, variances ``var`` and covariance ``cov``:
    ``(2 mu_a mu_b + C1)(2 cov + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))``,
    ``C1 = (k1 R)^2``, ``C2 = (k2 R)^2``. Images smaller than the window use the largest odd
    window that fits.

    >>> import torch
    >>> x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> ssim(x, x), ssim(x, 1 - x) < 0.5
    (1.0, True)
    """
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd int, got {window_size}")
    first, second = _pair(a, b)
    _, channels, height, width = first.shape
    size = min(window_size, height - (height % 2 == 0), width - (width % 2 == 0))
    window = _gaussian_window(size, sigma).expand(channels, 1, size, size)

    def blur(x: torch.Tensor) -> torch.Tensor:  # weighted mean of every window, per channel
        return F.conv2d(x, window, groups=channels)

    mean_a, mean_b = blur(first), blur(second)
    var_a = blur(first * first) - mean_a**2
    var_b = blur(second * second) - mean_b**2
    cov = blur(first * second) - mean_a * mean_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    numerator = (2 * mean_a * mean_b + c1) * (2 * cov + c2)
    denominator = (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    return float((numerator / denominator).mean())


def fidelity(reference: Any, images: Any, data_range: float = 1.0) -> dict[str, float]:
    """PSNR and SSIM of ``images`` against ``reference`` (e.g. the same-seed baseline).

    >>> fidelity(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
    {'psnr': inf, 'ssim': 1.0}
    """
    return {
        "psnr": psnr(reference, images, data_range),
        "ssim": ssim(reference, images, data_range),
    }


def _import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as error:
        raise MissingDependencyError("open_clip_torch", "clip", "clip_score") from error
    return open_clip


@torch.no_grad()
def clip_score(
    images: Any,
    prompts: str | Sequence[str],
    model: str = "ViT-B-32",
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> float:
    """Mean CLIP score, ``100 * max(cos(image, text), 0)``, of each image with its prompt.

    ``pretrained`` is a local open_clip checkpoint file (nothing is downloaded); one prompt
    string is used for every image. Raises :class:`~leanvision.MissingDependencyError`
    without ``open_clip`` (``pip install 'leanvision[clip]'``) and ``FileNotFoundError``
    when ``pretrained`` is not a local file.

    >>> clip_score(images, "a red fox in snow", pretrained="ViT-B-32.pt")  # doctest: +SKIP
    31.2
    """
    open_clip = _import_open_clip()
    if pretrained is None or not os.path.isfile(pretrained):
        raise FileNotFoundError(
            f"clip_score needs pretrained= a local open_clip checkpoint file for {model!r}; "
            f"got {pretrained!r} (weights are never downloaded)"
        )
    batch = to_image_batch(images).float().clamp(0, 1)
    texts = [prompts] * batch.shape[0] if isinstance(prompts, str) else list(prompts)
    if len(texts) != batch.shape[0]:
        raise ValueError(f"got {batch.shape[0]} images but {len(texts)} prompts; give one each")
    clip, _, preprocess = open_clip.create_model_and_transforms(
        model, pretrained=os.fspath(pretrained), device=device
    )
    clip.eval()
    tokenizer = open_clip.get_tokenizer(model)
    # open_clip's transforms expect PIL images: go through uint8 as a saved image would.
    from PIL import Image

    pixels = (batch.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    image_input = torch.stack([preprocess(Image.fromarray(p)) for p in pixels]).to(device)
    image_features = F.normalize(clip.encode_image(image_input).float(), dim=-1)
    text_features = F.normalize(clip.encode_text(tokenizer(texts).to(device)).float(), dim=-1)
    cosine = (image_features * text_features).sum(dim=-1)
    return float((100 * cosine.clamp(min=0)).mean())
