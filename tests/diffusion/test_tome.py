"""ToMe for SD: the matching against an independent reference, and the contract on tiny
pipelines (remove restores, ratio 0 is a no-op, fewer attention MACs, CFG batch 2,
determinism, PixArt/DiT, refusals)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from leanvision.core.errors import AlreadyPatchedError, UnsupportedModelError
from leanvision.core.handle import Handle
from leanvision.diffusion.registry import METHODS
from leanvision.diffusion.tome import (
    ToMe,
    apply_tome,
    bipartite_soft_matching_2d,
    destination_choices,
)
from leanvision.testing.tiny_diffusion import (
    tiny_dit,
    tiny_pixart,
    tiny_sd3,
    tiny_sd_pipeline,
    tiny_sdxl_pipeline,
)

# ---------------------------------------------------------------- the algorithm


def reference_merge(x, metric, height, width, sx, sy, choices, merge_count):
    """The paper's definition, one image at a time, with plain Python loops (float64).

    Returns (merged tokens, unmerge function) for ``x`` (N, C)."""
    rows, cols = height // sy, width // sx
    dst = sorted(
        (i * sy + int(choices[i, j]) // sx) * width + j * sx + int(choices[i, j]) % sx
        for i in range(rows)
        for j in range(cols)
    )
    src = [p for p in range(height * width) if p not in set(dst)]
    unit = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
    best = {s: max(dst, key=lambda d, s=s: unit[s] @ unit[d]) for s in src}
    score = {s: unit[s] @ unit[best[s]] for s in src}
    ranked = sorted(src, key=lambda s: -score[s])
    moved, kept = ranked[:merge_count], ranked[merge_count:]
    merged_dst = []
    for d in dst:
        group = [d] + [s for s in moved if best[s] == d]
        merged_dst.append(x[group].mean(axis=0))
    merged = np.concatenate([x[kept], np.stack(merged_dst)], axis=0)

    def unmerge(y):
        out = np.full((height * width, y.shape[1]), np.nan)
        row_of = {p: r for r, p in enumerate(kept)}
        row_of.update({d: len(kept) + k for k, d in enumerate(dst)})
        for p in range(height * width):
            out[p] = y[row_of[best[p]]] if p in moved else y[row_of[p]]
        return out

    return merged, unmerge


@pytest.mark.parametrize(
    ("height", "width", "sx", "sy", "ratio"),
    [(8, 6, 2, 2, 0.5), (7, 5, 2, 2, 0.3), (6, 9, 3, 2, 0.6), (4, 4, 2, 2, 0.75)],
    ids=lambda v: str(v),
)
def test_merge_and_unmerge_match_the_paper(height, width, sx, sy, ratio):
    batch, channels = 2, 12
    tokens = torch.randn(batch, height * width, channels, dtype=torch.float64)
    metric = torch.randn(batch, height * width, channels, dtype=torch.float64)
    choices = destination_choices(height // sy, width // sx, sx * sy, key=11, device="cpu")
    merge_count = int(height * width * ratio)
    plan = bipartite_soft_matching_2d(metric, height, width, sx, sy, merge_count, choices)
    merged = plan.merge(tokens)
    assert merged.shape == (batch, height * width - plan.merged_count, channels)
    # Stand-in for attention output on the merged tokens.
    processed = torch.randn_like(merged)
    unmerged = plan.unmerge(processed)
    for b in range(batch):
        want, unmerge = reference_merge(
            tokens[b].numpy(), metric[b].numpy(), height, width, sx, sy, choices, merge_count
        )
        np.testing.assert_allclose(merged[b].numpy(), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(unmerged[b].numpy(), unmerge(processed[b].numpy()), atol=0)


def test_merge_count_is_capped_and_zero_is_nothing():
    metric = torch.randn(1, 16, 4)
    assert bipartite_soft_matching_2d(metric, 4, 4, 2, 2, 0) is None
    plan = bipartite_soft_matching_2d(metric, 4, 4, 2, 2, merge_count=100)
    assert plan.merged_count == 12  # only the 12 sources can merge into the 4 destinations
    with pytest.raises(ValueError, match="grid is 3x4"):
        bipartite_soft_matching_2d(metric, 3, 4, 2, 2, 4)


def test_destination_choices_are_deterministic_and_spread():
    a = destination_choices(32, 32, 4, key=5, device="cpu")
    assert torch.equal(a, destination_choices(32, 32, 4, key=torch.tensor([5]), device="cpu"))
    assert not torch.equal(a, destination_choices(32, 32, 4, key=6, device="cpu"))
    counts = torch.bincount(a.reshape(-1), minlength=4).float() / a.numel()
    assert counts.min() > 0.2 and counts.max() < 0.3  # about uniform over the 4 cells


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"ratio": 0.8}, ValueError, r"ratio=0.8 .*\[0, 0.75\]"),
        ({"ratio": -0.1}, ValueError, "ratio"),
        ({"max_downsample": 3}, ValueError, r"max_downsample=3 .*\[1, 2, 4, 8\]"),
        ({"sx": 1, "sy": 1}, ValueError, "sx\\*sy"),
        ({"sx": 2.0}, TypeError, "sx must be an int"),
        ({"use_rand": 1}, TypeError, "use_rand must be a bool"),
        ({"merge_attn": False}, ValueError, "at least one of merge_attn"),
    ],
)
def test_config_errors_name_the_field(options, error, match):
    with pytest.raises(error, match=match):
        ToMe(**options)


def test_registered_under_tome():
    config, apply = METHODS.resolve("tome", ratio=0.3)
    assert isinstance(config, ToMe) and config.ratio == 0.3 and apply is apply_tome


# ---------------------------------------------------------------- pipelines


def patch(denoiser, config):
    with Handle.build(denoiser, "diffusion", "tome", config) as handle:
        apply_tome(denoiser, config, handle)
    return handle


def run(tiny, **overrides):
    # 2 steps: token merging needs no step history, and the MAC counts below are per 2 steps.
    inputs = {**tiny.info["make_inputs"](), "num_inference_steps": 2, **overrides}
    return tiny.model(**inputs).images


def attention_macs(tiny):
    """MACs of every attention (softmax(QK^T)V) in one pipeline call: the math SDPA backend
    decomposes into bmm, which the flop counter sees on every device."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        run(tiny)
    return counter.get_flop_counts()["Global"].get(torch.ops.aten.bmm, 0) // 2


@pytest.fixture(scope="module")
def sd():
    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="module")
def sd_baseline(sd):
    return run(sd)


def test_remove_restores_exact_output(sd, sd_baseline):
    handle = patch(sd.model.unet, ToMe(ratio=0.5))
    merged = run(sd)
    handle.remove()
    assert not np.array_equal(merged, sd_baseline)
    np.testing.assert_array_equal(run(sd), sd_baseline)
    assert Handle.active(sd.model.unet) == {}


def test_ratio_zero_reproduces_the_baseline(sd, sd_baseline):
    with patch(sd.model.unet, ToMe(ratio=0.0)):
        np.testing.assert_array_equal(run(sd), sd_baseline)


def test_merging_cuts_attention_macs_as_predicted(sd):
    base = attention_macs(sd)
    with patch(sd.model.unet, ToMe(ratio=0.5)) as handle:
        merged = attention_macs(sd)
        # The tiny UNet: 5 blocks at the 16x16 latent grid, 1 at 8x8 (not merged).
        assert handle.stats["tome_merged_blocks"] == 5
    # Self-attention at 256 tokens costs 256^2 per head-dim; merged, 128^2: a quarter.
    # Per step: 5 blocks x CFG batch 2 x (QK and AV) x 256^2 x 32 channels, of which 3/4 go;
    # matching adds a 192 sources x 64 destinations x 32 channels similarity per image.
    saved = 5 * 2 * 2 * 256**2 * 32 * 0.75
    matching = 5 * 2 * 192 * 64 * 32
    assert base - merged == 2 * (saved - matching)  # 2 steps


def test_cross_attention_and_mlp_merging_cut_more(sd):
    with patch(sd.model.unet, ToMe(ratio=0.5)):
        self_only = attention_macs(sd)
    config = ToMe(ratio=0.5, merge_crossattn=True, merge_mlp=True)
    with patch(sd.model.unet, config):
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            out = run(sd)
        every = counter.get_flop_counts()["Global"][torch.ops.aten.bmm] // 2
    assert every < self_only and np.isfinite(out).all()


def test_repeated_calls_are_identical_and_cfg_batch_two_works(sd):
    with patch(sd.model.unet, ToMe(ratio=0.5)) as handle:
        first, second = run(sd), run(sd)
        np.testing.assert_array_equal(first, second)
        pair = run(sd, num_images_per_prompt=2)
        assert pair.shape == (2, 32, 32, 3) and np.isfinite(pair).all()
        # CFG doubles the UNet batch: 4 images' worth of tokens merged per block.
        assert handle.stats["tome_merged_tokens"] == 5 * 4 * 128


def test_use_rand_changes_destinations_but_stays_deterministic(sd):
    with patch(sd.model.unet, ToMe(ratio=0.5, use_rand=False)):
        corner = run(sd)
    with patch(sd.model.unet, ToMe(ratio=0.5, seed=1)):
        seeded = run(sd)
    with patch(sd.model.unet, ToMe(ratio=0.5, seed=1)):
        np.testing.assert_array_equal(run(sd), seeded)
    assert not np.array_equal(corner, seeded)


def test_applying_twice_raises(sd):
    with patch(sd.model.unet, ToMe()), pytest.raises(AlreadyPatchedError):
        patch(sd.model.unet, ToMe())


def test_self_attention_mask_is_refused(sd):
    unet = sd.model.unet
    block = next(m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock")
    tokens, mask = torch.randn(1, 256, 32), torch.zeros(1, 256, 256)
    with patch(unet, ToMe(ratio=0.5)) as handle:
        unet(torch.randn(1, 4, 16, 16), 10, encoder_hidden_states=torch.randn(1, 77, 32))
        assert handle.stats["tome_blocks"] == 6
        with pytest.raises(ValueError, match="attention_mask"):
            block(tokens, attention_mask=mask)


def test_sdxl_merges_from_its_first_attention_level():
    tiny = tiny_sdxl_pipeline(seed=0)
    base = run(tiny)
    with (
        patch(tiny.model.unet, ToMe(ratio=0.5)),
        pytest.warns(UserWarning, match="max_downsample") as caught,
    ):
        np.testing.assert_array_equal(run(tiny), base)  # no attention at full resolution
    assert {w.filename for w in caught} == {__file__}  # the user's pipe(...) line, in run()
    with patch(tiny.model.unet, ToMe(ratio=0.5, max_downsample=2)) as handle:
        merged = run(tiny)
        assert handle.stats["tome_merged_blocks"] > 0
    assert not np.array_equal(merged, base)
    np.testing.assert_array_equal(run(tiny), base)


@pytest.mark.parametrize("factory", [tiny_pixart, tiny_dit], ids=["pixart", "dit"])
def test_transformer_denoisers(factory):
    tiny = factory(seed=0)
    base = run(tiny)
    with patch(tiny.model.transformer, ToMe(ratio=0.5)) as handle:
        merged, again = run(tiny), run(tiny)
        # 16x16 latent, patch 2: an 8x8 token grid, half of it merged, CFG batch 2.
        assert handle.stats["tome_merged_tokens"] == 2 * 2 * 32
    assert not np.array_equal(merged, base)
    np.testing.assert_array_equal(merged, again)
    np.testing.assert_array_equal(run(tiny), base)


def test_unsupported_denoiser_raises_before_patching():
    transformer = tiny_sd3(seed=0).model.transformer
    hooks_before = sum(len(m._forward_pre_hooks) for m in transformer.modules())
    with pytest.raises(UnsupportedModelError, match="SD3Transformer2DModel"):
        patch(transformer, ToMe())
    assert sum(len(m._forward_pre_hooks) for m in transformer.modules()) == hooks_before
    assert Handle.active(transformer) == {}


def test_accelerate_entry_point(sd, sd_baseline):
    api = pytest.importorskip("leanvision.diffusion.api")
    with api.accelerate(sd.model, "tome", ratio=0.5):
        merged = run(sd)
    assert not np.array_equal(merged, sd_baseline)
    np.testing.assert_array_equal(run(sd), sd_baseline)
    with api.accelerate(sd.model.unet, ToMe(ratio=0.5)):
        np.testing.assert_array_equal(run(sd), merged)


def test_composes_with_deepcache(sd):
    api = pytest.importorskip("leanvision.diffusion.api")
    cache = pytest.importorskip("leanvision.diffusion.cache")
    steps = {"num_inference_steps": 6}
    base = run(sd, **steps)
    outputs = {}
    for name, methods in {
        "deepcache": [cache.DeepCache(interval=2)],
        "tome": [ToMe(ratio=0.5)],
        "both": [cache.DeepCache(interval=2), ToMe(ratio=0.5)],
    }.items():
        with api.accelerate(sd.model, methods) as handle:
            outputs[name] = run(sd, **steps)
            if name == "both":
                assert handle.stats["cached_calls"] > 0 and handle.stats["tome_blocks"] == 6
    assert not np.array_equal(outputs["both"], outputs["deepcache"])
    assert not np.array_equal(outputs["both"], outputs["tome"])
    np.testing.assert_array_equal(run(sd, **steps), base)
