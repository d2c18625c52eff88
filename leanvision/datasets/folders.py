"""``ImageFolder`` and ``VideoFolder``: torch datasets over a directory of media files.

Construction only lists file names; decoding happens in ``__getitem__``, so with a
``DataLoader(num_workers=N)`` every worker decodes its own items in parallel.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from torch.utils.data import Dataset

from leanvision.datasets.images import IMAGE_EXTENSIONS, load_image
from leanvision.datasets.video import BACKENDS, VIDEO_EXTENSIONS, load_video


def list_media_files(root: str | os.PathLike, extensions: Iterable[str]) -> list[str]:
    """Files under ``root`` (recursively) whose extension is in ``extensions``
    (case-insensitive), sorted by their path relative to ``root``; hidden entries skipped.

    >>> list_media_files(".", (".nothing-has-this",))
    []
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"root={root!r} is not a directory")
    wanted = tuple(extension.lower() for extension in extensions)
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        for name in files:
            if not name.startswith(".") and name.lower().endswith(wanted):
                found.append(os.path.relpath(os.path.join(directory, name), root))
    return [os.path.join(root, relative) for relative in sorted(found)]


class _MediaFolder(Dataset):
    kind = "media"

    def __init__(self, root: str | os.PathLike, extensions: Iterable[str]):
        self.root = os.fspath(root)
        self.extensions = tuple(extensions)
        if not self.extensions:
            raise ValueError("extensions is empty; give at least one, e.g. ('.jpg',)")
        self.files = list_media_files(self.root, self.extensions)
        if not self.files:
            raise ValueError(
                f"root={self.root!r} holds no {self.kind} files with extensions "
                f"{list(self.extensions)}"
            )
        # Labels as in torchvision's ImageFolder: the first directory level under root is
        # the class; files directly in root get label -1.
        tops = {self._top_directory(path) for path in self.files}
        self.classes: list[str] = sorted(top for top in tops if top is not None)
        self.class_to_index = {name: index for index, name in enumerate(self.classes)}

    def _top_directory(self, path: str) -> str | None:
        parts = os.path.relpath(path, self.root).split(os.sep)
        return parts[0] if len(parts) > 1 else None

    def label(self, index: int) -> int:
        top = self._top_directory(self.files[index])
        return -1 if top is None else self.class_to_index[top]

    def __len__(self) -> int:
        return len(self.files)

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} files")
        return index % len(self)


class ImageFolder(_MediaFolder):
    """Images under ``root``; item ``i`` is ``{"image", "label", "path"}``.

    ``image`` is ``transform(load_image(path))`` (an upright RGB ``PIL.Image`` when there is
    no transform; give a transform that returns tensors to batch with a ``DataLoader``).
    ``label`` indexes :attr:`classes`, the sorted first-level subdirectories (-1 for files
    directly in ``root``). An empty folder raises ``ValueError``.

    >>> from leanvision.datasets.samples import SAMPLE_DIR
    >>> len(ImageFolder(SAMPLE_DIR))
    4
    """

    kind = "image"

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Any], Any] | None = None,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
    ):
        super().__init__(root, extensions)
        self.transform = transform

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        image = load_image(self.files[index])
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": self.label(index), "path": self.files[index]}


class VideoFolder(_MediaFolder):
    """Videos under ``root``; item ``i`` is ``{"frames", "timestamps", "label", "path"}``.

    ``frames`` is ``transform(video.frames)`` for ``num_frames`` frames sampled uniformly
    (uint8 numpy (T, H, W, 3) without a transform); ``timestamps`` are their times in
    seconds. Labels work as in :class:`ImageFolder`. An empty folder raises ``ValueError``.

    >>> from leanvision.datasets.samples import SAMPLE_DIR
    >>> VideoFolder(SAMPLE_DIR, num_frames=4)[0]["frames"].shape
    (4, 240, 320, 3)
    """

    kind = "video"

    def __init__(
        self,
        root: str | os.PathLike,
        num_frames: int,
        transform: Callable[[Any], Any] | None = None,
        extensions: Iterable[str] = VIDEO_EXTENSIONS,
        backend: str = "auto",
    ):
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames={num_frames!r} is out of range; allowed: ints >= 1")
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not allowed; choose one of {list(BACKENDS)}")
        super().__init__(root, extensions)
        self.num_frames = num_frames
        self.transform = transform
        self.backend = backend

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        video = load_video(self.files[index], num_frames=self.num_frames, backend=self.backend)
        frames = video.frames if self.transform is None else self.transform(video.frames)
        return {
            "frames": frames,
            "timestamps": video.timestamps,
            "label": self.label(index),
            "path": self.files[index],
        }
