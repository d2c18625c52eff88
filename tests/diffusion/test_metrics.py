"""PSNR / SSIM against their formulas computed independently, input layouts, CLIP score's
dependency handling and scoring (with a stand-in open_clip module)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from leanvision.core.errors import MissingDependencyError
from leanvision.diffusion.metrics import clip_score, fidelity, psnr, ssim, to_image_batch


def random_images(shape, seed):
    return np.random.default_rng(seed).random(shape)


def reference_ssim(a, b, size, sigma, data_range=1.0):
    """SSIM of two (H, W) images, window by window, with explicit weighted statistics."""
    offsets = np.arange(size) - (size - 1) / 2
    g = np.exp(-(offsets**2) / (2 * sigma**2))
    weights = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            x, y = a[i : i + size, j : j + size], b[i : i + size, j : j + size]
            mx, my = (weights * x).sum(), (weights * y).sum()
            vx, vy = (weights * (x - mx) ** 2).sum(), (weights * (y - my) ** 2).sum()
            cov = (weights * (x - mx) * (y - my)).sum()
            values.append(
                (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            )
    return float(np.mean(values))


@pytest.mark.parametrize(("height", "width", "size", "sigma"), [(12, 15, 7, 1.5), (9, 9, 11, 1.0)])
def test_ssim_matches_the_formula(height, width, size, sigma):
    a = random_images((2, height, width, 3), seed=1)
    b = np.clip(a + 0.2 * random_images((2, height, width, 3), seed=2) - 0.1, 0, 1)
    window = min(size, height - (height % 2 == 0), width - (width % 2 == 0))  # shrinks to fit
    want = np.mean(
        [
            reference_ssim(a[n, ..., c], b[n, ..., c], window, sigma)
            for n in range(2)
            for c in range(3)
        ]
    )
    assert ssim(a, b, window_size=size, sigma=sigma) == pytest.approx(want, rel=1e-10)


def test_ssim_orders_by_distortion_and_is_one_for_identical():
    clean = random_images((1, 32, 32, 3), seed=3)
    noise = random_images((1, 32, 32, 3), seed=4) - 0.5
    slight, heavy = np.clip(clean + 0.05 * noise, 0, 1), np.clip(clean + 0.5 * noise, 0, 1)
    assert ssim(clean, clean) == 1.0
    assert 1.0 > ssim(clean, slight) > ssim(clean, heavy)
    assert ssim(clean, slight) == pytest.approx(ssim(slight, clean), rel=1e-12)  # symmetric


def test_psnr_matches_the_formula():
    a = random_images((3, 8, 8, 3), seed=5)
    b = random_images((3, 8, 8, 3), seed=6)
    want = np.mean([10 * np.log10(1 / np.mean((a[i] - b[i]) ** 2)) for i in range(3)])
    assert psnr(a, b) == pytest.approx(want, rel=1e-12)
    assert psnr(a * 255, b * 255, data_range=255) == pytest.approx(want, rel=1e-12)
    assert psnr(a, a) == float("inf")


def test_layouts_agree():
    array = random_images((2, 10, 12, 3), seed=7)
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2)
    uint8 = (array * 255).round().astype(np.uint8)
    pil = [Image.fromarray(image) for image in uint8]
    assert torch.equal(to_image_batch(array), to_image_batch(tensor))
    assert torch.equal(to_image_batch(uint8), to_image_batch(pil))
    assert to_image_batch(array[0]).shape == (1, 3, 10, 12)
    assert fidelity(uint8, pil) == {"psnr": float("inf"), "ssim": 1.0}


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3))), ValueError, "same shape"),
        (lambda: psnr(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)), 0), ValueError, "data_range"),
        (lambda: ssim(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)), window_size=4), ValueError, "odd"),
        (lambda: psnr("a.png", "b.png"), TypeError, "numpy array, torch tensor, PIL"),
        (lambda: psnr(np.zeros((1, 1, 4, 4, 3)), np.zeros(1)), ValueError, r"\(B, H, W, C\)"),
    ],
)
def test_bad_inputs_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_clip_score_without_open_clip_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    with pytest.raises(MissingDependencyError, match=r"leanvision\[clip\]"):
        clip_score(np.zeros((1, 8, 8, 3)), "a fox", pretrained="missing.pt")


def fake_open_clip():
    """An open_clip stand-in: images embed as their mean colour, texts as a fixed colour."""
    module = types.ModuleType("open_clip")
    colours = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0]}

    class Model(torch.nn.Module):
        def encode_image(self, pixels):
            return pixels.mean(dim=(2, 3))

        def encode_text(self, tokens):
            return tokens

    def preprocess(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)

    module.create_model_and_transforms = lambda name, pretrained, device: (
        Model(),
        None,
        preprocess,
    )
    module.get_tokenizer = lambda name: lambda texts: torch.tensor([colours[t] for t in texts])
    return module


def test_clip_score_scores_each_image_with_its_prompt(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "open_clip", fake_open_clip())
    weights = tmp_path / "clip.pt"
    with pytest.raises(FileNotFoundError, match="pretrained="):
        clip_score(np.zeros((1, 4, 4, 3)), "red", pretrained=weights)
    weights.write_bytes(b"")
    red = np.zeros((2, 4, 4, 3))
    red[..., 0] = 1.0
    assert clip_score(red, "red", pretrained=weights) == pytest.approx(100.0)
    assert clip_score(red, ["red", "green"], pretrained=weights) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        clip_score(red, ["red"] * 3, pretrained=weights)
