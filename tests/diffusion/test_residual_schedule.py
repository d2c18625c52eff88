"""Residual's adaptive rule, checked step by step at thresholds where the drift decides.

During a run, a plain forward hook records the probe's output at every denoiser call. The
test then replays the documented rule on those recordings: the relative L1 drift
``mean|p - p_ref| / mean|p_ref|`` against the probe at the branch's last full call (the
reference, refreshed on every full call), reuse while it is below ``threshold``, full on
``warmup`` first / ``cooldown`` last steps and after ``max_consecutive_skips`` reuses. The
replayed F/C string must equal ``handle.stats["last_run"]``, and the thresholds are chosen
so that both drift-decided reuses and drift-decided full steps occur. On the UNet the output
must also equal the hand-written DeepCache oracle run on the same schedule (the probe's skip
branch stays fresh, the deep layers come from the last full step).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from cache_helpers import (
    ManualUNet,
    deepcache_oracle,
    initial_latents,
    oracle_run,
    pipeline_run,
    run,
)

import leanvision as lv
from leanvision.diffusion import Residual
from leanvision.testing.tiny_diffusion import tiny_dit, tiny_flux, tiny_sd_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 10
MARGIN = 1e-3  # no drift this close to the threshold, so float noise cannot flip a decision


@dataclasses.dataclass
class Replay:
    """The F/C string the rule gives on recorded probes, and why each call went that way."""

    run: str
    reasons: list[str]  # "forced", "drift-full" or "drift-reuse" per call
    drifts: list[float | None]


def relative_l1(probe: torch.Tensor, reference: torch.Tensor) -> float:
    probe, reference = probe.double(), reference.double()
    return float((probe - reference).abs().mean() / reference.abs().mean())


def replay(probes: list[torch.Tensor], branches: int, config: Residual, steps: int) -> Replay:
    """Apply the documented rule to ``probes`` (one per call; ``branches`` calls a step)."""
    reference: dict[int, torch.Tensor] = {}
    skips: dict[int, int] = {}
    result = Replay("", [], [])
    for call, probe in enumerate(probes):
        step, branch = divmod(call, branches)
        drift = relative_l1(probe, reference[branch]) if branch in reference else None
        forced = (
            drift is None
            or step < config.warmup
            or step >= steps - config.cooldown
            or skips.get(branch, 0) >= config.max_consecutive_skips
        )
        reuse = not forced and drift < config.threshold
        if reuse:
            skips[branch] = skips.get(branch, 0) + 1
        else:
            skips[branch] = 0
            reference[branch] = probe
        result.run += "C" if reuse else "F"
        result.reasons.append("forced" if forced else "drift-reuse" if reuse else "drift-full")
        result.drifts.append(drift)
    return result


def recorded_run(tiny, probe: torch.nn.Module, pick, config: Residual, **overrides):
    """Run ``tiny`` under ``config``; return (handle stats, probe outputs, run output)."""
    probes: list[torch.Tensor] = []
    hook = probe.register_forward_hook(lambda _m, _a, out: probes.append(pick(out).clone()))
    try:
        with lv.diffusion.accelerate(tiny.model, config) as handle:
            output = overrides.pop("runner", run)(tiny, num_inference_steps=STEPS, **overrides)
    finally:
        hook.remove()
    return handle.stats, probes, output


def check_schedule(stats: dict, probes: list, branches: int, config: Residual) -> Replay:
    expected = replay(probes, branches, config, STEPS)
    assert len(probes) == branches * STEPS
    assert stats["last_run"] == expected.run, (expected.reasons, expected.drifts)
    # The threshold decides: some calls reuse and some run in full because of the drift.
    assert {"drift-reuse", "drift-full"} <= set(expected.reasons), expected.reasons
    decided = [d for d, r in zip(expected.drifts, expected.reasons, strict=True) if r != "forced"]
    assert all(abs(d - config.threshold) > MARGIN * config.threshold for d in decided)
    return expected


UNET_CASES = [
    Residual(threshold=0.5, max_consecutive_skips=10),
    Residual(threshold=0.8, probe_blocks=2, max_consecutive_skips=2, warmup=2, cooldown=1),
    Residual(threshold=0.3, max_consecutive_skips=1),
]


@pytest.fixture(scope="module")
def sd():
    tiny = tiny_sd_pipeline(seed=0, size=16)
    tiny.info["manual"] = ManualUNet(tiny.model.unet)
    tiny.info["latents"] = initial_latents(tiny)
    return tiny


@pytest.mark.parametrize("config", UNET_CASES, ids=lambda c: f"t{c.threshold}-p{c.probe_blocks}")
def test_unet_schedule_follows_the_drift(sd, config):
    unet = sd.model.unet
    # The probe: the last module of down layer probe_blocks - 1 (d0.r0+a0, then d0.r1+a1).
    probe = unet.down_blocks[0].attentions[config.probe_blocks - 1]
    latents = sd.info["latents"]
    stats, probes, (final, outputs) = recorded_run(
        sd, probe, lambda out: out[0], config, runner=pipeline_run, latents=latents
    )
    expected = check_schedule(stats, probes, 1, config)
    # The reuse itself: DeepCache at the probe's skip branch, on the schedule just checked.
    full = [kind == "F" for kind in expected.run]
    step = deepcache_oracle(sd.info["manual"], config.probe_blocks, full)
    ref_final, ref_outputs = oracle_run(sd, latents, step, num_inference_steps=STEPS)
    errors = [float((a - b).norm() / b.norm()) for a, b in zip(outputs, ref_outputs, strict=True)]
    assert max(errors) <= 1e-5, errors
    assert float((final - ref_final).norm() / ref_final.norm()) <= 1e-5


def test_dit_schedule_follows_the_drift():
    tiny = tiny_dit(seed=0)
    config = Residual(threshold=0.5, max_consecutive_skips=10)
    probe = tiny.model.transformer.transformer_blocks[0]
    stats, probes, _ = recorded_run(tiny, probe, lambda out: out, config)
    check_schedule(stats, probes, 1, config)


def test_flux_schedule_keeps_one_reference_per_cfg_pass():
    """Flux true CFG: cond and uncond are separate calls, each with its own reference and
    skip count; the replay interleaves two branches."""
    tiny = tiny_flux(seed=0)
    config = Residual(threshold=0.2, max_consecutive_skips=10)
    probe = tiny.model.transformer.transformer_blocks[0]  # returns (text, image) streams
    stats, probes, _ = recorded_run(
        tiny, probe, lambda out: out[1], config, true_cfg_scale=2.0, negative_prompt="blurry"
    )
    check_schedule(stats, probes, 2, config)
