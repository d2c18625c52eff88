"""Segment one image: preprocessing, argmax class map and a colour overlay.

>>> import numpy as np
>>> from leanvision.vision import efficientvit_seg
>>> result = segment(efficientvit_seg("b0"), np.zeros((48, 80, 3), dtype=np.uint8))
>>> result.class_map.shape, result.overlay.size, result.palette.name
((48, 80), (80, 48), 'cityscapes')
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image
from torch import nn

from leanvision.vision.palettes import PALETTES, Palette

# EfficientViT's (and timm's) ImageNet normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class SegmentationResult:
    """What :func:`segment` returns for one H x W image.

    ``class_map``: (H, W) int64 class ids at the image's size; ``overlay``: the image
    blended with the palette colours (PIL RGB, W x H); ``palette``: the :class:`Palette`
    used; ``logits``: (num_classes, H, W) fp32, resized to the image.

    >>> from leanvision.datasets import sample_image_paths
    >>> from leanvision.vision import efficientvit_seg
    >>> result = segment(efficientvit_seg("b0"), sample_image_paths()[0])  # 320x240 JPEG
    >>> result.class_map.shape, result.logits.shape, result.overlay.size
    ((240, 320), torch.Size([19, 240, 320]), (320, 240))
    """

    class_map: np.ndarray
    overlay: Image.Image
    palette: Palette
    logits: torch.Tensor


def generated_palette(num_classes: int, seed: int = 0) -> Palette:
    """Distinct-looking random colours for a label set without a known palette.

    >>> len(generated_palette(7))
    7
    """
    rng = np.random.default_rng(seed)
    colors = rng.integers(0, 256, size=(num_classes, 3), dtype=np.uint8)
    colors.setflags(write=False)
    return Palette(
        f"generated-{num_classes}", tuple(f"class {i}" for i in range(num_classes)), colors
    )


def _resolve_palette(palette: str | Palette | None, num_classes: int) -> Palette:
    if palette is None:
        for known in PALETTES.values():
            if len(known) == num_classes:
                return known
        return generated_palette(num_classes)
    if isinstance(palette, str):
        if palette not in PALETTES:
            raise ValueError(
                f"palette must be one of {sorted(PALETTES)} or a Palette; got {palette!r}"
            )
        palette = PALETTES[palette]
    if not isinstance(palette, Palette):
        raise TypeError(f"palette must be a name, a Palette or None; got {type(palette).__name__}")
    if len(palette) < num_classes:
        raise ValueError(
            f"palette {palette.name!r} has {len(palette)} colours but the model predicts "
            f"{num_classes} classes; allowed: a palette with at least {num_classes} colours"
        )
    return palette


def colorize(class_map: np.ndarray, palette: str | Palette) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours of ``palette``.

    >>> colorize(np.array([[0, 1]]), "cityscapes").tolist()
    [[[128, 64, 128], [244, 35, 232]]]
    """
    palette = _resolve_palette(palette, 0)
    ids = np.asarray(class_map)
    if ids.size and (ids.min() < 0 or ids.max() >= len(palette)):
        raise ValueError(
            f"class_map holds ids in [{ids.min()}, {ids.max()}]; palette {palette.name!r} "
            f"allows 0..{len(palette) - 1}"
        )
    return palette.colors[ids]


def segment(
    model: nn.Module,
    image: object,
    *,
    palette: str | Palette | None = None,
    alpha: float = 0.5,
    size: tuple[int, int] | None = None,
) -> SegmentationResult:
    """Segment ``image`` (a path, ``PIL.Image`` or HxWxC array; see ``datasets.load_image``).

    The image is ImageNet-normalised and run through ``model`` (an :func:`efficientvit_seg`
    model, or any module mapping (1, 3, H, W) to (1, K, h, w) logits) at its own size, or
    resized to ``size`` = (height, width) first; the logits are resized (bilinear) back to
    the image size. ``palette``: "cityscapes", "ade20k", a :class:`Palette`, or None (the
    known palette with the model's class count, else generated colours). ``alpha``: weight
    of the colours in the overlay, in [0, 1]. Returns a :class:`SegmentationResult` at the
    image's size: ``class_map`` (H, W) int64, ``overlay`` PIL RGB, ``logits`` (K, H, W).

    >>> from leanvision.datasets import sample_image_paths
    >>> from leanvision.vision import efficientvit_seg
    >>> model = efficientvit_seg("b0", num_classes=150)          # ADE20K-sized head
    >>> result = segment(model, sample_image_paths()[0], size=(128, 160), alpha=0.4)
    >>> result.class_map.shape, result.palette.name
    ((240, 320), 'ade20k')
    """
    from leanvision.datasets import load_image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}")
    picture = load_image(image)
    width, height = picture.size
    resized = picture
    if size is not None:
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (height, width) of positive ints; got {size!r}")
        resized = picture.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    batch = ((pixels - mean) / std).permute(2, 0, 1)[None].to(device=device, dtype=dtype)
    with torch.inference_mode():
        logits = model(batch)
        logits = torch.nn.functional.interpolate(
            logits.float(), size=(height, width), mode="bilinear", align_corners=False
        )[0].cpu()
    chosen = _resolve_palette(palette, logits.shape[0])
    class_map = logits.argmax(0).numpy()
    colors = chosen.colors[class_map].astype(np.float32)
    blended = (1.0 - alpha) * np.asarray(picture, dtype=np.float32) + alpha * colors
    overlay = Image.fromarray(np.clip(blended.round(), 0, 255).astype(np.uint8), "RGB")
    return SegmentationResult(class_map=class_map, overlay=overlay, palette=chosen, logits=logits)
