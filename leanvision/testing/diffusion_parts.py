"""Shared pieces of the tiny diffusers pipelines: in-memory tokenizers, tiny text encoders,
VAE and schedulers, and the seeded build that every factory in
:mod:`leanvision.testing.tiny_diffusion` goes through.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

import diffusers as df
import torch
import transformers as tf

from leanvision.testing.common import TinyModel

PROMPT = "a red fox in snow"
# Denoising steps of the default inputs: enough for every step cache to reuse (they need at
# least ``leanvision.diffusion.runtime.MIN_CACHE_STEPS``), still well under a second.
DEFAULT_STEPS = 10
# Name -> diffusers scheduler class. "heun" is second order (two UNet calls per step) and
# "dpm" is a multistep solver: caching methods must cope with both.
SCHEDULERS: dict[str, type] = {
    "ddim": df.DDIMScheduler,
    "heun": df.HeunDiscreteScheduler,
    "dpm": df.DPMSolverMultistepScheduler,
    "euler": df.EulerDiscreteScheduler,
}
# The SD 1.x noise schedule, so the tiny pipelines step through realistic timesteps.
SD_SCHEDULE = dict(
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


def clip_tokenizer() -> tf.CLIPTokenizer:
    """A CLIP BPE tokenizer with no merges: every word splits into characters, so any
    lowercase ASCII prompt tokenizes without unknown tokens."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = list(string.ascii_lowercase + string.digits + ".,!?-'")
    tokens = specials + chars + [c + "</w>" for c in chars]
    vocab = {token: index for index, token in enumerate(tokens)}
    return tf.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=_CLIP_MAX_LENGTH)


def clip_text_encoder(
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


def t5_tokenizer() -> tf.T5Tokenizer:
    """A unigram T5 tokenizer over single characters plus a few whole words."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + word, -1.0) for word in PROMPT.split()]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits + ".,!?-'"]
    return tf.T5Tokenizer(vocab=pieces, extra_ids=0)


def t5_encoder(tokenizer: tf.T5Tokenizer, d_model: int = 32) -> tf.T5EncoderModel:
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


def make_vae(latent_channels: int = 4, flow: bool = False) -> df.AutoencoderKL:
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


def sd_scheduler(name: str) -> Any:
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {name!r}")
    # from_config drops keys a class does not know (e.g. DDIM's clip_sample for Heun).
    return SCHEDULERS[name].from_config(SD_SCHEDULE)


def check_output_type(output_type: str) -> None:
    if output_type not in ("np", "pt"):
        raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")


def build(
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


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def conditioning_image(seed: int, size: int) -> torch.Tensor:
    """A deterministic RGB image in [0, 1], shape (1, 3, size, size), for img2img/control."""
    generator = seeded_generator(seed + 1)
    return torch.rand(1, 3, size, size, generator=generator)


def flow_scheduler() -> df.FlowMatchEulerDiscreteScheduler:
    # Resolution-dependent shift, as in the released Flux / SD3.5 scheduler configs.
    return df.FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256
    )


def call_inputs(
    seed: int, output_type: str, guidance_scale: float, **extra: Any
) -> Callable[[], dict[str, Any]]:
    """``make_inputs`` for a :data:`DEFAULT_STEPS`-step call with a freshly seeded generator
    on every call."""

    def make_inputs() -> dict[str, Any]:
        return dict(
            num_inference_steps=DEFAULT_STEPS,
            guidance_scale=guidance_scale,
            generator=seeded_generator(seed),
            output_type=output_type,
            **extra,
        )

    return make_inputs
