"""Benchmark ``diffusion``: step caching, token merging and few-step sampling on diffusers
pipelines, each against the same-seed baseline of its group.

Groups (one per model shape): an SD 1.5-shaped UNet (the real SD 1.5 UNet config, random
weights) and a DiT-XL/2-shaped transformer, both with DDIM and classifier-free guidance.
On a GPU: 512x512 images, 50 steps, the full-size models. On a CPU: the same layouts at
reduced width, 256x256 and fewer steps (``quick``: smaller still), or with ``full`` the
full-size models and 50 steps at 256x256. ``quick`` also keeps only the issue's target
settings. Every row reports:

* ``vs baseline``: the runner's latency ratio (the speedup), the median of per-pair ratios of
  whole pipeline calls timed in turn with the baseline's, and ``ratio IQR`` its quartiles;
* ``macs_ratio`` / ``GMACs/img``: MACs of the denoising loop (``torch.utils.flop_counter``;
  on the CPU attention runs through the math SDPA backend while counting, so it is seen);
  ``macs_ratio`` is the case's ``compute_ratio``: a speedup above ``1 / macs_ratio`` (the
  ``bound`` column) is flagged as noise;
* ``psnr`` / ``ssim``: fidelity of the decoded images to the baseline's, same noise;
* ``latent_err``: relative L2 distance of the final latents to the baseline's;
* ``peak_GB``: peak CUDA memory of one call (GPU only).

Prompts are random text embeddings of CLIP's shape (no text encoder is built) and the VAE
has SD's 8x layout at reduced width, so the timing is the denoising loop plus a small
decode. ``options.model`` may name a local SD 1.x pipeline folder to use real weights.
Methods that are not registered (or not importable) are left out of the table.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import diffusers as df  # an ImportError here lists the suite as unavailable
import torch

from leanvision.bench.registry import BenchOptions, Case, register_benchmark
from leanvision.diffusion.consistency import few_step
from leanvision.diffusion.macs import denoising_macs
from leanvision.testing.diffusion_parts import SD_SCHEDULE

Setting = tuple[str, list[tuple[str, dict[str, Any]]]]  # label, [(method, options), ...]
QUICK_SETTINGS = (
    "tome r=0.5",
    "deepcache interval=3",
    "deepcache interval=5",
    "deepcache interval=3 + tome r=0.5",
    "deepcache interval=5 + tome r=0.5",
    "residual (default)",
)

LCM_CASE = "lcm 4 steps (few_step)"
_TOME = ("tome", {"ratio": 0.5})
SD_SETTINGS: tuple[Setting, ...] = (  # the SD 1.5 group's rows, after its baseline
    ("tome r=0.3", [("tome", {"ratio": 0.3})]),
    ("tome r=0.5", [_TOME]),
    ("tome r=0.5 max_downsample=2", [("tome", {"ratio": 0.5, "max_downsample": 2})]),
    ("deepcache interval=3", [("deepcache", {"interval": 3})]),
    ("deepcache interval=5", [("deepcache", {"interval": 5})]),
    ("deepcache interval=3 + tome r=0.5", [("deepcache", {"interval": 3}), _TOME]),
    ("deepcache interval=5 + tome r=0.5", [("deepcache", {"interval": 5}), _TOME]),
    ("residual (default)", [("residual", {})]),
    ("residual + tome r=0.5", [("residual", {}), _TOME]),
)
DIT_SETTINGS: tuple[Setting, ...] = (  # the DiT group's rows, after its baseline
    ("tome r=0.5", [_TOME]),
    ("residual (default)", [("residual", {})]),
    ("residual + tome r=0.5", [("residual", {}), _TOME]),
)
CASE_NAMES = tuple(dict.fromkeys([label for label, _ in SD_SETTINGS + DIT_SETTINGS] + [LCM_CASE]))


@dataclasses.dataclass
class Scenario:
    """One model shape: how to build its pipeline and its inputs, and what to compare."""

    group: str
    pipe: Any
    make_inputs: Callable[[], dict[str, Any]]
    settings: list[Setting]
    few_step: bool = False  # also compare LCM at 4 steps with the baseline


# ---------------------------------------------------------------- models


SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    flip_sin_to_cos=True,
    freq_shift=0,
)
DIT_XL_2 = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    num_layers=28,
    patch_size=2,
    norm_type="ada_norm_zero",
    num_embeds_ada_norm=1000,
    activation_fn="gelu-approximate",
    attention_bias=True,
    norm_elementwise_affine=False,
)


def sd15_unet_config(width: float = 1.0) -> dict[str, Any]:
    """SD 1.5's UNet config with its channels (and text width) scaled by ``width``.

    >>> sd15_unet_config(0.1)["block_out_channels"], sd15_unet_config(0.1)["cross_attention_dim"]
    ((32, 64, 128, 128), 64)
    """
    channels = tuple(int(c * width) for c in SD15_UNET["block_out_channels"])
    text = 768 if width == 1 else max(32, round(768 * width / 32) * 32)
    return dict(SD15_UNET, block_out_channels=channels, cross_attention_dim=text)


def _small_vae() -> df.AutoencoderKL:
    # SD's 4-level (8x) layout at 1/8 width: decoding costs well under 1% of the loop.
    return df.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
    )


def _sd_sizes(options: BenchOptions) -> dict[str, Any]:
    if options.device.startswith("cuda"):
        return dict(width=1.0, image=512, steps=50)
    if options.full:  # the GPU's model and schedule at a quarter of the pixels
        return dict(width=1.0, image=256, steps=50)
    if options.quick:
        return dict(width=0.1, image=256, steps=10)
    return dict(width=0.2, image=256, steps=25)


def build_seeded(device: str, dtype: torch.dtype, make: Callable[[], Any]) -> Any:
    """``make()`` with seed 0 (the global RNG untouched) on ``device``, in eval mode, cast to
    ``dtype``: the same random weights in every run."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = make().eval()  # train mode would drop DiT's class labels at random
    # Casting only when needed keeps diffusers' "modules kept in float32" notice out of CPU runs.
    return model if dtype == torch.float32 else model.to(dtype=dtype)


def sd15_scenario(options: BenchOptions) -> Scenario:
    """The SD 1.5 UNet (scaled in width on a CPU) in a ``StableDiffusionPipeline``."""
    sizes = _sd_sizes(options)
    device, dtype = options.device, options.dtype
    if options.model:  # a local SD 1.x pipeline with real weights
        pipe = df.StableDiffusionPipeline.from_pretrained(
            options.model, torch_dtype=dtype, local_files_only=True, safety_checker=None
        ).to(device)
        prompt: dict[str, Any] = {"prompt": "a red fox in snow, photograph"}
    else:
        config = sd15_unet_config(sizes["width"])
        unet = build_seeded(device, dtype, lambda: df.UNet2DConditionModel(**config))
        pipe = df.StableDiffusionPipeline(
            vae=build_seeded(device, dtype, _small_vae),
            text_encoder=None,
            tokenizer=None,
            unet=unet,
            scheduler=df.DDIMScheduler(**SD_SCHEDULE),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        embeds = torch.randn(2, 77, config["cross_attention_dim"], generator=_generator(1))
        prompt = dict(
            prompt_embeds=embeds[:1].to(device, dtype),
            negative_prompt_embeds=embeds[1:].to(device, dtype),
        )
    pipe.set_progress_bar_config(disable=True)

    def make_inputs() -> dict[str, Any]:
        return dict(
            prompt,
            height=sizes["image"],
            width=sizes["image"],
            num_inference_steps=sizes["steps"],
            guidance_scale=7.5,
            generator=_generator(0),
            output_type="pt",
        )

    # with quick: the target settings only
    settings = [s for s in SD_SETTINGS if not options.quick or s[0] in QUICK_SETTINGS]
    label = "real weights" if options.model else f"{sizes['width']:g}x width"
    group = f"SD1.5 UNet {label} {sizes['image']}px {sizes['steps']} DDIM steps"
    return Scenario(group, pipe, make_inputs, settings, few_step=True)


def dit_scenario(options: BenchOptions) -> Scenario:
    """A DiT-XL/2-shaped class-conditional transformer (smaller on a CPU) in a ``DiTPipeline``."""
    device, dtype = options.device, options.dtype
    if device.startswith("cuda") or options.full:
        latent = 64 if device.startswith("cuda") else 32
        config, image, steps, label = dict(DIT_XL_2, sample_size=latent), 8 * latent, 50, "XL/2"
    else:
        heads, layers = (4, 4) if options.quick else (8, 8)
        config = dict(DIT_XL_2, num_attention_heads=heads, attention_head_dim=32, num_layers=layers)
        config["sample_size"] = 32
        image, steps, label = 256, 10 if options.quick else 25, f"{layers}x{heads * 32}"
    transformer = build_seeded(device, dtype, lambda: df.DiTTransformer2DModel(**config))
    pipe = df.DiTPipeline(
        transformer=transformer,
        vae=build_seeded(device, dtype, _small_vae),
        scheduler=df.DDIMScheduler(**SD_SCHEDULE),
    )
    pipe.set_progress_bar_config(disable=True)

    def make_inputs() -> dict[str, Any]:
        return dict(
            class_labels=[207],
            num_inference_steps=steps,
            guidance_scale=4.0,
            generator=_generator(0),
            output_type="pt",
        )

    settings = [s for s in DIT_SETTINGS if not options.quick or s[0] in QUICK_SETTINGS]
    return Scenario(f"DiT {label} {image}px {steps} DDIM steps", pipe, make_inputs, settings)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


# ---------------------------------------------------------------- measuring


@dataclasses.dataclass
class Variant:
    """One row: a context that applies a setting to the pipeline, and the call inputs it
    needs (few-step sampling fills in its own steps and guidance)."""

    name: str
    applied: Callable[[], contextlib.AbstractContextManager]
    own_schedule: bool = False

    def inputs(self, scenario: Scenario) -> dict[str, Any]:
        inputs = scenario.make_inputs()
        if self.own_schedule:
            inputs = {
                k: v
                for k, v in inputs.items()
                if k not in ("num_inference_steps", "guidance_scale")
            }
        return inputs


def _accelerated(pipe: Any, methods: list[tuple[str, dict[str, Any]]]) -> Variant:
    def applied() -> contextlib.AbstractContextManager:
        from leanvision.diffusion.api import accelerate
        from leanvision.diffusion.registry import load_methods

        registry = load_methods()
        return accelerate(pipe, [registry.resolve(name, **opts)[0] for name, opts in methods])

    return Variant("", applied)


def _measure(scenario: Scenario, variant: Variant, device: str) -> dict[str, Any]:
    """Images, final latents, MACs per image and peak memory of one call of ``variant``."""
    cuda = device.startswith("cuda")
    # The VAE's first layer sees the final latents: capture them to compare in latent space
    # too (the images pass through a random-weight decoder unless options.model is given).
    vae = scenario.pipe.vae
    first = getattr(vae, "post_quant_conv", None) or vae.decoder
    latents: list[torch.Tensor] = []
    # One call gives the MACs, the images, the final latents and the peak memory.
    with variant.applied():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        hook = first.register_forward_pre_hook(
            lambda _m, args: latents.append(args[0].float().cpu())
        )
        try:
            report = denoising_macs(scenario.pipe, variant.inputs(scenario))
        finally:
            hook.remove()
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    images, macs = report.output.images, report.per_image
    return {"images": images.float().cpu(), "latents": latents[-1], "macs": macs, "peak_GB": peak}


def _case(
    scenario: Scenario, variant: Variant, base: dict[str, Any] | None, device: str
) -> tuple[Case, dict[str, Any]]:
    from leanvision.diffusion.metrics import fidelity

    result = _measure(scenario, variant, device)
    reference = base or result
    metrics: dict[str, Any] = {
        "GMACs/img": result["macs"] / 1e9,
        "macs_ratio": result["macs"] / reference["macs"],
        **fidelity(reference["images"], result["images"]),
        "latent_err": float(
            (result["latents"] - reference["latents"]).norm() / reference["latents"].norm()
        ),
    }
    if result["peak_GB"] is not None:
        metrics["peak_GB"] = result["peak_GB"]

    def call() -> Any:
        with variant.applied(), torch.no_grad():
            return scenario.pipe(**variant.inputs(scenario))

    case = Case(
        name=variant.name,
        fn=call,
        items=1,
        unit="images",
        group=scenario.group,
        baseline=base is None,
        metrics=metrics,
        compute_ratio=None if base is None else metrics["macs_ratio"],
    )
    return case, result


def scenario_cases(scenario: Scenario, device: str) -> Iterator[Case]:
    """The baseline case, then one case per available setting (and LCM), of ``scenario``."""
    case, base = _case(scenario, Variant("baseline", contextlib.nullcontext), None, device)
    yield case
    for label, methods in scenario.settings:
        variant = dataclasses.replace(_accelerated(scenario.pipe, methods), name=label)
        yield _case(scenario, variant, base, device)[0]
    if scenario.few_step:
        variant = Variant(
            LCM_CASE,
            lambda: few_step(scenario.pipe, "lcm", steps=4),
            own_schedule=True,
        )
        yield _case(scenario, variant, base, device)[0]


@register_benchmark(
    "diffusion", "diffusion acceleration (tome, deepcache, residual, lcm): speed, MACs, PSNR/SSIM"
)
def diffusion_suite(options: BenchOptions) -> Iterable[Case]:
    """Cases of the ``diffusion`` benchmark; fidelity and MACs are measured as they are built.
    With ``options.only``, just those cases and their baselines (a group with none of them is
    not built)."""
    for build in (sd15_scenario, dit_scenario):
        scenario = build(options)
        if options.only is not None:
            scenario = select(scenario, options.only)
            if not scenario.settings and not scenario.few_step:
                continue
        yield from scenario_cases(scenario, options.device)


def select(scenario: Scenario, names: Iterable[str]) -> Scenario:
    """``scenario`` with only the settings (and LCM row) named in ``names``."""
    names = set(names)
    settings = [setting for setting in scenario.settings if setting[0] in names]
    few_step = scenario.few_step and LCM_CASE in names
    return dataclasses.replace(scenario, settings=settings, few_step=few_step)
