"""Tiny random-weight diffusers pipelines, built offline and seeded.

Every factory builds the real diffusers pipeline class from tiny component configs (shaped
like diffusers' own ``get_dummy_components``), with in-memory tokenizers, so nothing touches
the model hub. The weights come from ``seed`` (the caller's global RNG is left alone) and
``inputs`` carry a ``torch.Generator`` seeded with the same ``seed`` and ask for
``DEFAULT_STEPS`` (10) denoising steps: enough for step caches to reuse features, so
``lv.diffusion.accelerate(tiny.model, "deepcache")`` shows cached calls on the default inputs.

A generator is consumed by a call, so a second call with the same ``inputs`` draws new
noise. ``info["make_inputs"]()`` returns fresh inputs with a freshly seeded generator: use it
to compare a baseline run with a patched one on identical noise.

>>> tiny = tiny_sd_pipeline(seed=0)
>>> tiny.model(**tiny.inputs).images.shape
(1, 32, 32, 3)
>>> tiny.info["family"], tiny.info["denoiser"], tiny.inputs["num_inference_steps"]
('sd', 'unet', 10)
"""

from __future__ import annotations

from typing import Any

import diffusers as df
import numpy as np
import torch

from leanvision.testing.common import TinyModel
from leanvision.testing.diffusion_parts import (
    DEFAULT_STEPS,
    PROMPT,
    SCHEDULERS,
    build,
    call_inputs,
    check_output_type,
    clip_text_encoder,
    clip_tokenizer,
    conditioning_image,
    flow_scheduler,
    make_vae,
    sd_scheduler,
    seeded_generator,
    t5_encoder,
    t5_tokenizer,
)

__all__ = [
    "DEFAULT_STEPS",
    "SCHEDULERS",
    "images_of",
    "tiny_dit",
    "tiny_flux",
    "tiny_pixart",
    "tiny_sd3",
    "tiny_sd_pipeline",
    "tiny_sdxl_pipeline",
]

# ---------------------------------------------------------------- UNet pipelines


def _sd_unet() -> df.UNet2DConditionModel:
    # SD 1.x layout in miniature: cross-attention blocks first, a plain block last, and two
    # resnets per block so DeepCache-style methods have a shallow skip branch to reuse.
    return df.UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()


def tiny_sd_pipeline(
    seed: int = 0,
    scheduler: str = "ddim",
    img2img: bool = False,
    controlnet: bool = False,
    output_type: str = "np",
    size: int = 32,
) -> TinyModel:
    """A tiny Stable Diffusion 1.x pipeline (UNet 32/64 channels, 2-layer CLIP text encoder).

    ``scheduler`` is one of ``SCHEDULERS`` ("ddim", "heun", "dpm", "euler"). ``img2img``
    gives a ``StableDiffusionImg2ImgPipeline`` (``2 * DEFAULT_STEPS`` steps at strength 0.5,
    i.e. ``DEFAULT_STEPS`` denoising steps) and ``controlnet`` a
    ``StableDiffusionControlNetPipeline`` whose ControlNet is copied from the UNet; both put the conditioning image in ``inputs["image"]``. Images are
    ``size`` x ``size`` (a multiple of 4), latents half that.

    >>> tiny = tiny_sd_pipeline(scheduler="heun")
    >>> out = tiny.model(**tiny.inputs).images
    >>> out.shape, tiny.info["denoiser"]
    ((1, 32, 32, 3), 'unet')
    """
    check_output_type(output_type)
    if img2img and controlnet:
        raise ValueError("img2img and controlnet cannot both be True")
    if size <= 0 or size % 4:
        raise ValueError(f"size must be a positive multiple of 4, got {size}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {scheduler!r}")

    def make_pipe() -> Any:
        unet = _sd_unet()
        vae = make_vae()
        tokenizer = clip_tokenizer()
        text_encoder = clip_text_encoder(tokenizer)
        components = dict(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=sd_scheduler(scheduler),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        if controlnet:
            # The conditioning embedding must downsample the image to the latent size (2x).
            control = df.ControlNetModel.from_unet(
                unet, conditioning_embedding_out_channels=(16, 32)
            ).eval()
            return df.StableDiffusionControlNetPipeline(controlnet=control, **components)
        if img2img:
            return df.StableDiffusionImg2ImgPipeline(**components)
        return df.StableDiffusionPipeline(**components)

    def make_inputs() -> dict[str, Any]:
        inputs: dict[str, Any] = dict(
            prompt=PROMPT,
            num_inference_steps=DEFAULT_STEPS,
            guidance_scale=5.0,
            generator=seeded_generator(seed),
            output_type=output_type,
        )
        if img2img:
            inputs.update(
                image=conditioning_image(seed, size),
                num_inference_steps=2 * DEFAULT_STEPS,
                strength=0.5,
            )
        else:
            inputs.update(height=size, width=size)
        if controlnet:
            inputs["image"] = conditioning_image(seed, size)
        return inputs

    family = "sd-controlnet" if controlnet else "sd"
    info = {"family": family, "denoiser": "unet", "height": size, "width": size}
    info["scheduler"] = scheduler
    return build(seed, make_pipe, make_inputs, info)


def tiny_sdxl_pipeline(
    seed: int = 0, scheduler: str = "ddim", output_type: str = "np"
) -> TinyModel:
    """A tiny SDXL pipeline: two CLIP text encoders (the second with a projection), a UNet
    with ``text_time`` added conditioning and a deeper transformer in its inner block.

    >>> tiny = tiny_sdxl_pipeline()
    >>> tiny.model(**tiny.inputs).images.shape
    (1, 32, 32, 3)
    """
    check_output_type(output_type)
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {scheduler!r}")

    def make_pipe() -> Any:
        tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
        text_encoder = clip_text_encoder(tokenizer)
        text_encoder_2 = clip_text_encoder(tokenizer_2, with_projection=True)
        unet = df.UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=2,
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),  # SDXL's config calls the head count attention_head_dim
            use_linear_projection=True,
            cross_attention_dim=64,  # both text encoders' hidden states, concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 size/crop ids + pooled text
            norm_num_groups=8,
        ).eval()
        return df.StableDiffusionXLPipeline(
            vae=make_vae(),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=sd_scheduler(scheduler),
        )

    make_inputs = call_inputs(
        seed,
        output_type,
        guidance_scale=5.0,
        prompt=PROMPT,
        height=32,
        width=32,
    )

    info = {"family": "sdxl", "denoiser": "unet", "height": 32, "width": 32}
    info["scheduler"] = scheduler
    return build(seed, make_pipe, make_inputs, info)


# ---------------------------------------------------------------- transformer pipelines


def tiny_pixart(seed: int = 0, output_type: str = "np") -> TinyModel:
    """A tiny PixArt-alpha pipeline: a 2-layer ``PixArtTransformer2DModel`` (adaLN-single,
    learned sigma) conditioned on a 2-layer T5 encoder.

    >>> tiny = tiny_pixart()
    >>> tiny.model(**tiny.inputs).images.shape
    (1, 32, 32, 3)
    """
    check_output_type(output_type)

    def make_pipe() -> Any:
        tokenizer = t5_tokenizer()
        transformer = df.PixArtTransformer2DModel(
            sample_size=16,
            num_layers=2,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_channels=32,
            in_channels=4,
            cross_attention_dim=32,
            out_channels=8,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
        ).eval()
        return df.PixArtAlphaPipeline(
            tokenizer=tokenizer,
            text_encoder=t5_encoder(tokenizer),
            vae=make_vae(),
            transformer=transformer,
            scheduler=sd_scheduler("ddim"),
        )

    make_inputs = call_inputs(
        seed,
        output_type,
        guidance_scale=4.5,
        prompt=PROMPT,
        height=32,
        width=32,
        max_sequence_length=16,
        use_resolution_binning=False,  # the bins exist only for the real sample sizes
    )

    info = {"family": "pixart", "denoiser": "transformer", "height": 32, "width": 32}
    return build(seed, make_pipe, make_inputs, info)


def tiny_dit(seed: int = 0, output_type: str = "np") -> TinyModel:
    """A tiny class-conditional DiT pipeline (``DiTTransformer2DModel``, adaLN-zero, 1000
    classes). Its inputs take ``class_labels`` instead of a prompt.

    >>> tiny = tiny_dit()
    >>> tiny.model(**tiny.inputs).images.shape
    (1, 32, 32, 3)
    """
    check_output_type(output_type)

    def make_pipe() -> Any:
        transformer = df.DiTTransformer2DModel(
            sample_size=16,
            num_layers=2,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=4,
            in_channels=4,
            out_channels=8,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_zero",
            norm_elementwise_affine=False,
        ).eval()
        return df.DiTPipeline(
            transformer=transformer, vae=make_vae(), scheduler=sd_scheduler("ddim")
        )

    make_inputs = call_inputs(
        seed,
        output_type,
        guidance_scale=4.0,
        class_labels=[1],
    )

    info = {"family": "dit", "denoiser": "transformer", "height": 32, "width": 32}
    return build(seed, make_pipe, make_inputs, info)


def tiny_flux(seed: int = 0, output_type: str = "np") -> TinyModel:
    """A tiny Flux pipeline: ``FluxTransformer2DModel`` with 1 double- and 1 single-stream
    block, CLIP (pooled) + T5 (sequence) text encoders, flow-matching Euler scheduler and
    guidance embedding (like FLUX.1-dev). Real classifier-free guidance needs
    ``true_cfg_scale > 1`` and a ``negative_prompt``.

    >>> tiny = tiny_flux()
    >>> tiny.model(**tiny.inputs).images.shape
    (1, 32, 32, 3)
    """
    check_output_type(output_type)

    def make_pipe() -> Any:
        tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
        transformer = df.FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,  # 4 latent channels packed 2x2
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
        ).eval()
        return df.FluxPipeline(
            scheduler=flow_scheduler(),
            vae=make_vae(flow=True),
            text_encoder=clip_text_encoder(tokenizer),
            tokenizer=tokenizer,
            text_encoder_2=t5_encoder(tokenizer_2),
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )

    make_inputs = call_inputs(
        seed,
        output_type,
        guidance_scale=3.5,
        prompt=PROMPT,
        height=32,
        width=32,
        max_sequence_length=16,
    )

    info = {"family": "flux", "denoiser": "transformer", "height": 32, "width": 32}
    return build(seed, make_pipe, make_inputs, info)


def tiny_sd3(seed: int = 0, output_type: str = "np") -> TinyModel:
    """A tiny Stable Diffusion 3 pipeline: a 2-layer MMDiT (``SD3Transformer2DModel``), two
    projected CLIP encoders and a T5 encoder, flow-matching Euler scheduler.

    >>> tiny = tiny_sd3()
    >>> tiny.model(**tiny.inputs).images.shape
    (1, 32, 32, 3)
    """
    check_output_type(output_type)

    def make_pipe() -> Any:
        tokenizer, tokenizer_2, tokenizer_3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
        transformer = df.SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            # CLIP hidden states (32 + 32) are zero-padded to the T5 width and joined with it.
            joint_attention_dim=64,
            caption_projection_dim=32,
            pooled_projection_dim=64,  # both CLIP text_embeds, concatenated
            pos_embed_max_size=16,
        ).eval()
        return df.StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=flow_scheduler(),
            vae=make_vae(flow=True),
            text_encoder=clip_text_encoder(tokenizer, with_projection=True),
            tokenizer=tokenizer,
            text_encoder_2=clip_text_encoder(tokenizer_2, with_projection=True),
            tokenizer_2=tokenizer_2,
            text_encoder_3=t5_encoder(tokenizer_3, d_model=64),
            tokenizer_3=tokenizer_3,
        )

    make_inputs = call_inputs(
        seed,
        output_type,
        guidance_scale=5.0,
        prompt=PROMPT,
        height=32,
        width=32,
        max_sequence_length=16,
    )

    info = {"family": "sd3", "denoiser": "transformer", "height": 32, "width": 32}
    return build(seed, make_pipe, make_inputs, info)


def images_of(output: Any) -> np.ndarray:
    """The images of a pipeline output as float numpy (B, H, W, 3), whatever ``output_type``.

    >>> import numpy as np
    >>> tiny = tiny_dit(output_type="pt")
    >>> images_of(tiny.model(**tiny.inputs)).shape
    (1, 32, 32, 3)
    """
    images = output.images
    if isinstance(images, torch.Tensor):  # "pt" gives (B, 3, H, W)
        images = images.detach().float().permute(0, 2, 3, 1).cpu().numpy()
    return np.asarray(images, dtype=np.float32)
