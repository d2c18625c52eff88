import os
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from leanvision.datasets import (
    ImageFolder,
    VideoFolder,
    list_media_files,
    load_image,
    sample_image_paths,
    sample_video_path,
)
from leanvision.datasets.samples.generate import frame_index_from_bar


def _to_tensor(image) -> torch.Tensor:
    # Module level, so DataLoader workers can unpickle it under any start method.
    return torch.from_numpy(np.array(image.resize((32, 24)))).permute(2, 0, 1)


def _frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames)


@pytest.fixture
def image_tree(tmp_path):
    """root/cats/{b,a}.jpg, root/dogs/c.PNG, root/top.png, root/notes.txt, root/.hidden/x.jpg"""
    scene, exif, gray, palette = sample_image_paths()
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    (tmp_path / ".hidden").mkdir()
    shutil.copy(scene, tmp_path / "cats" / "b.jpg")
    shutil.copy(exif, tmp_path / "cats" / "a.jpg")
    shutil.copy(palette, tmp_path / "dogs" / "c.PNG")
    shutil.copy(gray, tmp_path / "top.png")
    shutil.copy(scene, tmp_path / ".hidden" / "x.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_files_are_listed_sorted_recursively_filtered_and_without_hidden(image_tree):
    files = [
        os.path.relpath(path, image_tree) for path in list_media_files(image_tree, (".jpg", ".png"))
    ]
    assert files == [
        os.path.join("cats", "a.jpg"),
        os.path.join("cats", "b.jpg"),
        os.path.join("dogs", "c.PNG"),
        "top.png",
    ]


def test_image_folder_items_decode_lazily_with_labels(image_tree):
    dataset = ImageFolder(image_tree)
    assert len(dataset) == 4
    assert dataset.classes == ["cats", "dogs"]
    assert [dataset.label(i) for i in range(4)] == [0, 0, 1, -1]
    first = dataset[0]
    assert first["path"].endswith("a.jpg") and first["label"] == 0
    assert first["image"].mode == "RGB" and first["image"].size == (320, 240)  # EXIF applied
    assert dataset[-1]["path"].endswith("top.png")
    with pytest.raises(IndexError):
        dataset[4]


def test_image_folder_extension_filter(image_tree):
    dataset = ImageFolder(image_tree, extensions=(".png",))
    assert [os.path.basename(path) for path in dataset.files] == ["c.PNG", "top.png"]


def test_image_folder_batches_in_worker_processes(image_tree):
    dataset = ImageFolder(image_tree, transform=_to_tensor)
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    batches = list(loader)
    assert [batch["image"].shape for batch in batches] == [(2, 3, 24, 32), (2, 3, 24, 32)]
    assert torch.cat([batch["label"] for batch in batches]).tolist() == [0, 0, 1, -1]
    paths = [path for batch in batches for path in batch["path"]]
    assert paths == dataset.files
    # Decoded in workers, the same pixels as decoding here.
    expected = _to_tensor(load_image(dataset.files[1]))
    np.testing.assert_array_equal(batches[0]["image"][1].numpy(), expected.numpy())


@pytest.mark.parametrize("folder", [ImageFolder, VideoFolder])
def test_empty_folder_raises_value_error(tmp_path, folder):
    (tmp_path / "readme.txt").write_text("nothing to see")
    arguments = {"num_frames": 2} if folder is VideoFolder else {}
    with pytest.raises(ValueError, match="holds no .* files"):
        folder(tmp_path, **arguments)


def test_missing_root_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        ImageFolder(tmp_path / "nowhere")


def test_broken_image_in_a_folder_names_the_file(image_tree):
    (image_tree / "dogs" / "broken.jpg").write_text("not a jpeg")
    dataset = ImageFolder(image_tree)
    index = next(i for i, path in enumerate(dataset.files) if path.endswith("broken.jpg"))
    with pytest.raises(ValueError, match="broken.jpg"):
        dataset[index]


@pytest.fixture
def video_tree(tmp_path):
    pytest.importorskip("av")
    for name in ("walk/one.mp4", "walk/two.mp4", "run/three.mp4"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(sample_video_path(), tmp_path / name)
    return tmp_path


def test_video_folder_items_sample_num_frames(video_tree):
    dataset = VideoFolder(video_tree, num_frames=5)
    assert dataset.classes == ["run", "walk"]
    item = dataset[0]
    assert item["path"].endswith("three.mp4") and item["label"] == 0
    assert item["frames"].shape == (5, 240, 320, 3) and item["frames"].dtype == np.uint8
    assert [frame_index_from_bar(frame) for frame in item["frames"]] == [0, 22, 44, 67, 89]
    np.testing.assert_allclose(item["timestamps"], np.array([0, 22, 44, 67, 89]) / 30, atol=1e-3)


def test_video_folder_batches_in_worker_processes(video_tree):
    dataset = VideoFolder(video_tree, num_frames=3, transform=_frames_to_tensor)
    batches = list(DataLoader(dataset, batch_size=3, num_workers=2))
    assert len(batches) == 1
    batch = batches[0]
    assert batch["frames"].shape == (3, 3, 240, 320, 3) and batch["frames"].dtype == torch.uint8
    assert batch["label"].tolist() == [0, 1, 1]
    assert batch["timestamps"].shape == (3, 3)


@pytest.mark.parametrize("num_frames", [0, -1, 2.5, True])
def test_video_folder_rejects_bad_num_frames(video_tree, num_frames):
    with pytest.raises(ValueError, match="num_frames"):
        VideoFolder(video_tree, num_frames=num_frames)


def test_video_folder_rejects_unknown_backend(video_tree):
    with pytest.raises(ValueError, match="backend='cv2' is not allowed"):
        VideoFolder(video_tree, num_frames=2, backend="cv2")
