"""Load an image from a path, a PIL image or an array as an upright RGB ``PIL.Image``."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from leanvision.datasets.errors import MediaError, check_readable_file

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
)

ImageInput = str | os.PathLike | Image.Image | np.ndarray


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited over white.

    Plain ``convert("RGB")`` would expose whatever colour sits under a transparent pixel
    (often black), which is not what the image looks like.
    """
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(
            f"image array has shape {tuple(array.shape)}; allowed: (H, W), (H, W, 1), "
            f"(H, W, 3) or (H, W, 4)"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"image array has shape {tuple(array.shape)}; height and width must be > 0"
        )
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("image array contains NaN or inf; allowed: finite values in [0, 1]")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"float image array has values in [{low:.4g}, {high:.4g}]; allowed: [0, 1] "
                f"(scale uint8 data to [0, 1] or pass it as uint8)"
            )
        pixels = np.round(array * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"image array has dtype {array.dtype}; allowed: uint8, or float in [0, 1]")
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[pixels.ndim if pixels.ndim == 2 else pixels.shape[2]]
    return Image.fromarray(np.ascontiguousarray(pixels), mode=mode)


def _open_file(path: str | os.PathLike) -> Image.Image:
    path = check_readable_file(path)
    try:
        with Image.open(path) as opened:
            # load() inside the try: a truncated file only fails when pixels are decoded.
            opened.load()
            # exif_transpose before closing: it needs the EXIF block of the opened file.
            upright = ImageOps.exif_transpose(opened)
            if upright is opened:
                upright = opened.copy()
    except UnidentifiedImageError as error:
        raise MediaError(
            path, "not a recognised image file (wrong extension or corrupt)"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        # PIL reports truncated or damaged data as OSError ("image file is truncated"),
        # SyntaxError (bad PNG chunks) or ValueError.
        raise MediaError(path, f"image data is truncated or corrupt ({error})") from error
    return upright


def load_image(image: ImageInput) -> Image.Image:
    """Load ``image`` as an upright RGB ``PIL.Image``.

    Accepts a path, a ``PIL.Image`` (any mode) or a ``numpy`` array of shape (H, W),
    (H, W, 1), (H, W, 3) or (H, W, 4), ``uint8`` or float in [0, 1]. The EXIF orientation
    tag is applied (a phone photo stored sideways comes back upright) and grayscale,
    palette and alpha images are converted to RGB, with transparency composited over white.
    A file that is missing, empty, not an image or truncated raises a ``ValueError``
    (:class:`~leanvision.datasets.MediaError`) naming the file and the problem.

    >>> import numpy as np
    >>> load_image(np.zeros((4, 6), dtype=np.uint8)).size
    (6, 4)
    """
    if isinstance(image, Image.Image):
        upright = ImageOps.exif_transpose(image)
        return _to_rgb(upright)
    if isinstance(image, np.ndarray):
        return _to_rgb(_array_to_image(image))
    if isinstance(image, (str, os.PathLike)):
        return _to_rgb(_open_file(image))
    raise TypeError(
        f"image must be a path, a PIL.Image or a numpy array, got {type(image).__name__}"
    )
