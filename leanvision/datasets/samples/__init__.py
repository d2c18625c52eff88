"""Small sample media that ship with leanvision, made procedurally (no third-party licence).

- ``scene.jpg``: 320x240 RGB JPEG of a drawn landscape.
- ``scene_exif_rotated.jpg``: the same scene stored sideways (240x320) with EXIF
  orientation 6; loaded upright it is 320x240 with a red marker in the top-left corner.
- ``gradient_gray.png``: 128x48 grayscale ("L") ramp.
- ``shapes_palette.png``: 96x64 palette ("P") image with a transparent colour.
- ``bouncing_ball.mp4``: 3 s, 30 fps, 320x240 H.264; a white bar along the bottom encodes
  the frame number (:func:`leanvision.datasets.samples.generate.frame_index_from_bar`).

Regenerate them with ``python -m leanvision.datasets.samples --regenerate``.

>>> [p.rsplit("/", 1)[-1] for p in sample_image_paths()][:2]
['scene.jpg', 'scene_exif_rotated.jpg']
"""

from __future__ import annotations

import os

SAMPLE_DIR = os.path.dirname(os.path.abspath(__file__))
SAMPLE_IMAGES: tuple[str, ...] = (
    "scene.jpg",
    "scene_exif_rotated.jpg",
    "gradient_gray.png",
    "shapes_palette.png",
)
SAMPLE_VIDEO = "bouncing_ball.mp4"


def _existing(name: str) -> str:
    path = os.path.join(SAMPLE_DIR, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"sample file {path!r} is missing; run: python -m leanvision.datasets.samples "
            f"--regenerate"
        )
    return path


def sample_image_paths() -> list[str]:
    """Absolute paths of the sample images (JPEG, EXIF-rotated JPEG, grayscale, palette).

    >>> len(sample_image_paths())
    4
    """
    return [_existing(name) for name in SAMPLE_IMAGES]


def sample_video_path() -> str:
    """Absolute path of the sample video: 90 frames, 30 fps, 320x240, H.264 mp4.

    >>> sample_video_path().endswith("bouncing_ball.mp4")
    True
    """
    return _existing(SAMPLE_VIDEO)


def main(argv: list[str] | None = None) -> int:
    """``python -m leanvision.datasets.samples [--regenerate] [--out DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m leanvision.datasets.samples", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--regenerate", action="store_true", help="redraw and re-encode them")
    parser.add_argument("--out", default=SAMPLE_DIR, help="where to write (default: the package)")
    args = parser.parse_args(argv)
    if args.regenerate:
        from leanvision.datasets.samples.generate import regenerate

        for path in regenerate(args.out):
            print(f"{os.path.getsize(path):>8} bytes  {path}")
    else:
        for name in (*SAMPLE_IMAGES, SAMPLE_VIDEO):
            path = os.path.join(SAMPLE_DIR, name)
            size = os.path.getsize(path) if os.path.exists(path) else "missing"
            print(f"{size:>8}  {path}")
    return 0
