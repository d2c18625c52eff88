"""Media I/O: images, videos (decord, PyAV fallback), frame sampling, folder datasets, samples.

>>> from leanvision.datasets import load_video, sample_video_path
>>> video = load_video(sample_video_path(), fps=2.0)
>>> len(video), video.timestamps[:3].tolist()
(6, [0.0, 0.5, 1.0])
"""

from leanvision.datasets.errors import MediaError
from leanvision.datasets.folders import ImageFolder, VideoFolder, list_media_files
from leanvision.datasets.images import IMAGE_EXTENSIONS, load_image
from leanvision.datasets.samples import sample_image_paths, sample_video_path
from leanvision.datasets.sampling import (
    fps_indices,
    segment_indices,
    time_range_indices,
    uniform_indices,
)
from leanvision.datasets.video import VIDEO_EXTENSIONS, Video, load_video

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "ImageFolder",
    "MediaError",
    "Video",
    "VideoFolder",
    "fps_indices",
    "list_media_files",
    "load_image",
    "load_video",
    "sample_image_paths",
    "sample_video_path",
    "segment_indices",
    "time_range_indices",
    "uniform_indices",
]
