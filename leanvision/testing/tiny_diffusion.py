"""Tiny random-weight diffusers pipelines, built offline and seeded.

Every factory builds the real diffusers pipeline class from tiny component configs (shaped
like diffusers' own ``get_dummy_components``), with in-memory tokenizers, so nothing touches
the model hub. The weights come from ``seed`` (the caller's global RNG is left alone) and
``inputs`` carry a ``torch.Generator`` seeded with the same ``seed``.

A generator is consumed by a call, so a second call with the same ``inputs`` draws new
noise. ``info["make_inputs"]()`` returns fresh inputs with a freshly seeded generator: use it
to compare a baseline run with a patched one on identical noise.

>>> tiny = tiny_sd_pipeline(seed=0)
>>> tiny.model(**tiny.inputs).images.shape
(1, 32, 32, 3)
>>> tiny.info["family"], tiny.info["denoiser"]
('sd', 'unet')
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

import diffusers as df
import numpy as np
import torch
import transformers as tf

from leanvision.testing.common import TinyModel

__all__ = [
    "SCHEDULERS",
    "images_of",
    "tiny_dit",
    "tiny_flux",
    "tiny_pixart",
    "tiny_sd3",
    "tiny_sd_pipeline",
    "tiny_sdxl_pipeline",
]

PROMPT = "a red fox in snow"
# Name -> diffusers scheduler class. "heun" is second order (two UNet calls per step) and
# "dpm" is a multistep solver: caching methods must cope with both.
SCHEDULERS: dict[str, type] = {
    "ddim": df.DDIMScheduler,
    "heun": df.HeunDiscreteScheduler,
    "dpm": df.DPMSolverMultistepScheduler,
    "euler": df.EulerDiscreteScheduler,
}
# The SD 1.x noise schedule, so the tiny pipelines step through realistic timesteps.
_SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)
_CLIP_MAX_LENGTH = 77


# ---------------------------------------------------------------- shared components


def _clip_tokenizer() -> tf.CLIPTokenizer:
    """A CLIP BPE tokenizer with no merges: every word splits into characters, so any
    lowercase ASCII prompt tokenizes without unknown tokens."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = list(string.ascii_lowercase + string.digits + ".,!?-'")
    tokens = specials + chars + [c + "</w>" for c in chars]
    vocab = {token: index for index, token in enumerate(tokens)}
    return tf.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=_CLIP_MAX_LENGTH)


def _clip_text_encoder(
    tokenizer: tf.CLIPTokenizer, hidden_size: int = 32, with_projection: bool = False
) -> tf.PreTrainedModel:
    """A 2-layer CLIP text tower; ``with_projection`` gives the pooled ``text_embeds`` SDXL and
    SD3 need."""
    config = tf.CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_CLIP_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    model_class = tf.CLIPTextModelWithProjection if with_projection else tf.CLIPTextModel
    return model_class(config).eval()


def _t5_tokenizer() -> tf.T5Tokenizer:
    """A unigram T5 tokenizer over single characters plus a few whole words."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + word, -1.0) for word in PROMPT.split()]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits + ".,!?-'"]
    return tf.T5Tokenizer(vocab=pieces, extra_ids=0)


def _t5_encoder(tokenizer: tf.T5Tokenizer, d_model: int = 32) -> tf.T5EncoderModel:
    config = tf.T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return tf.T5EncoderModel(config).eval()


def _vae(latent_channels: int = 4, flow: bool = False) -> df.AutoencoderKL:
    """A 2-block VAE: images are 2x the latent size (``vae_scale_factor == 2``). ``flow``
    drops the quant convs and sets a shift, as the Flux/SD3 VAEs do."""
    extra: dict[str, Any] = {}
    if flow:
        extra = dict(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609)
    return df.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        **extra,
    ).eval()


def _scheduler(name: str) -> Any:
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {name!r}")
    # from_config drops keys a class does not know (e.g. DDIM's clip_sample for Heun).
    return SCHEDULERS[name].from_config(_SD_SCHEDULE)


def _check_output_type(output_type: str) -> None:
    if output_type not in ("np", "pt"):
        raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")


def _build(
    seed: int,
    make_pipe: Callable[[], Any],
    make_inputs: Callable[[], dict[str, Any]],
    info: dict[str, Any],
) -> TinyModel:
    """Build the pipeline under ``seed`` without touching the caller's RNG, and attach a
    ``make_inputs`` that re-seeds the generator on every call."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = make_pipe()
    pipe.set_progress_bar_config(disable=True)
    info = {"seed": seed, "make_inputs": make_inputs, **info}
    return TinyModel(model=pipe, inputs=make_inputs(), info=info)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def _image(seed: int, size: int) -> torch.Tensor:
    """A deterministic RGB image in [0, 1], shape (1, 3, size, size), for img2img/control."""
    generator = _generator(seed + 1)
    return torch.rand(1, 3, size, size, generator=generator)


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
    gives a ``StableDiffusionImg2ImgPipeline`` (4 steps at strength 0.5, i.e. 2 denoising
    steps) and ``controlnet`` a ``StableDiffusionControlNetPipeline`` whose ControlNet is
    copied from the UNet; both put the conditioning image in ``inputs["image"]``. Images are
    ``size`` x ``size`` (a multiple of 4), latents half that.

    >>> tiny = tiny_sd_pipeline(scheduler="heun")
    >>> out = tiny.model(**tiny.inputs).images
    >>> out.shape, tiny.info["denoiser"]
    ((1, 32, 32, 3), 'unet')
    """
    _check_output_type(output_type)
    if img2img and controlnet:
        raise ValueError("img2img and controlnet cannot both be True")
    if size <= 0 or size % 4:
        raise ValueError(f"size must be a positive multiple of 4, got {size}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {scheduler!r}")

    def make_pipe() -> Any:
        unet = _sd_unet()
        vae = _vae()
        tokenizer = _clip_tokenizer()
        text_encoder = _clip_text_encoder(tokenizer)
        components = dict(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=_scheduler(scheduler),
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
            num_inference_steps=2,
            guidance_scale=5.0,
            generator=_generator(seed),
            output_type=output_type,
        )
        if img2img:
            inputs.update(image=_image(seed, size), num_inference_steps=4, strength=0.5)
        else:
            inputs.update(height=size, width=size)
        if controlnet:
            inputs["image"] = _image(seed, size)
        return inputs

    family = "sd-controlnet" if controlnet else "sd"
    info = {"family": family, "denoiser": "unet", "height": size, "width": size}
    info["scheduler"] = scheduler
    return _build(seed, make_pipe, make_inputs, info)


def tiny_sdxl_pipeline(
    seed: int = 0, scheduler: str = "ddim", output_type: str = "np"
) -> TinyModel:
    """A tiny SDXL pipeline: two CLIP text encoders (the second with a projection), a UNet
    with ``text_time`` added conditioning and a deeper transformer in its inner block.

    >>> tiny = tiny_sdxl_pipeline()
    >>> tiny.model(**tiny.inputs).images.shape
    (1, 32, 32, 3)
    """
    _check_output_type(output_type)
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {scheduler!r}")

    def make_pipe() -> Any:
        tokenizer, tokenizer_2 = _clip_tokenizer(), _clip_tokenizer()
        text_encoder = _clip_text_encoder(tokenizer)
        text_encoder_2 = _clip_text_encoder(tokenizer_2, with_projection=True)
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
            vae=_vae(),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=_scheduler(scheduler),
        )

    def make_inputs() -> dict[str, Any]:
        return dict(
            prompt=PROMPT,
            num_inference_steps=2,
            guidance_scale=5.0,
            height=32,
            width=32,
            generator=_generator(seed),
            output_type=output_type,
        )

    info = {"family": "sdxl", "denoiser": "unet", "height": 32, "width": 32}
    info["scheduler"] = scheduler
    return _build(seed, make_pipe, make_inputs, info)


# ---------------------------------------------------------------- transformer pipelines


def tiny_pixart(seed: int = 0, output_type: str = "np") -> TinyModel:
    """A tiny PixArt-alpha pipeline: a 2-layer ``PixArtTransformer2DModel`` (adaLN-single,
    learned sigma) conditioned on a 2-layer T5 encoder.

    >>> tiny = tiny_pixart()
    >>> tiny.model(**tiny.inputs).images.shape
    (1, 32, 32, 3)
    """
    _check_output_type(output_type)

    def make_pipe() -> Any:
        tokenizer = _t5_tokenizer()
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
            text_encoder=_t5_encoder(tokenizer),
            vae=_vae(),
            transformer=transformer,
            scheduler=_scheduler("ddim"),
        )

    def make_inputs() -> dict[str, Any]:
        return dict(
            prompt=PROMPT,
            num_inference_steps=2,
            guidance_scale=4.5,
            height=32,
            width=32,
            max_sequence_length=16,
            use_resolution_binning=False,  # the bins exist only for the real sample sizes
            generator=_generator(seed),
            output_type=output_type,
        )

    info = {"family": "pixart", "denoiser": "transformer", "height": 32, "width": 32}
    return _build(seed, make_pipe, make_inputs, info)


def tiny_dit(seed: int = 0, output_type: str = "np") -> TinyModel:
    """A tiny class-conditional DiT pipeline (``DiTTransformer2DModel``, adaLN-zero, 1000
    classes). Its inputs take ``class_labels`` instead of a prompt.

    >>> tiny = tiny_dit()
    >>> tiny.model(**tiny.inputs).images.shape
    (1, 32, 32, 3)
    """
    _check_output_type(output_type)

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
        return df.DiTPipeline(transformer=transformer, vae=_vae(), scheduler=_scheduler("ddim"))

    def make_inputs() -> dict[str, Any]:
        return dict(
            class_labels=[1],
            num_inference_steps=2,
            guidance_scale=4.0,
            generator=_generator(seed),
            output_type=output_type,
        )

    info = {"family": "dit", "denoiser": "transformer", "height": 32, "width": 32}
    return _build(seed, make_pipe, make_inputs, info)


def _flow_scheduler() -> df.FlowMatchEulerDiscreteScheduler:
    # Resolution-dependent shift, as in the released Flux / SD3.5 scheduler configs.
    return df.FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256
    )


def tiny_flux(seed: int = 0, output_type: str = "np") -> TinyModel:
    """A tiny Flux pipeline: ``FluxTransformer2DModel`` with 1 double- and 1 single-stream
    block, CLIP (pooled) + T5 (sequence) text encoders, flow-matching Euler scheduler and
    guidance embedding (like FLUX.1-dev). Real classifier-free guidance needs
    ``true_cfg_scale > 1`` and a ``negative_prompt``.

    >>> tiny = tiny_flux()
    >>> tiny.model(**tiny.inputs).images.shape
    (1, 32, 32, 3)
    """
    _check_output_type(output_type)

    def make_pipe() -> Any:
        tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()
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
            scheduler=_flow_scheduler(),
            vae=_vae(flow=True),
            text_encoder=_clip_text_encoder(tokenizer),
            tokenizer=tokenizer,
            text_encoder_2=_t5_encoder(tokenizer_2),
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )

    def make_inputs() -> dict[str, Any]:
        return dict(
            prompt=PROMPT,
            num_inference_steps=2,
            guidance_scale=3.5,
            height=32,
            width=32,
            max_sequence_length=16,
            generator=_generator(seed),
            output_type=output_type,
        )

    info = {"family": "flux", "denoiser": "transformer", "height": 32, "width": 32}
    return _build(seed, make_pipe, make_inputs, info)


def tiny_sd3(seed: int = 0, output_type: str = "np") -> TinyModel:
    """A tiny Stable Diffusion 3 pipeline: a 2-layer MMDiT (``SD3Transformer2DModel``), two
    projected CLIP encoders and a T5 encoder, flow-matching Euler scheduler.

    >>> tiny = tiny_sd3()
    >>> tiny.model(**tiny.inputs).images.shape
    (1, 32, 32, 3)
    """
    _check_output_type(output_type)

    def make_pipe() -> Any:
        tokenizer, tokenizer_2, tokenizer_3 = _clip_tokenizer(), _clip_tokenizer(), _t5_tokenizer()
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
            scheduler=_flow_scheduler(),
            vae=_vae(flow=True),
            text_encoder=_clip_text_encoder(tokenizer, with_projection=True),
            tokenizer=tokenizer,
            text_encoder_2=_clip_text_encoder(tokenizer_2, with_projection=True),
            tokenizer_2=tokenizer_2,
            text_encoder_3=_t5_encoder(tokenizer_3, d_model=64),
            tokenizer_3=tokenizer_3,
        )

    def make_inputs() -> dict[str, Any]:
        return dict(
            prompt=PROMPT,
            num_inference_steps=2,
            guidance_scale=5.0,
            height=32,
            width=32,
            max_sequence_length=16,
            generator=_generator(seed),
            output_type=output_type,
        )

    info = {"family": "sd3", "denoiser": "transformer", "height": 32, "width": 32}
    return _build(seed, make_pipe, make_inputs, info)


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
