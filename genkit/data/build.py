"""One dataset of any source and split (`build_dataset`), with or without class labels; the first items of the val
split as one tensor; and the classes of a source (`num_classes`, `label_frequencies`).
"""

import torch
from torch import Tensor
from torch.utils.data import Dataset

from genkit.data.config import SPLITS, DataConfig
from genkit.data.datasets import Points
from genkit.data.folder import _folder, _folder_num_classes
from genkit.data.hub import _hf, _hf_num_classes
from genkit.data.shipped import MNIST_CLASSES, _crops, _mnist5k
from genkit.data.torchvision_datasets import _torchvision, _torchvision_num_classes
from genkit.errors import GenkitError
from genkit.toys import TOYS


def build_dataset(config: DataConfig, split: str, labels: bool = False) -> Dataset:
    """The `split` ("train" or "val") of the data `config` names; raises GenkitError on bad or missing data.

    An item is an image (or a toy's point); with `labels`, it is (image, label), label an int in [0,
    num_classes(config)), and the images, their order and the split are those without. Labels are the digit
    (mnist5k), the dataset's own target (torchvision), the class subfolder (folder) or data.label_column (hf); crops
    and the toys have none, a GenkitError.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if labels:
        _check_labelled(config)
    if config.source in TOYS:
        return _toy(config, split)
    if config.source == "crops":
        return _crops(config, split)
    if config.source == "mnist5k":
        return _mnist5k(config, split, labels)
    if config.source == "folder":
        return _folder(config, split, labels)
    if config.source == "hf":
        return _hf(config, split, labels)
    return _torchvision(config, split, labels)


def _check_labelled(config: DataConfig) -> None:
    """A GenkitError unless data.source gives class labels."""
    if config.source in TOYS or config.source == "crops":
        raise GenkitError(
            f"data.source={config.source} has no class labels; use mnist5k, torchvision, folder or hf for a "
            "class-conditional model"
        )


def num_classes(config: DataConfig) -> int:
    """How many classes the labels of `build_dataset(config, split, labels=True)` run over; GenkitError without labels.

    10 for mnist5k; torchvision: len(dataset.classes), else 1 + the largest target of train and val; folder: the class
    subfolders; hf: a ClassLabel's num_classes, else 1 + the largest value of train and val. Decodes no image beyond
    a torchvision dataset's first.
    """
    _check_labelled(config)
    if config.source == "mnist5k":
        return MNIST_CLASSES
    if config.source == "folder":
        return _folder_num_classes(config)
    if config.source == "hf":
        return _hf_num_classes(config)
    return _torchvision_num_classes(config)


def label_frequencies(config: DataConfig) -> Tensor:
    """The share of each class among the items of the train split, float64 [num_classes(config)], summing to 1.

    Counted from the labels kept beside the images, so no image is decoded (beyond the folder source's check of new
    files); a class the train split lacks has share 0.
    """
    labels = build_dataset(config, "train", labels=True).labels
    counts = torch.bincount(labels, minlength=num_classes(config)).double()
    return counts / counts.sum()


def _toy(config: DataConfig, split: str) -> Points:
    """`num_train`/`num_val` draws of the toy: train with generator seed 2 * seed, val with 2 * seed + 1.

    Distinct generator seeds make the splits independent draws, and no seed's val equals another seed's train.
    """
    count = config.num_train if split == "train" else config.num_val
    generator = torch.Generator().manual_seed(2 * config.seed + (split == "val"))
    return Points(TOYS[config.source](count, generator))


def validation_samples(config: DataConfig, count: int, labels: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The first `count` validation samples: the fixed reference set every evaluation of a run sees.

    With `labels`, (images [n, ...], labels [n] int64) of the same first n = min(count, len(val)) items.
    """
    dataset = build_dataset(config, "val", labels)
    if len(dataset) == 0:
        raise GenkitError("the validation split is empty; add data or pick another data.source")
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    if not labels:
        return torch.stack(items)
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items], dtype=torch.int64)
