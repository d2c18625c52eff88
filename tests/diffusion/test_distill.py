"""Latent consistency distillation: the LCM formulas, training, checkpoint/resume, outputs."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from leanvision import Handle, UnsupportedModelError
from leanvision.diffusion.consistency import DistillConfig, distill, few_step
from leanvision.diffusion.consistency import lcm_math as lcm
from leanvision.diffusion.consistency.students import make_unet_student
from leanvision.testing import tiny_sd_pipeline

# 32 px images -> 16 x 16 latents on the tiny pipeline (VAE scale factor 2).
SMALL = dict(batch_size=2, resolution=32, progress=False, eval_every=0)
PROMPTS = ["a red fox", "snow", "a cat", "a dog"]


# Training many tiny steps: one thread is several times faster, and results stay deterministic.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher():
    return tiny_sd_pipeline(seed=0).model


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _weights(module):
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


# ----------------------------------------------------------------- formulas


def test_ddim_grid_and_boundary_conditions():
    grid = lcm.ddim_timesteps(1000, 50)
    assert grid[0].item() == 19 and grid[-1].item() == 999 and torch.all(grid.diff() == 20)
    c_skip, c_out = lcm.boundary_scalings(torch.tensor([0, 19, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0  # f(x, 0) = x
    assert c_skip[1] < 1e-3 and c_out[2] > 0.999  # timestep_scaling 10: x0 term dominates


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_and_noise_recovered_for_every_parameterisation(prediction_type):
    bar = torch.linspace(0.999, 0.005, 1000, dtype=torch.float64)
    x0, noise = (
        torch.randn(3, 4, 5, 5, dtype=torch.float64),
        torch.randn(3, 4, 5, 5, dtype=torch.float64),
    )
    t = torch.tensor([0, 400, 999])
    a, s = bar[t].sqrt().view(-1, 1, 1, 1), (1 - bar[t]).sqrt().view(-1, 1, 1, 1)
    xt = a * x0 + s * noise
    output = {"epsilon": noise, "v_prediction": a * noise - s * x0, "sample": x0}[prediction_type]
    got_x0, got_noise = lcm.predicted_x0_and_noise(output, t, xt, bar, prediction_type)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_noise, noise)
    # a DDIM step with the true (x0, noise) lands exactly on the trajectory
    torch.testing.assert_close(
        lcm.ddim_step_to(got_x0, got_noise, bar[t - 1].clamp(min=0)),
        bar[t - 1].sqrt().view(-1, 1, 1, 1) * x0
        + (1 - bar[t - 1]).sqrt().view(-1, 1, 1, 1) * noise,
    )


def test_guidance_embedding_matches_diffusers_pipeline(teacher):
    w = torch.tensor([2.0, 7.5, 14.0])
    expected = teacher.get_guidance_scale_embedding(w, embedding_dim=64)
    torch.testing.assert_close(lcm.guidance_scale_embedding(w, 64), expected)


def test_guidance_huber_and_ema():
    cond, uncond = torch.full((2, 3), 2.0), torch.ones(2, 3)
    guided = lcm.guided(cond, uncond, torch.tensor([0.0, 3.0]))
    assert guided[0].tolist() == [2.0] * 3 and guided[1].tolist() == [5.0] * 3  # z+(1+w)c-wu
    small, big = torch.tensor([1e-4]), torch.tensor([10.0])
    assert lcm.pseudo_huber(small, torch.zeros(1), 1e-3) < small  # quadratic near zero
    assert abs(lcm.pseudo_huber(big, torch.zeros(1), 1e-3).item() - 10.0) < 1e-2  # ~L1
    target = [torch.zeros(3)]
    lcm.ema_update(target, [torch.ones(3)], 0.95)
    torch.testing.assert_close(target[0], torch.full((3,), 0.05))


# ----------------------------------------------------------------- training


def test_lora_student_fits_a_fixed_evaluation_batch(teacher, images):
    student = distill(
        teacher,
        prompts=PROMPTS,
        images=images,
        student="lora",
        lora_rank=4,
        steps=24,
        learning_rate=1e-3,
        **{**SMALL, "eval_every": 8},
    )
    history = student.distill_history
    assert history["eval_step"] == [0, 8, 16, 24] and history["step"] == list(range(1, 25))
    assert all(np.isfinite(history["loss"]))
    # the same latents, noise, timesteps and w every time: the consistency loss goes down
    assert history["eval_loss"][-1] < 0.95 * history["eval_loss"][0]
    assert min(history["eval_loss"][1:]) < history["eval_loss"][0]


def test_unet_student_starts_as_the_teacher(teacher):
    student = make_unet_student(teacher.unet, time_cond_proj_dim=32)
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([999, 19])
    w = lcm.guidance_scale_embedding(torch.tensor([3.0, 14.0]), 32)
    with torch.no_grad():
        expected = teacher.unet(latents, t, encoder_hidden_states=text).sample
        got = student(latents, t, encoder_hidden_states=text, timestep_cond=w).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert student.time_embedding.cond_proj.weight.requires_grad


def test_unet_student_writes_files_and_samples(teacher, images, tmp_path):
    before = _weights(teacher.unet)
    student = distill(
        teacher,
        prompts=PROMPTS,
        images=images,
        student="unet",
        steps=3,
        learning_rate=1e-4,
        output_dir=str(tmp_path),
        **SMALL,
    )
    history = student.distill_history
    assert history["eval_step"] == [0, 3] and len(history["loss"]) == 3
    # the teacher is untouched; the student has its own UNet with a guidance embedding
    assert all(torch.equal(before[k], v) for k, v in teacher.unet.state_dict().items())
    assert student.unet is not teacher.unet and student.vae is teacher.vae
    assert student.unet.config.time_cond_proj_dim == 256
    saved = json.loads((tmp_path / "loss_history.json").read_text())
    assert saved["loss"] == history["loss"] and saved["config"]["student"] == "unet"
    png = (tmp_path / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert (tmp_path / "unet" / "config.json").exists()
    with few_step(student, "lcm", steps=2) as handle:
        image = student("a red fox", height=32, width=32, output_type="np").images
    assert handle.stats["call_defaults"]["guidance_scale"] == 8.5  # w-embedding default
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_resume_continues_with_identical_losses(teacher, images, tmp_path):
    options = dict(
        prompts=PROMPTS, images=images, student="lora", lora_rank=4, learning_rate=1e-3, **SMALL
    )
    straight = distill(teacher, steps=4, **options).distill_history
    first = distill(
        teacher,
        steps=2,
        checkpoint_dir=str(tmp_path),
        checkpoint_every=1,
        keep_checkpoints=1,
        **options,
    )
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pt")) == ["checkpoint-0000002.pt"]
    assert first.distill_history["loss"] == straight["loss"][:2]
    resumed = distill(teacher, steps=4, checkpoint_dir=str(tmp_path), resume=True, **options)
    history = resumed.distill_history
    assert history["step"] == [1, 2, 3, 4]
    assert history["loss"] == straight["loss"]  # bit for bit, including steps 3 and 4
    with pytest.raises(ValueError, match="lora_rank"):
        distill(
            teacher,
            steps=5,
            checkpoint_dir=str(tmp_path),
            resume=True,
            **{**options, "lora_rank": 8},
        )


def test_lora_student_loads_into_the_teacher_with_few_step(teacher, images, tmp_path):
    def sample(**options):
        return teacher(
            "a red fox",
            height=32,
            width=32,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
            **options,
        ).images

    baseline = sample(num_inference_steps=2)
    student = distill(
        teacher,
        prompts="a red fox",
        images=images,
        student="lora",
        steps=3,
        lora_rank=4,
        learning_rate=1e-2,
        output_dir=str(tmp_path),
        **SMALL,
    )
    assert student.unet.config.time_cond_proj_dim is None
    lora = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    assert lora.exists()

    with few_step(teacher, "lcm", steps=2):
        plain = sample()
    with few_step(teacher, "lcm", steps=2, lora=lora) as handle:
        with_lora = sample()
    assert handle.stats["call_defaults"]["guidance_scale"] == 1.0
    assert not np.array_equal(plain, with_lora)
    assert Handle.active(teacher.unet) == {} and teacher.get_list_adapters() == {}
    np.testing.assert_array_equal(sample(num_inference_steps=2), baseline)


def test_prompts_only_synthesises_x0_with_the_teacher(teacher, tmp_path):
    student = distill(
        teacher,
        prompts=["a red fox", "snow"],
        student="unet",
        steps=1,
        synthetic_steps=2,
        checkpoint_dir=str(tmp_path),
        **SMALL,
    )
    assert len(student.distill_history["loss"]) == 1
    pool = torch.load(tmp_path / "synthetic_latents.pt", weights_only=True)
    assert pool["latents"].shape == (2, 4, 16, 16) and pool["prompts"] == ["a red fox", "snow"]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"student": "dit"}, ValueError, "student"),
        ({"steps": 0}, ValueError, "steps"),
        ({"w_min": 5.0, "w_max": 3.0}, ValueError, "w_max"),
        ({"ema_decay": 1.0}, ValueError, "ema_decay"),
        ({"huber_c": 0.0}, ValueError, "huber_c"),
        ({"num_ddim_timesteps": 0}, ValueError, "num_ddim_timesteps"),
        ({"mixed_precision": "fp8"}, ValueError, "mixed_precision"),
        ({"checkpoint_every": 5}, ValueError, "checkpoint_dir"),
        ({"resume": True}, ValueError, "checkpoint_dir"),
        ({"resume": "/no/such/checkpoint.pt"}, ValueError, "resume"),
        ({"batch_size": 1.5}, TypeError, "batch_size"),
        ({"lora_target_modules": "to_q"}, ValueError, "lora_target_modules"),
        ({"resolution": 31}, ValueError, "resolution"),
        ({"learning_rate": -1.0}, ValueError, "learning_rate"),
        ({"no_such_option": 1}, TypeError, "no_such_option"),
    ],
)
def test_bad_config_raises(teacher, images, options, error, match):
    with pytest.raises(error, match=match):
        distill(teacher, prompts="a fox", images=images, **{**SMALL, **options})


def test_bad_data_and_teacher_raise(teacher, images):
    with pytest.raises(ValueError, match="3 prompts for 4 images"):
        distill(teacher, prompts=["a", "b", "c"], images=images, **SMALL)
    with pytest.raises(ValueError, match="prompts"):
        distill(teacher, images=images, **SMALL)
    with pytest.raises(UnsupportedModelError, match="teacher pipeline"):
        distill(types.SimpleNamespace(unet=None), prompts="a fox", **SMALL)
    assert DistillConfig().learning_rate_for_student == 1e-4
