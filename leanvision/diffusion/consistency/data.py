"""Training data for consistency distillation: (x0 latent, prompt) pairs.

Following the LCM paper, the student learns on latents ``x0 = scaling_factor * VAE(image)``
of real images when they are given (a list of images/paths/tensors or an image folder);
otherwise the teacher pipeline itself synthesises a pool of x0 latents from the prompts,
once, with a seeded generator (data-free distillation).

Every random draw of a training step comes from a generator seeded with ``(seed, step)``,
so step ``s`` sees the same batch whether the run was interrupted or not.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from leanvision.datasets import ImageFolder, load_image

ImageItem = Any  # a path, a PIL image, a uint8/float numpy array or a (3, H, W) tensor in [0, 1]


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator owned by one training step (and only that step)."""
    return torch.Generator("cpu").manual_seed(seed * 1_000_003 + step)


def _pixels(item: ImageItem, resolution: int) -> torch.Tensor:
    """One image as a (3, resolution, resolution) tensor in [-1, 1]: shorter side resized to
    ``resolution`` (bilinear, antialiased), then centre-cropped."""
    import torchvision.transforms.functional as tvf

    if isinstance(item, torch.Tensor):
        if item.ndim != 3 or item.shape[0] != 3:
            raise ValueError(f"image tensors must be (3, H, W) in [0, 1], got {tuple(item.shape)}")
        tensor = item.float()
    else:
        tensor = tvf.to_tensor(load_image(item))
    tensor = tvf.resize(tensor, resolution, antialias=True)
    tensor = tvf.center_crop(tensor, [resolution, resolution])
    return tensor.clamp(0, 1) * 2 - 1


class ImageLatents:
    """Images encoded on the fly by the teacher's VAE (a sample of its posterior)."""

    def __init__(self, images: Sequence[ImageItem], prompts: list[str], vae: Any, resolution: int):
        self.images = images
        self.prompts = prompts
        self.vae = vae
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.images)

    def prompt(self, index: int) -> str:
        return self.prompts[index % len(self.prompts)]

    @torch.no_grad()
    def latents(self, indices: list[int], generator: torch.Generator) -> torch.Tensor:
        pixels = torch.stack([_pixels(self._image(i), self.resolution) for i in indices])
        pixels = pixels.to(self.vae.device, self.vae.dtype)
        posterior = self.vae.encode(pixels).latent_dist
        # Draw the posterior noise on the CPU generator so the step stays reproducible.
        noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean)
        sample = posterior.mean + posterior.std * noise
        return sample.float() * self.vae.config.scaling_factor

    def _image(self, index: int) -> ImageItem:
        item = self.images[index]
        return item["image"] if isinstance(item, dict) else item


class TensorLatents:
    """A fixed pool of x0 latents (synthesised by the teacher) with their prompts."""

    def __init__(self, latents: torch.Tensor, prompts: list[str]):
        self.pool = latents
        self.prompts = prompts

    def __len__(self) -> int:
        return self.pool.shape[0]

    def prompt(self, index: int) -> str:
        return self.prompts[index]

    def latents(self, indices: list[int], generator: torch.Generator) -> torch.Tensor:
        return self.pool[indices].float()


def _as_prompts(prompts: str | Sequence[str] | None) -> list[str] | None:
    if prompts is None:
        return None
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a string or a non-empty sequence of strings")
    return prompts


def _as_images(images: Any) -> Sequence[ImageItem]:
    if isinstance(images, (str, os.PathLike)):
        if not os.path.isdir(images):
            raise ValueError(f"images={os.fspath(images)!r} is not a directory of images")
        return ImageFolder(images)
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"an images tensor must be (N, 3, H, W) in [0, 1], got {tuple(images.shape)}"
            )
        return list(images)
    if isinstance(images, (ImageFolder, list, tuple)):
        if len(images) == 0:
            raise ValueError("images is empty; give at least one image")
        return images
    raise TypeError(
        "images must be a folder path, an ImageFolder, a list of images/paths or an "
        f"(N, 3, H, W) tensor, got {type(images).__name__}"
    )


def build_source(
    pipe: Any,
    prompts: str | Sequence[str] | None,
    images: Any,
    resolution: int,
    synthetic_steps: int,
    synthetic_guidance: float,
    seed: int,
    cache_path: str | None = None,
) -> ImageLatents | TensorLatents:
    """The (x0, prompt) source for :func:`~leanvision.diffusion.consistency.distill`.

    With ``images``: one prompt for all, one per image, or (for an :class:`ImageFolder` and no
    prompts) the image's class folder name. Without: the teacher samples one x0 per prompt in
    ``synthetic_steps`` steps at ``synthetic_guidance``; the pool is cached at ``cache_path``.
    """
    prompt_list = _as_prompts(prompts)
    if images is not None:
        image_list = _as_images(images)
        if prompt_list is None:
            if not isinstance(image_list, ImageFolder) or not image_list.classes:
                raise ValueError(
                    "prompts is None; give prompts (one, or one per image) or an image folder "
                    "with one sub-folder per class (its name becomes the prompt)"
                )
            prompt_list = [
                image_list.classes[image_list.label(i)].replace("_", " ")
                for i in range(len(image_list))
            ]
        if len(prompt_list) not in (1, len(image_list)):
            raise ValueError(
                f"got {len(prompt_list)} prompts for {len(image_list)} images; give 1 prompt "
                "or one per image"
            )
        return ImageLatents(image_list, prompt_list, pipe.vae, resolution)
    if prompt_list is None:
        raise ValueError("give prompts (and optionally images); both are None")
    if cache_path is not None and os.path.exists(cache_path):
        saved = torch.load(cache_path, map_location="cpu", weights_only=True)
        if saved["prompts"] == prompt_list and saved["resolution"] == resolution:
            return TensorLatents(saved["latents"], prompt_list)
    latents = synthesize_latents(
        pipe, prompt_list, resolution, synthetic_steps, synthetic_guidance, seed
    )
    if cache_path is not None:
        os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
        torch.save(
            {"latents": latents, "prompts": prompt_list, "resolution": resolution}, cache_path
        )
    return TensorLatents(latents, prompt_list)


@torch.no_grad()
def synthesize_latents(
    pipe: Any, prompts: list[str], resolution: int, steps: int, guidance: float, seed: int
) -> torch.Tensor:
    """x0 latents (N, C, h, w) in the denoiser's (scaled) space, sampled by the teacher."""
    generator = torch.Generator("cpu").manual_seed(seed)
    chunks = []
    for start in range(0, len(prompts), 8):
        output = pipe(
            prompt=prompts[start : start + 8],
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=resolution,
            width=resolution,
            generator=generator,
            output_type="latent",
        )
        chunks.append(output.images.float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: list[str]) -> torch.Tensor:
    """CLIP hidden states (B, 77, D) of ``prompts`` through the pipeline's own text encoder."""
    embeds, _ = pipe.encode_prompt(
        prompts, pipe.text_encoder.device, 1, do_classifier_free_guidance=False
    )
    return embeds
