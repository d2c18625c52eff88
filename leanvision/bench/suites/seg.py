"""Benchmark ``seg``: EfficientViT-B segmentation images/s, our LiteMLA vs timm's modules.

For each variant and resolution, timm's ``efficientvit_b*`` (random weights) is the
baseline: its stem and stages run as timm ships them, then the EfficientViT segmentation head.
Rows of each group:

* ``timm``: the baseline;
* ``leanvision LiteMLA``: :func:`efficientvit_seg` with the same backbone weights
  (:func:`load_timm_backbone`) and the very same head module, so the only difference is the
  attention (``kernels.linear_attention`` instead of timm's LiteMLA);
* ``timm channels_last``: timm's modules with channels-last weights and inputs;
* ``leanvision optimized``: ours after :func:`optimize_for_inference` (BatchNorm folded into
  the convs, channels-last).

Every output is computed once before timing and compared with timm's: the "max rel err"
column is ``max_i ||ours_i - timm_i|| / ||timm_i||`` over the images of the batch.

CPU: fp32 (or ``--dtype``); ``--quick`` runs B0/B1 at 512x512, the full run B0-B3 at 512x512
and 1024x2048. CUDA: fp16 and bf16 (or ``--dtype`` when it is not fp32); ``--quick`` runs
B0/B1 at 512x512 and B1 at 1024x2048 (the issue's target).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Iterator

import torch

from leanvision.bench.registry import BenchOptions, Case, register_benchmark

RESOLUTIONS = ((512, 512), (1024, 2048))
VARIANT_NAMES = ("b0", "b1", "b2", "b3")
NUM_CLASSES = 19
BATCH = 1
_SHORT_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def plan(options: BenchOptions) -> list[tuple[str, tuple[int, int]]]:
    """(variant, (height, width)) pairs to run, per device and ``quick``."""
    if not options.quick:
        return [(v, r) for r in RESOLUTIONS for v in VARIANT_NAMES]
    pairs = [("b0", RESOLUTIONS[0]), ("b1", RESOLUTIONS[0])]
    if options.device.startswith("cuda"):
        pairs.append(("b1", RESOLUTIONS[1]))
    return pairs


def dtypes(options: BenchOptions) -> tuple[torch.dtype, ...]:
    if options.device.startswith("cuda") and options.dtype == torch.float32:
        return (torch.float16, torch.bfloat16)
    return (options.dtype,)


def max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest per-image relative error ``||out - ref|| / ||ref||`` (fp64); inf if non-finite."""
    out, ref = out.double().flatten(1), ref.double().flatten(1)
    if not (torch.isfinite(out).all() and torch.isfinite(ref).all()):
        return float("inf")
    return ((out - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-30)).max().item()


def model_pair(
    variant: str, device: str, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(timm backbone, our segmentation model) with the same weights, eval, on device/dtype."""
    import timm

    from leanvision.vision import efficientvit_seg, load_timm_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        theirs = timm.create_model(f"efficientvit_{variant}", pretrained=False)
        ours = efficientvit_seg(variant, num_classes=NUM_CLASSES)
    load_timm_backbone(ours, theirs)
    theirs.head = torch.nn.Identity()  # the classifier is never run; free its weights
    return theirs.to(device, dtype).eval(), ours.to(device, dtype).eval()


def _timm_forward(
    theirs: torch.nn.Module, head: torch.nn.Module, memory_format: torch.memory_format
):
    @torch.inference_mode()
    def run(images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous(memory_format=memory_format)
        features = theirs.forward_intermediates(images, indices=(1, 2, 3), intermediates_only=True)
        return head(features)

    return run


def _cases(variant: str, size: tuple[int, int], device: str, dtype: torch.dtype) -> Iterator[Case]:
    from leanvision.vision import optimize_for_inference

    theirs, ours = model_pair(variant, device, dtype)
    channels_last = torch.channels_last
    # timm's modules in channels-last too, so the optimised row is not credited with a
    # memory-format flag that timm users can set themselves.
    theirs_cl = copy.deepcopy(theirs).to(memory_format=channels_last)
    head_cl = copy.deepcopy(ours.head).to(memory_format=channels_last)
    optimized = optimize_for_inference(copy.deepcopy(ours))
    images = torch.randn(BATCH, 3, *size, device=device, dtype=dtype)
    runs = {
        "timm": _timm_forward(theirs, ours.head, torch.contiguous_format),
        "leanvision LiteMLA": torch.inference_mode()(ours),
        "timm channels_last": _timm_forward(theirs_cl, head_cl, channels_last),
        "leanvision optimized": torch.inference_mode()(optimized),
    }
    reference = runs["timm"](images)
    group = f"{variant.upper()} {size[0]}x{size[1]} {_SHORT_DTYPE.get(dtype, str(dtype))}"
    for name, run in runs.items():
        error = 0.0 if name == "timm" else max_rel_err(run(images), reference)
        yield Case(
            name=name,
            fn=functools.partial(run, images),
            items=BATCH,
            unit="images",
            group=group,
            baseline=name == "timm",
            metrics={"max rel err": error},
        )


@register_benchmark("seg", "EfficientViT-B0..B3 segmentation images/s: our LiteMLA vs timm's")
def seg_suite(options: BenchOptions) -> Iterable[Case]:
    for dtype in dtypes(options):
        for variant, size in plan(options):
            yield from _cases(variant, size, options.device, dtype)
