"""Benchmark ``decode``: video decode throughput (decord vs PyAV) and image decode + resize.

Video: ``load_video`` on the sample clip at its native 320x240 and on a 4x upscaled
(1280x960) H.264 re-encode written to a temporary directory at setup; once decoding every
frame (sequential) and once 8 uniformly spaced frames (seek-bound). PyAV is each group's
baseline. Image: a 1280x960 JPEG (the sample scene, upscaled) decoded and resized to
224x224 and 336x336 by plain PIL (baseline), ``load_image``, PIL's JPEG draft mode and
torchvision's ``decode_jpeg``. ``options.quick`` decodes only the first second and fewer
images.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from leanvision.bench.registry import BenchOptions, Case, register_benchmark
from leanvision.core.errors import MissingDependencyError
from leanvision.datasets.video_backends import import_optional

if import_optional("av") is None:  # an ImportError here lists the suite as unavailable
    raise MissingDependencyError("av", "video", "the decode benchmark")

from PIL import Image  # noqa: E402

from leanvision.datasets import load_image, load_video, sample_image_paths  # noqa: E402
from leanvision.datasets.samples import sample_video_path  # noqa: E402
from leanvision.datasets.samples.generate import write_video  # noqa: E402

UPSCALE = 4
IMAGE_SIZES = (224, 336)


def _scratch_directory() -> str:
    # Cases are timed after the suite's generator is exhausted, so a `with TemporaryDirectory`
    # here would delete the files before they are read; remove them at interpreter exit.
    directory = tempfile.mkdtemp(prefix="leanvision-bench-decode-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def _upscaled_video(directory: str, seconds: float) -> str:
    source = load_video(sample_video_path(), end=seconds)
    height, width = source.frames.shape[1:3]
    size = (width * UPSCALE, height * UPSCALE)
    frames = (
        np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))
        for frame in source.frames
    )
    path = os.path.join(directory, f"sample_{size[0]}x{size[1]}.mp4")
    write_video(path, frames, round(source.fps), *size, preset="veryfast", threads=0)
    return path


def _upscaled_images(directory: str, count: int) -> list[str]:
    scene = load_image(sample_image_paths()[0])
    large = scene.resize((scene.width * UPSCALE, scene.height * UPSCALE), Image.Resampling.BICUBIC)
    paths = []
    for index in range(count):
        path = os.path.join(directory, f"scene_{index}.jpg")
        # Different qualities, so the files differ as a real folder's would.
        large.save(path, quality=85 + index % 10)
        paths.append(path)
    return paths


def _video_cases(path: str, label: str, seconds: float, sampled: int) -> Iterator[Case]:
    backends = ["pyav"] + (["decord"] if import_optional("decord") is not None else [])
    count = len(load_video(path, end=seconds, backend="pyav"))
    for backend in backends:
        yield Case(
            name=f"{backend} all frames",
            fn=lambda backend=backend: load_video(path, end=seconds, backend=backend),
            items=count,
            unit="frames",
            group=f"video {label} sequential",
            baseline=backend == "pyav",
            metrics={"resolution": label},
        )
    for backend in backends:
        yield Case(
            name=f"{backend} {sampled} uniform frames",
            fn=lambda backend=backend: load_video(
                path, num_frames=sampled, end=seconds, backend=backend
            ),
            items=sampled,
            unit="frames",
            group=f"video {label} sampled",
            baseline=backend == "pyav",
            metrics={"resolution": label},
        )


def _image_readers(size: int) -> dict[str, Callable[[str], object]]:
    box = (size, size)

    def pil(path: str):
        with Image.open(path) as image:
            return image.convert("RGB").resize(box, Image.Resampling.BICUBIC)

    def ours(path: str):
        return load_image(path).resize(box, Image.Resampling.BICUBIC)

    def draft(path: str):
        with Image.open(path) as image:
            # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale, never below the target size.
            image.draft("RGB", box)
            return image.convert("RGB").resize(box, Image.Resampling.BICUBIC)

    readers = {"PIL open+resize": pil, "load_image+resize": ours, "PIL draft+resize": draft}
    try:
        from torchvision.io import decode_jpeg, read_file
        from torchvision.transforms.v2 import functional as tvf

        readers["torchvision decode_jpeg+resize"] = lambda path: tvf.resize(
            decode_jpeg(read_file(path)), list(box), antialias=True
        )
    except (ImportError, RuntimeError, OSError):  # torchvision without its image extension
        pass
    return readers


def _image_cases(paths: list[str]) -> Iterator[Case]:
    with Image.open(paths[0]) as image:
        source = f"{image.width}x{image.height} jpeg"
    for size in IMAGE_SIZES:
        for name, read in _image_readers(size).items():
            yield Case(
                name=name,
                fn=lambda read=read: [read(path) for path in paths],
                items=len(paths),
                unit="images",
                group=f"image -> {size}px",
                baseline=name == "PIL open+resize",
                metrics={"resolution": source},
            )


@register_benchmark("decode", "video decode (decord vs PyAV) and image decode+resize throughput")
def decode_suite(options: BenchOptions) -> Iterable[Case]:
    """Cases of the ``decode`` benchmark; files are prepared before the first case is yielded."""
    directory = _scratch_directory()
    seconds = 1.0 if options.quick else 3.0
    sampled = 4 if options.quick else 8
    videos = [sample_video_path(), _upscaled_video(directory, seconds)]
    images = _upscaled_images(directory, 4 if options.quick else 8)
    for path in videos:
        height, width = load_video(path, num_frames=1).frames.shape[1:3]
        yield from _video_cases(path, f"{width}x{height}", seconds, sampled)
    yield from _image_cases(images)
