"""A small trained Stable Diffusion pipeline that draws captioned shapes, and its LCM student.

The real diffusers classes, built from the configs below, filled from the shipped float16
weights: a word-level ``CLIPTokenizer`` (built in memory), a 2-layer ``CLIPTextModel``, an
``AutoencoderKL`` with one 2x downsample (32 px images, 4x16x16 latents) and a 3-level
``UNet2DConditionModel`` in SD 1.x layout. The training scripts are ``training/train_sd.py``
(VAE, then UNet + text encoder, with 10% dropped captions for classifier-free guidance) and
``training/distill_lcm.py`` (``lv.diffusion.distill`` into a guidance-embedded UNet).

Prompts are captions of :func:`leanvision.testing.scenes.caption_item`, e.g.
``"a red circle on the left"``; :func:`scene_judge` reads the images back. How well it draws
them (1500 UNet steps on one CPU thread): at 50 DDIM steps, guidance 4, on 32 test captions the
judge reads the colour right 97% of the time, shape 22%, position 28%, all three 6%; the LCM
student at 4 steps stays at 25 dB PSNR / 0.80 SSIM from the teacher's images.

>>> tiny = trained_sd_pipeline(num_prompts=2, steps=10)
>>> images = tiny.model(**tiny.inputs).images
>>> images.shape, tiny.inputs["prompt"]
((2, 32, 32, 3), ['a purple square in the center', 'a purple cross on the bottom'])
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import diffusers as df
import torch
import transformers as tf

from leanvision.testing.common import TinyModel
from leanvision.testing.diffusion_parts import SCHEDULERS, SD_SCHEDULE, check_output_type
from leanvision.testing.scenes import CAPTION_POSITIONS, COLORS, SHAPES, caption_item, caption_text
from leanvision.testing.trained.weights import load_weights

__all__ = [
    "GUIDANCE_SCALE",
    "LCM_STEPS",
    "TEACHER_STEPS",
    "build_pipeline",
    "caption_tokenizer",
    "make_text_encoder",
    "make_unet",
    "make_vae",
    "test_captions",
    "trained_lcm_pipeline",
    "trained_sd_pipeline",
]

TEACHER_STEPS = 50
LCM_STEPS = 4
GUIDANCE_SCALE = 4.0  # the teacher's classifier-free guidance at sampling time
LCM_GUIDANCE_SCALE = 4.0  # the w the LCM student is conditioned on (its own embedding)
MAX_TOKENS = 16  # captions are 8 tokens with start/end: 16 positions leave room
TEXT_WIDTH = 64
WEIGHT_NAMES = {
    "unet": "sd_unet",
    "vae": "sd_vae",
    "text_encoder": "sd_text_encoder",
    "lcm_unet": "lcm_unet",
}

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(16, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
    # The training script folds the latents' scale into quant_conv / post_quant_conv, so the
    # encoder's latents already have unit standard deviation.
    scaling_factor=1.0,
)
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 96),
    layers_per_block=1,
    cross_attention_dim=TEXT_WIDTH,
    attention_head_dim=2,  # SD 1.x's config means heads: 2 heads of 16-48 channels
    norm_num_groups=16,
)


def _caption_words() -> list[str]:
    words = {
        word
        for color in COLORS
        for shape in SHAPES
        for position in CAPTION_POSITIONS
        for word in caption_text(color, shape, position).split()
    }
    return sorted(words)


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's byte-pair merging of one word (lowest-ranked pair first)."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        rank, index = min(
            (ranks.get(pair, len(ranks)), i)
            for i, pair in enumerate(zip(parts[:-1], parts[1:], strict=True))
        )
        if rank == len(ranks):
            break
        parts[index : index + 2] = [parts[index] + parts[index + 1]]
    return parts


def caption_tokenizer() -> tf.CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges make every caption word one token; any other
    lowercase ASCII word splits into characters.

    >>> caption_tokenizer().tokenize("a cyan triangle on the left")
    ['a</w>', 'cyan</w>', 'triangle</w>', 'on</w>', 'the</w>', 'left</w>']
    """
    merges: list[tuple[str, str]] = []
    changed = True
    while changed:  # add the merge a word still needs until every word is one token
        changed = False
        for word in _caption_words():
            parts = _bpe(word, {pair: rank for rank, pair in enumerate(merges)})
            if len(parts) > 1:
                merges.append((parts[0], parts[1]))
                changed = True
    chars = list(string.ascii_lowercase + string.digits + ".,!?-'")
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *[c + "</w>" for c in chars]]
    tokens += list(dict.fromkeys(a + b for a, b in merges))
    vocab = {token: index for index, token in enumerate(tokens)}
    return tf.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def make_text_encoder(tokenizer: tf.CLIPTokenizer) -> tf.CLIPTextModel:
    """The 2-layer, 64-wide CLIP text tower (random weights)."""
    config = tf.CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        projection_dim=TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    return tf.CLIPTextModel(config)


def make_vae() -> df.AutoencoderKL:
    """The VAE (random weights): 32 px images to 4x16x16 latents."""
    return df.AutoencoderKL(**VAE_CONFIG)


def make_unet(time_cond_proj_dim: int | None = None) -> df.UNet2DConditionModel:
    """The UNet (random weights); ``time_cond_proj_dim`` adds the LCM guidance embedding."""
    return df.UNet2DConditionModel(**UNET_CONFIG, time_cond_proj_dim=time_cond_proj_dim)


def build_pipeline(
    scheduler: str = "ddim", trained: bool = True, student: bool = False
) -> df.StableDiffusionPipeline:
    """The pipeline in eval mode; ``trained=False`` leaves the random initial weights and
    ``student=True`` puts the LCM student UNet and an ``LCMScheduler`` in it.

    >>> build_pipeline("unipc")
    Traceback (most recent call last):
    ...
    ValueError: scheduler must be one of ['ddim', 'dpm', 'euler', 'heun'], got 'unipc'
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {scheduler!r}")
    tokenizer = caption_tokenizer()
    text_encoder, vae = make_text_encoder(tokenizer), make_vae()
    unet = make_unet(256 if student else None)
    if trained:
        load_weights(text_encoder, WEIGHT_NAMES["text_encoder"])
        load_weights(vae, WEIGHT_NAMES["vae"])
        load_weights(unet, WEIGHT_NAMES["lcm_unet" if student else "unet"])
    if student:
        sampler: Any = df.LCMScheduler.from_config(
            SD_SCHEDULE, original_inference_steps=TEACHER_STEPS, timestep_spacing="trailing"
        )
    else:
        sampler = SCHEDULERS[scheduler].from_config(SD_SCHEDULE)
    pipe = df.StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=sampler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_captions(count: int, split: str = "test", start: int = 0) -> list[Any]:
    """The first ``count`` caption items of ``split`` (images, captions and their parts).

    >>> [item.caption for item in test_captions(2)]
    ['a purple square in the center', 'a purple cross on the bottom']
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return [caption_item(split, start + index) for index in range(count)]


def _check_prompts(prompts: Sequence[str] | None, num_prompts: int) -> list[str]:
    if prompts is None:
        return [item.caption for item in test_captions(num_prompts)]
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    return list(prompts)


def _tiny_model(
    pipe: Any,
    prompts: list[str],
    steps: int,
    guidance_scale: float,
    seed: int,
    output_type: str,
    info: dict[str, Any],
) -> TinyModel:
    check_output_type(output_type)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    def make_inputs() -> dict[str, Any]:
        return dict(
            prompt=list(prompts),
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type=output_type,
            height=32,
            width=32,
        )

    info = {"seed": seed, "make_inputs": make_inputs, "height": 32, "width": 32, **info}
    return TinyModel(model=pipe, inputs=make_inputs(), info=info)


def trained_sd_pipeline(
    scheduler: str = "ddim",
    prompts: Sequence[str] | None = None,
    num_prompts: int = 4,
    steps: int = TEACHER_STEPS,
    guidance_scale: float = GUIDANCE_SCALE,
    seed: int = 0,
    output_type: str = "np",
) -> TinyModel:
    """The trained teacher in a :class:`TinyModel`: ``model(**inputs).images`` draws
    ``prompts`` (default: the first ``num_prompts`` test captions) in ``steps`` steps of
    ``scheduler`` (one of ``"ddim"``, ``"heun"``, ``"dpm"``, ``"euler"``) with classifier-free
    guidance. ``info["make_inputs"]()`` gives fresh inputs (a freshly seeded generator).

    >>> tiny = trained_sd_pipeline(num_prompts=1, steps=5)
    >>> tiny.info["family"], tiny.inputs["num_inference_steps"], tiny.model(**tiny.inputs).images.shape
    ('sd', 5, (1, 32, 32, 3))
    """
    pipe = build_pipeline(scheduler)
    info = {"family": "sd", "denoiser": "unet", "scheduler": scheduler, "student": False}
    return _tiny_model(
        pipe,
        _check_prompts(prompts, num_prompts),
        steps,
        guidance_scale,
        seed,
        output_type,
        info,
    )


def trained_lcm_pipeline(
    prompts: Sequence[str] | None = None,
    num_prompts: int = 4,
    steps: int = LCM_STEPS,
    guidance_scale: float = LCM_GUIDANCE_SCALE,
    seed: int = 0,
    output_type: str = "np",
) -> TinyModel:
    """The LCM student distilled from the teacher (guidance-embedded UNet, ``LCMScheduler``):
    ``steps`` steps (default 4), one UNet call each, guidance ``guidance_scale`` as an input
    of the UNet rather than a second call.

    >>> tiny = trained_lcm_pipeline(num_prompts=1)
    >>> type(tiny.model.scheduler).__name__, tiny.model(**tiny.inputs).images.shape
    ('LCMScheduler', (1, 32, 32, 3))
    """
    pipe = build_pipeline(student=True)
    info = {"family": "sd", "denoiser": "unet", "scheduler": "lcm", "student": True}
    return _tiny_model(
        pipe,
        _check_prompts(prompts, num_prompts),
        steps,
        guidance_scale,
        seed,
        output_type,
        info,
    )
