"""The `hf` source: local `datasets` stores saved to disk, as an imagefolder or as parquet, read without network."""

import socket
import sys
from dataclasses import replace
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from genkit.data import FOLDER_VAL_EVERY, DataConfig, build_dataset, data_shape
from genkit.errors import GenkitError

pytestmark = pytest.mark.usefixtures("genkit_cache", "offline")


@pytest.fixture
def offline(monkeypatch, tmp_path_factory):
    """No socket can connect, and datasets caches what it builds in a fresh folder of the test's own."""

    def refuse(*args, **kwargs):
        raise AssertionError("the hf source reached for the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets"))


def stacked(dataset):
    return torch.stack([dataset[index] for index in range(len(dataset))])


def images(count: int) -> list[Image.Image]:
    """`count` small images of distinct sizes and modes: random RGB, with a grayscale and a half-transparent one."""
    rng = np.random.default_rng(0)
    made = [Image.fromarray(rng.integers(0, 256, (10, 12 + index % 3, 3), dtype=np.uint8)) for index in range(count)]
    made[1] = Image.fromarray(rng.integers(0, 256, (14, 10), dtype=np.uint8))  # L
    made[2] = Image.fromarray(rng.integers(0, 256, (10, 10, 4), dtype=np.uint8))  # RGBA, alpha over white
    return made


def image_folder(root: Path, pictures: list[Image.Image]) -> Path:
    """`pictures` as PNG files 00.png, 01.png, ... in `root`: what the folder source reads in the same order."""
    root.mkdir()
    for index, picture in enumerate(pictures):
        picture.save(root / f"{index:02d}.png")
    return root


def store(pictures: list[Image.Image], column: str = "image") -> datasets.Dataset:
    return datasets.Dataset.from_dict({column: pictures}, features=datasets.Features({column: datasets.Image()}))


def save_layout(layout: str, tmp_path: Path, pictures: list[Image.Image]) -> Path:
    """`pictures` as a store of `layout`, in their order; returns the store's folder."""
    root = tmp_path / layout
    if layout == "saved":
        store(pictures).save_to_disk(root)
    elif layout == "imagefolder":
        image_folder(root, pictures)
    else:
        root.mkdir()
        store(pictures).to_parquet(root / "data.parquet")
    return root


@pytest.mark.parametrize("layout", ["saved", "imagefolder", "parquet"])
def test_every_layout_gives_the_folder_sources_pixels_and_split(tmp_path, layout):
    pictures = images(FOLDER_VAL_EVERY + 1)
    folder = DataConfig(source="folder", path=str(image_folder(tmp_path / "pngs", pictures)), image_size=8)
    config = DataConfig(source="hf", path=str(save_layout(layout, tmp_path, pictures)), image_size=8)
    assert data_shape(config) == (3, 8, 8)
    for split, count in [("train", FOLDER_VAL_EVERY - 1), ("val", 2)]:  # rows 0 and 20 are val
        items = stacked(build_dataset(config, split))
        assert items.shape == (count, 3, 8, 8)
        assert torch.equal(items, stacked(build_dataset(folder, split)))


def test_a_stores_own_validation_split_is_val(tmp_path):
    pictures = images(7)
    datasets.DatasetDict(train=store(pictures[:5]), test=store(pictures[5:])).save_to_disk(tmp_path / "saved")
    config = DataConfig(source="hf", path=str(tmp_path / "saved"), image_size=8)
    train, val = stacked(build_dataset(config, "train")), stacked(build_dataset(config, "val"))
    assert (len(train), len(val)) == (5, 2)
    assert not any(torch.equal(image, other) for image in val for other in train)
    # A folder of the two test images holds the first out for val and trains on the second.
    folder = DataConfig(source="folder", path=str(image_folder(tmp_path / "pngs", pictures[5:])), image_size=8)
    assert torch.equal(val, torch.cat([stacked(build_dataset(folder, "val")), stacked(build_dataset(folder, "train"))]))


def test_the_image_column_is_configurable_and_checked(tmp_path):
    pictures = images(3)
    rows = store(pictures, column="pixels").add_column("label", [1, 2, 3])
    rows.save_to_disk(tmp_path / "saved")
    config = DataConfig(source="hf", path=str(tmp_path / "saved"), image_size=8, image_column="pixels")
    assert build_dataset(config, "train")[0].shape == (3, 8, 8)
    with pytest.raises(GenkitError, match=r"no column 'image' \(it has pixels, label\).*data\.image_column"):
        build_dataset(DataConfig(source="hf", path=str(tmp_path / "saved")), "train")
    with pytest.raises(GenkitError, match=r"column 'label' .* holds .*int64.*not images.*data\.image_column"):
        build_dataset(DataConfig(source="hf", path=str(tmp_path / "saved"), image_column="label"), "train")


def test_missing_data_store_or_library_is_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(GenkitError, match="data.source=hf needs data.path"):
        build_dataset(DataConfig(source="hf"), "train")
    with pytest.raises(GenkitError, match="nowhere does not exist or is not a folder.*data.path"):
        build_dataset(DataConfig(source="hf", path=str(tmp_path / "nowhere")), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenkitError, match="could not load a dataset from .*empty.*data.path"):
        build_dataset(DataConfig(source="hf", path=str(tmp_path / "empty")), "train")
    datasets.DatasetDict(test=store(images(3))).save_to_disk(tmp_path / "no_train")
    with pytest.raises(GenkitError, match="has splits test but none named train"):
        build_dataset(DataConfig(source="hf", path=str(tmp_path / "no_train")), "val")
    store(images(3)[:1]).save_to_disk(tmp_path / "one")
    with pytest.raises(GenkitError, match=r"the train split of .*one is empty.*every 20th row"):
        build_dataset(DataConfig(source="hf", path=str(tmp_path / "one")), "train")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(
        GenkitError, match=r"^data.source=hf needs the datasets library; pip install 'velocity-genkit\[hf\]'$"
    ):
        build_dataset(DataConfig(source="hf", path=str(tmp_path / "one")), "train")


def test_the_train_split_is_augmented_and_val_is_not(tmp_path):
    root = save_layout("saved", tmp_path, images(FOLDER_VAL_EVERY + 1))
    plain = DataConfig(source="hf", path=str(root), image_size=8)
    original = build_dataset(plain, "train")[3]
    flipping = build_dataset(replace(plain, flip=True), "train")
    cropping = build_dataset(replace(plain, random_resized_crop=True, crop_scale=[0.3, 0.6]), "train")
    torch.manual_seed(0)
    flips = [flipping[3] for _ in range(16)]
    mirrored = [torch.equal(draw, original.flip(-1)) for draw in flips]
    assert all(is_mirror or torch.equal(draw, original) for draw, is_mirror in zip(flips, mirrored, strict=True))
    assert any(mirrored) and not all(mirrored)
    crops = [cropping[3] for _ in range(4)]
    assert all(draw.shape == (3, 8, 8) and draw.min() >= -1 and draw.max() <= 1 for draw in crops)
    assert not any(torch.equal(draw, original) for draw in crops)
    both = replace(plain, flip=True, random_resized_crop=True)
    assert torch.equal(stacked(build_dataset(both, "val")), stacked(build_dataset(plain, "val")))
