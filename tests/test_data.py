"""Datasets: the embedded crops and digits, image folders with bad files, torchvision without a network, 2-D toys.

Augmentations of the train split on every image source, and augmented data through a loop's worker processes.
"""

import json
import urllib.error
from dataclasses import replace

import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset

from genkit.config import load_config
from genkit.data import SOURCES, DataConfig, build_dataset, data_shape, image_channels
from genkit.data.shipped import TRAIN_PHOTOS, VAL_PHOTOS, _photo
from genkit.errors import GenkitError
from genkit.nets import TimeMLP
from genkit.toys import TOYS
from genkit.train.config import TrainConfig
from genkit.train.loop import Loop

pytestmark = pytest.mark.usefixtures("genkit_cache")


def stacked(dataset):
    return torch.stack([dataset[index] for index in range(len(dataset))])


def has_window(photo, crop):
    """Whether some window of `photo` [3, H, W] equals `crop` [3, s, s] exactly."""
    size = crop.shape[-1]
    height, width = photo.shape[1] - size + 1, photo.shape[2] - size + 1
    # Five probe pixels narrow the candidates cheaply; the survivors are compared in full.
    candidates = torch.ones(height, width, dtype=torch.bool)
    for dy, dx in [(0, 0), (0, size - 1), (size - 1, 0), (size - 1, size - 1), (size // 2, size // 2)]:
        candidates &= (photo[:, dy : dy + height, dx : dx + width] == crop[:, dy, dx, None, None]).all(0)
    return any(
        torch.equal(photo[:, top : top + size, left : left + size], crop) for top, left in candidates.nonzero().tolist()
    )


def test_crops_shapes_range_and_determinism():
    config = DataConfig(num_train=256, num_val=64)
    train, val = build_dataset(config, "train"), build_dataset(config, "val")
    assert (len(train), len(val)) == (256, 64)
    images = stacked(train)
    assert images.shape == (256, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.1
    assert torch.equal(images, stacked(build_dataset(config, "train")))
    assert not torch.equal(images, stacked(build_dataset(DataConfig(num_train=256, seed=1), "train")))
    assert stacked(val).shape == (64, 3, 32, 32)


def test_crops_come_from_their_split_photos_only():
    assert not set(TRAIN_PHOTOS) & set(VAL_PHOTOS)
    config = DataConfig(num_train=8, num_val=8, image_size=16)
    for split, own, other in [("val", VAL_PHOTOS, TRAIN_PHOTOS), ("train", TRAIN_PHOTOS, VAL_PHOTOS)]:
        crops = build_dataset(config, split).images
        assert crops.shape == (8, 3, 16, 16)
        for crop in crops:
            assert any(has_window(_photo(name), crop) for name in own)
            assert not any(has_window(_photo(name), crop) for name in other)


def test_crops_larger_than_the_photos_is_an_error():
    with pytest.raises(GenkitError, match="image_size=400"):
        build_dataset(DataConfig(image_size=400), "val")


def test_mnist5k_split_channels_and_range():
    config = DataConfig(source="mnist5k")
    assert image_channels(config) == 1
    train, val = build_dataset(config, "train"), build_dataset(config, "val")
    assert (len(train), len(val)) == (4500, 500)
    digits = stacked(val)
    assert digits.shape == (500, 1, 32, 32)
    assert digits.min() == -1 and digits.max() <= 1 and digits.max() > 0.9
    # Black background: the image borders are -1 and most pixels are.
    assert (digits[:, :, 0] == -1).all() and (digits == -1).float().mean() > 0.5
    assert not any(torch.equal(digits[0], image) for image in stacked(train))


def save_images(root):
    """Four readable images in nested folders, one corrupt one and a text file; returns the solid-colour path."""
    (root / "a" / "deep").mkdir(parents=True)
    (root / "b").mkdir()
    generator = torch.Generator().manual_seed(0)
    for path, size in [(root / "a" / "deep" / "two.JPG", (40, 30)), (root / "a" / "one.png", (30, 50))]:
        pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(path)
    Image.new("L", (20, 20), 200).save(root / "b" / "three.jpeg")
    (root / "bad.png").write_bytes(torch.randint(0, 256, (300,), generator=generator, dtype=torch.uint8).numpy())
    (root / "notes.txt").write_text("not an image")
    solid = root / "solid.png"
    Image.new("RGB", (48, 36), (255, 0, 128)).save(solid)
    return solid


def test_folder_skips_a_corrupt_image_with_one_warning(tmp_path):
    solid = save_images(tmp_path)
    config = DataConfig(source="folder", path=str(tmp_path), image_size=16)
    # Sorted: a/deep/two.JPG (val), a/one.png, b/three.jpeg, bad.png, solid.png.
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) of 4 .*bad\.png") as caught:
        train = build_dataset(config, "train")
    assert len(caught) == 1
    assert [path.name for path in train.paths] == ["one.png", "three.jpeg", "solid.png"]
    images = stacked(train)
    assert images.shape == (3, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    colour = train[train.paths.index(solid)]
    assert torch.allclose(
        colour, torch.tensor([1.0, -1.0, 128 / 127.5 - 1])[:, None, None].expand(3, 16, 16), atol=1e-6
    )
    assert torch.allclose(train[1], torch.full((3, 16, 16), 200 / 127.5 - 1), atol=0.02)  # grey JPEG -> RGB
    val = build_dataset(config, "val")
    assert [path.name for path in val.paths] == ["two.JPG"] and val[0].shape == (3, 16, 16)


def test_folder_strict_names_the_corrupt_image(tmp_path):
    save_images(tmp_path)
    with pytest.raises(GenkitError, match=r"bad\.png.*data\.strict=false"):
        build_dataset(DataConfig(source="folder", path=str(tmp_path), strict=True), "train")


def test_folder_missing_empty_or_all_corrupt_is_an_error(tmp_path):
    with pytest.raises(GenkitError, match="does not exist"):
        build_dataset(DataConfig(source="folder", path=str(tmp_path / "nowhere")), "train")
    with pytest.raises(GenkitError, match="needs data.path"):
        build_dataset(DataConfig(source="folder"), "train")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(GenkitError, match="no images"):
        build_dataset(DataConfig(source="folder", path=str(tmp_path)), "train")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(GenkitError, match=r"none of the 1 val images .*bad\.png"):
        build_dataset(DataConfig(source="folder", path=str(tmp_path)), "val")
    with pytest.raises(GenkitError, match="train split .* is empty"):
        build_dataset(DataConfig(source="folder", path=str(tmp_path)), "train")


@pytest.mark.parametrize("error", [RuntimeError("Error downloading"), urllib.error.URLError("no network")])
def test_torchvision_download_failure_is_one_clear_error(monkeypatch, tmp_path, error):
    def fail(self):
        raise error

    # The real CIFAR10 constructor runs, but its download fails at once, as it does offline.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", fail)
    root = tmp_path / "cifar"
    config = DataConfig(source="torchvision", name="CIFAR10", path=str(root))
    with pytest.raises(GenkitError) as caught:
        build_dataset(config, "train")
    message = str(caught.value)
    assert f"could not load torchvision dataset CIFAR10 into {root}" in message
    assert str(error) in message and "data.source=crops" in message and "data.path" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_torchvision_missing_files_without_download(tmp_path):
    config = DataConfig(source="torchvision", name="MNIST", path=str(tmp_path), download=False)
    with pytest.raises(GenkitError, match="could not load torchvision dataset MNIST.*Dataset not found"):
        build_dataset(config, "val")


def test_torchvision_unknown_name():
    for name in ["CIFAR11", "utils", None]:
        with pytest.raises(GenkitError, match="unknown torchvision dataset.*CIFAR10"):
            build_dataset(DataConfig(source="torchvision", name=name), "train")


class FakeDataset(Dataset):
    """Records how it was built; gives a 40x50 red (or grey) PIL image with a label, like torchvision's sets."""

    calls = []

    def __init__(self, root, transform=None, download=False, **split):
        self.calls.append((root, split, download))
        self.transform = transform

    def __len__(self):
        return 2

    def __getitem__(self, index):
        return self.transform(Image.new("RGB", (40, 50), (255, 0, 0))), 7


class FakeCelebA(FakeDataset):
    def __init__(self, root, split="train", transform=None, download=False):
        super().__init__(root, transform, download, split=split)


class FakeMNIST(FakeDataset):
    def __init__(self, root, train=True, transform=None, download=False):
        super().__init__(root, transform, download, train=train)


def test_torchvision_split_arguments_transform_and_labels(monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CelebA", FakeCelebA)
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    FakeDataset.calls.clear()
    celeba = build_dataset(DataConfig(source="torchvision", name="CelebA", image_size=8), "val")
    assert FakeDataset.calls[-1] == ("data/CelebA", {"split": "valid"}, True)
    assert len(celeba) == 2 and torch.equal(celeba[0], torch.tensor([1.0, -1, -1])[:, None, None].expand(3, 8, 8))
    config = DataConfig(source="torchvision", name="MNIST", image_size=8, path="elsewhere", download=False)
    assert image_channels(config) == 1
    mnist = build_dataset(config, "train")
    assert FakeDataset.calls[-1] == ("elsewhere", {"train": True}, False)
    assert mnist[1].shape == (1, 8, 8) and mnist[1].min() > -1 and mnist[1].max() < 1  # red -> grey


def test_config_validation_and_channels():
    with pytest.raises(GenkitError, match="unknown data.source 'imagenet'.*" + ", ".join(SOURCES)):
        DataConfig(source="imagenet")
    with pytest.raises(GenkitError, match="image_size"):
        DataConfig(image_size=0)
    assert image_channels(DataConfig()) == 3
    assert image_channels(DataConfig(source="folder", path="x")) == 3
    assert image_channels(DataConfig(source="torchvision", name="CIFAR10")) == 3


@pytest.mark.parametrize("source", list(TOYS))
def test_toy_sources_are_seeded_independent_point_sets(source):
    config = DataConfig(source=source, num_train=300, num_val=100, seed=3)
    assert data_shape(config) == (2,)
    train, val = build_dataset(config, "train"), build_dataset(config, "val")
    assert (len(train), len(val)) == (300, 100)
    points = stacked(train)
    assert points.shape == (300, 2) and points.dtype == torch.float32 and train[0].shape == (2,)
    # Train is the toy's draw from generator seed 2 * seed, val from 2 * seed + 1: reproducible, and not the same draw.
    assert torch.equal(points, TOYS[source](300, torch.Generator().manual_seed(6)))
    assert torch.equal(stacked(val), TOYS[source](100, torch.Generator().manual_seed(7)))
    assert torch.equal(points, stacked(build_dataset(config, "train")))
    assert not torch.equal(stacked(val), points[:100])
    assert not torch.equal(points, stacked(build_dataset(DataConfig(source=source, num_train=300, seed=4), "train")))


def test_data_shape_and_channels_of_toys_and_images():
    assert data_shape(DataConfig()) == (3, 32, 32)
    assert data_shape(DataConfig(source="mnist5k", image_size=28)) == (1, 28, 28)
    assert data_shape(DataConfig(source="torchvision", name="FashionMNIST", image_size=16)) == (1, 16, 16)
    assert data_shape(DataConfig(source="folder", path="x", image_size=64)) == (3, 64, 64)
    with pytest.raises(GenkitError, match="data.source=moons gives 2-D points, not images"):
        image_channels(DataConfig(source="moons"))


class FakeCIFAR10(FakeDataset):
    """A 40x50 image, red on the left and blue on the right, so its mirror and its crops differ from it."""

    def __init__(self, root, train=True, transform=None, download=False):
        super().__init__(root, transform, download, train=train)

    def __getitem__(self, index):
        image = Image.new("RGB", (40, 50), (0, 0, 255))
        image.paste((255, 0, 0), (0, 0, 15, 50))
        return self.transform(image), 3


AUGMENTED_SOURCES = ["crops", "mnist5k", "folder", "torchvision"]


@pytest.fixture
def image_source(request, tmp_path, monkeypatch):
    """An unaugmented DataConfig of the image source `request.param` at image_size 16, offline."""
    source = request.param
    if source == "folder":
        for index in range(3):
            pixels = torch.randint(0, 256, (30, 40, 3), generator=torch.Generator().manual_seed(index))
            Image.fromarray(pixels.to(torch.uint8).numpy()).save(tmp_path / f"{index}.png")
        return DataConfig(source=source, path=str(tmp_path), image_size=16)
    if source == "torchvision":
        monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
        return DataConfig(source=source, name="CIFAR10", image_size=16)
    return DataConfig(source=source, image_size=16, num_train=4, num_val=4)


@pytest.mark.parametrize("image_source", AUGMENTED_SOURCES, indirect=True)
def test_a_flipped_item_is_the_item_or_its_mirror_and_both_occur(image_source):
    original = build_dataset(image_source, "train")[1]
    flipping = build_dataset(replace(image_source, flip=True), "train")
    torch.manual_seed(0)
    draws = [flipping[1] for _ in range(16)]
    mirrored = [torch.equal(draw, original.flip(-1)) for draw in draws]
    assert all(is_mirror or torch.equal(draw, original) for draw, is_mirror in zip(draws, mirrored, strict=True))
    assert any(mirrored) and not all(mirrored)


@pytest.mark.parametrize("image_source", AUGMENTED_SOURCES, indirect=True)
def test_a_random_resized_crop_keeps_shape_and_range_and_moves(image_source):
    original = build_dataset(image_source, "train")[1]
    cropping = build_dataset(replace(image_source, random_resized_crop=True, crop_scale=[0.25, 0.5]), "train")
    torch.manual_seed(0)
    draws = [cropping[1] for _ in range(8)]
    assert all(draw.shape == data_shape(image_source) and draw.min() >= -1 and draw.max() <= 1 for draw in draws)
    assert not any(torch.equal(draw, original) for draw in draws)
    assert not all(torch.equal(draw, draws[0]) for draw in draws)


@pytest.mark.parametrize("image_source", AUGMENTED_SOURCES, indirect=True)
def test_the_val_split_is_never_augmented(image_source):
    augmented = replace(image_source, flip=True, random_resized_crop=True, crop_scale=[0.1, 0.2])
    expected = stacked(build_dataset(image_source, "val"))
    torch.manual_seed(0)
    for _ in range(3):
        assert torch.equal(stacked(build_dataset(augmented, "val")), expected)


@pytest.mark.parametrize("scale", [[0.0, 1.0], [0.9, 0.5], [0.5, 1.5], [0.5]])
def test_a_bad_crop_scale_is_one_clear_error(scale):
    with pytest.raises(GenkitError, match=r"data\.crop_scale=.* must be \[low, high\] .* 0 < low <= high <= 1"):
        DataConfig(crop_scale=scale)


def test_a_bad_crop_scale_in_a_config_file_names_the_key(tmp_path):
    (tmp_path / "run.yaml").write_text("task: tokenizer\n")
    with pytest.raises(GenkitError, match=r"data\.crop_scale=\[0\.9, 0\.5\] must be \[low, high\]"):
        load_config(tmp_path / "run.yaml", ["data.crop_scale=[0.9,0.5]"])
    with pytest.raises(GenkitError, match=r"data\.crop_scale=\[0\.0, 1\.0\] is out of range"):
        load_config(tmp_path / "run.yaml", ["data.crop_scale=[0,1]"])


class MeanTrainer:
    """Fits a tiny MLP to the mean pixel of each image, keeping the batches it was given."""

    ema_model = None

    def __init__(self):
        self.models = {"mean": TimeMLP(1, hidden=4, depth=1)}
        self.optimizers = {"mean": torch.optim.SGD(self.models["mean"].parameters(), lr=0.1)}
        self.batches = []

    def optimizer_steps(self, steps):
        return {"mean": steps}

    def train_step(self, batch, context):
        self.batches.append(batch)
        mean = batch.mean(dim=(1, 2, 3))[:, None]
        loss = (self.models["mean"](mean, torch.zeros(len(batch))) - mean).pow(2).mean()
        context.update("mean", loss)
        return {"loss": loss}

    def evaluate(self, context, step):
        return {}

    def export(self, context, folder):
        pass


def test_augmented_crops_train_through_two_persistent_workers(tmp_path):
    config = DataConfig(num_train=8, num_val=4, flip=True, random_resized_crop=True)
    train = TrainConfig(steps=4, batch_size=4, log_every=1, eval_every=100, tracker="none", num_workers=2)
    trainer = MeanTrainer()
    Loop(train, tmp_path / "run", {"train": {}}).run(trainer, build_dataset(config, "train"))
    assert [batch.shape for batch in trainer.batches] == [(4, 3, 32, 32)] * 4
    assert all(batch.min() >= -1 and batch.max() <= 1 for batch in trainer.batches)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "loss" in record] == [1, 2, 3, 4]
