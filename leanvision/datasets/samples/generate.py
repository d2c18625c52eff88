"""Draw the sample images and encode the sample video (run: ``python -m leanvision.datasets.samples
--regenerate``). Everything is procedural, so the samples carry no third-party licence.

The video shows a ball bouncing over a static scene and, along the bottom, a white bar whose
length encodes the frame number (see :func:`frame_index_from_bar`), so tests can check that a
decoder returned the frame it was asked for.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

VIDEO_SIZE = (320, 240)  # width, height
VIDEO_FPS = 30
VIDEO_FRAMES = 90  # 3 seconds
BAR_HEIGHT = 8
# EXIF orientation 6: the stored pixels must be turned 90 degrees clockwise to be upright.
EXIF_ORIENTATION_TAG = 0x0112


def draw_scene(width: int = 320, height: int = 240) -> Image.Image:
    """A sky gradient, a sun, hills, a house and a tree: edges, flat areas and gradients."""
    rows = np.linspace(0.0, 1.0, height)[:, None]
    sky = np.empty((height, width, 3), dtype=np.float64)
    sky[..., 0] = 90 + 110 * rows
    sky[..., 1] = 150 + 80 * rows
    sky[..., 2] = 235 - 20 * rows
    image = Image.fromarray(sky.round().astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    w, h = width, height
    draw.ellipse((0.75 * w, 0.06 * h, 0.90 * w, 0.26 * h), fill=(255, 214, 64))
    draw.polygon(
        [(0, 0.70 * h), (0.35 * w, 0.50 * h), (0.70 * w, 0.72 * h), (0, h)], fill=(70, 140, 60)
    )
    draw.rectangle((0, 0.70 * h, w, h), fill=(60, 125, 50))
    draw.rectangle((0.18 * w, 0.48 * h, 0.42 * w, 0.78 * h), fill=(200, 80, 60))
    draw.polygon(
        [(0.15 * w, 0.49 * h), (0.30 * w, 0.30 * h), (0.45 * w, 0.49 * h)], fill=(110, 50, 40)
    )
    draw.rectangle((0.27 * w, 0.62 * h, 0.33 * w, 0.78 * h), fill=(90, 60, 30))
    draw.rectangle((0.20 * w, 0.54 * h, 0.25 * w, 0.61 * h), fill=(180, 220, 255))
    draw.rectangle((0.72 * w, 0.52 * h, 0.75 * w, 0.78 * h), fill=(100, 70, 40))
    draw.ellipse((0.64 * w, 0.32 * h, 0.83 * w, 0.58 * h), fill=(40, 110, 45))
    # Seeded grain on the grass: real photos are not flat, and texture makes JPEG/H.264
    # decoding do representative work in the benchmarks.
    pixels = np.asarray(image).astype(np.int16)
    grass = slice(int(0.70 * h), h)
    grain = np.random.default_rng(0).integers(-14, 15, size=pixels[grass].shape[:2])
    pixels[grass] += grain[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def draw_frame(index: int, background: Image.Image, num_frames: int = VIDEO_FRAMES) -> np.ndarray:
    """Frame ``index`` of the sample video as uint8 (H, W, 3)."""
    frame = background.copy()
    draw = ImageDraw.Draw(frame)
    w, h = frame.size
    # A ball on a bouncing path, with a shadow on the ground.
    phase = index / num_frames
    x = 20 + (w - 40) * (0.5 - 0.5 * np.cos(2 * np.pi * phase))
    y = 0.70 * h - 0.45 * h * abs(np.sin(3 * np.pi * phase))
    draw.ellipse((x - 14, 0.71 * h, x + 14, 0.75 * h), fill=(35, 80, 30))
    draw.ellipse((x - 12, y - 24, x + 12, y), fill=(230, 40, 160), outline=(20, 20, 20))
    # The frame counter: a white bar over a black strip, (index + 1) / num_frames of the width.
    draw.rectangle((0, h - BAR_HEIGHT, w, h), fill=(0, 0, 0))
    bar = round((index + 1) * w / num_frames)
    draw.rectangle((0, h - BAR_HEIGHT, bar - 1, h), fill=(255, 255, 255))
    return np.asarray(frame)


def frame_index_from_bar(frame: np.ndarray, num_frames: int = VIDEO_FRAMES) -> int:
    """Read back the frame number that :func:`draw_frame` drew into ``frame`` (H, W, 3)."""
    strip = frame[-BAR_HEIGHT + 2 : -1, :, :].astype(np.float64).mean(axis=(0, 2))
    bar = float((strip > 127).sum())
    width = frame.shape[1]
    return int(round(bar * num_frames / width)) - 1


def write_video(
    path: str,
    frames,
    fps: int,
    width: int,
    height: int,
    crf: int = 26,
    preset: str = "medium",
    threads: int = 1,
) -> None:
    """Encode ``frames`` (iterable of uint8 (H, W, 3)) as H.264 mp4 with PyAV.

    One keyframe a second, so that seeking is exercised; ``threads=1`` makes the output
    byte-for-byte reproducible (0 lets x264 choose, faster).
    """
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = fps
        stream.options = {"crf": str(crf), "preset": preset, "threads": str(threads)}
        for pixels in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _palette_image() -> Image.Image:
    """A 96x64 palette ('P') image with a transparent colour, to exercise mode conversion."""
    image = Image.new("P", (96, 64), 0)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 200, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, 8, 40, 56), fill=1)
    draw.ellipse((48, 8, 88, 48), fill=2)
    draw.rectangle((10, 50, 90, 60), fill=3)
    image.info["transparency"] = 0
    return image


def regenerate(directory: str) -> list[str]:
    """Write every sample file into ``directory``; return the paths written."""
    os.makedirs(directory, exist_ok=True)
    scene = draw_scene(*VIDEO_SIZE)
    written = []

    path = os.path.join(directory, "scene.jpg")
    scene.save(path, quality=88)
    written.append(path)

    # Stored sideways (rotated 90 degrees counter-clockwise) with orientation 6, as a phone
    # held upright writes it: decoded naively it is 240x320 lying on its side, upright it is
    # 320x240 again. A red marker in the upright top-left corner shows the direction.
    marked = scene.copy()
    ImageDraw.Draw(marked).rectangle((0, 0, 39, 29), fill=(255, 0, 0))
    stored = marked.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    path = os.path.join(directory, "scene_exif_rotated.jpg")
    stored.save(path, quality=88, exif=exif)
    written.append(path)

    path = os.path.join(directory, "gradient_gray.png")
    ramp = np.tile(np.linspace(0, 255, 128).round().astype(np.uint8), (48, 1))
    Image.fromarray(ramp, mode="L").save(path, optimize=True)
    written.append(path)

    path = os.path.join(directory, "shapes_palette.png")
    image = _palette_image()
    image.save(path, transparency=0, optimize=True)
    written.append(path)

    path = os.path.join(directory, "bouncing_ball.mp4")
    frames = (draw_frame(i, scene) for i in range(VIDEO_FRAMES))
    write_video(path, frames, VIDEO_FPS, *VIDEO_SIZE)
    written.append(path)
    return written
