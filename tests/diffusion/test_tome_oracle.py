"""``tome`` with ``use_rand=False`` against the published ``tomesd`` (``tomesd.apply_patch``).

Same tiny SD pipeline, same starting noise: final latents and every UNet output must agree to
float tolerance. They are not bit-identical (about 1e-6 relative): tomesd replaces the
transformer block's forward with its own copy, and its unstable ``argsort`` may order the
merged tokens differently, which changes the order of sums inside attention, not the result.

Deliberate, documented differences not compared here: with ``use_rand=True`` leanvision
picks destinations by a hash of ``seed``, the timestep and the block (repeatable,
device-independent), where tomesd draws them from a torch generator forked from the global
RNG; tomesd also switches randomness off by itself for odd batch sizes.
"""

from __future__ import annotations

import pytest
import torch
from cache_helpers import pipeline_run

import leanvision as lv
from leanvision.testing.tiny_diffusion import tiny_sd_pipeline

tomesd = pytest.importorskip("tomesd")

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-5  # relative L2; merging itself moves the output by 1e-2 here


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.fixture(scope="module")
def sd():
    return tiny_sd_pipeline(seed=0, size=16)


# (tome options, pipeline overrides). At 16x16 pixels the latent is 8x8: 64 tokens at full
# resolution, 16 in the mid block (downsample 2); 24x16 pixels give a 12x8 latent.
CASES = [
    ({"ratio": 0.5}, {}),
    ({"ratio": 0.7, "max_downsample": 2, "merge_crossattn": True, "merge_mlp": True}, {}),
    ({"ratio": 0.3, "sx": 1, "sy": 3, "max_downsample": 4}, {}),  # 3 does not divide 8
    (
        {"ratio": 0.6, "sx": 3, "sy": 2, "max_downsample": 2},
        {"height": 24, "width": 16, "num_images_per_prompt": 2},
    ),
]


@pytest.mark.parametrize(
    "options, shape",
    CASES,
    ids=["-".join(f"{k}={v}" for k, v in (o | s).items()) for o, s in CASES],
)
def test_tome_equals_tomesd(sd, options, shape):
    height, width = shape.get("height", 16), shape.get("width", 16)
    batch = shape.get("num_images_per_prompt", 1)
    latents = torch.randn(
        batch, 4, height // 2, width // 2, generator=torch.Generator().manual_seed(0)
    )
    base = pipeline_run(sd, latents, **shape)
    tomesd.apply_patch(sd.model, use_rand=False, **options)
    try:
        want = pipeline_run(sd, latents, **shape)
    finally:
        tomesd.remove_patch(sd.model)
    with lv.diffusion.accelerate(sd.model, "tome", use_rand=False, **options) as handle:
        got = pipeline_run(sd, latents, **shape)
    assert handle.stats["tome_merged_blocks"] > 0
    errors = [relative_error(a, b) for a, b in zip(got[1], want[1], strict=True)]
    assert len(errors) == 6 and max(errors) <= TOLERANCE, errors  # NaN fails too
    assert relative_error(got[0], want[0]) <= TOLERANCE
    assert relative_error(got[0], base[0]) > 1e-3  # merging changed the output
    assert torch.equal(pipeline_run(sd, latents, **shape)[0], base[0])  # both patches undone


@pytest.mark.parametrize(
    "height, width, sx, sy, ratio",
    [
        (16, 12, 2, 2, 0.5),
        (8, 8, 2, 2, 0.75),
        (5, 7, 2, 2, 0.4),
        (9, 6, 3, 2, 0.6),
        (6, 9, 1, 3, 0.3),
    ],
)
def test_matching_equals_tomesd_on_the_same_tokens(height, width, sx, sy, ratio):
    """On identical tokens the plans agree exactly (float64 tokens, so no near ties): merge
    then unmerge, compared position by position (the merged layouts may list tokens in a
    different order). End to end, float32 rounding may decide a near tie differently."""
    from tomesd.merge import bipartite_soft_matching_random2d

    from leanvision.diffusion.tome import bipartite_soft_matching_2d

    tokens = torch.randn(3, height * width, 16, dtype=torch.float64)
    merge_count = int(height * width * ratio)
    merge, unmerge = bipartite_soft_matching_random2d(
        tokens, width, height, sx, sy, merge_count, no_rand=True
    )
    plan = bipartite_soft_matching_2d(tokens, height, width, sx, sy, merge_count)
    values = torch.randn_like(tokens)
    assert plan.merge(values).shape == merge(values).shape
    assert torch.allclose(plan.unmerge(plan.merge(values)), unmerge(merge(values)), atol=1e-12)
    # Applying a token-wise function between merge and unmerge: the same tokens meet.
    assert torch.allclose(
        plan.unmerge(plan.merge(values).sin()), unmerge(merge(values).sin()), atol=1e-12
    )
