"""The `torchvision` source: a class of torchvision.datasets, downloaded or read from disk, in its own train/held-out
split. Asked for labels, an item is (image, class index): the dataset's own target.
"""

import inspect

import numpy as np
import torch
import torchvision
from torch import Tensor
from torch.utils.data import Dataset

from genkit.data.config import DataConfig, image_channels
from genkit.data.datasets import Labelled, WithoutLabels
from genkit.data.transforms import _image_transform
from genkit.errors import GenkitError

# The held-out split's name for datasets that take `split=`; those not listed call it "test".
TORCHVISION_VAL_SPLITS = {"CelebA": "valid", "Flowers102": "val", "ImageNet": "val", "Places365": "val"}


def _torchvision(config: DataConfig, split: str, labels: bool = False) -> WithoutLabels | Labelled:
    """torchvision.datasets.<name> at data.path (default data/<name>), its own train/held-out split; labels dropped,
    or with `labels` kept as the dataset's own targets (`_torchvision_labels`).
    """
    dataset = _torchvision_dataset(config, split)
    images = WithoutLabels(dataset)
    return Labelled(images, _torchvision_labels(dataset, config.name)) if labels else images


def _torchvision_dataset(config: DataConfig, split: str) -> Dataset:
    """torchvision.datasets.<name> of `split`, its images transformed as the model reads them; items (image, target)."""
    name = config.name
    dataset_class = getattr(torchvision.datasets, name, None) if name else None
    if not (isinstance(dataset_class, type) and issubclass(dataset_class, Dataset)):
        raise GenkitError(
            f"unknown torchvision dataset {name!r}; set data.name to a class of torchvision.datasets, "
            "e.g. CIFAR10, MNIST, FashionMNIST, CelebA, STL10"
        )
    parameters = inspect.signature(dataset_class).parameters
    if "train" in parameters:
        arguments = {"train": split == "train"}
    elif "split" in parameters:
        arguments = {"split": "train" if split == "train" else TORCHVISION_VAL_SPLITS.get(name, "test")}
    else:
        raise GenkitError(
            f"torchvision dataset {name} takes neither train= nor split=; save its images to a folder "
            "and use data.source=folder"
        )
    if "download" in parameters:
        arguments["download"] = config.download
    root = config.path or f"data/{name}"
    # Converting to the mode image_channels promises keeps data and model in agreement for any dataset.
    mode = "L" if image_channels(config) == 1 else "RGB"
    try:
        return dataset_class(root, transform=_image_transform(config, split, mode), **arguments)
    except (RuntimeError, OSError) as error:  # a failed download (URLError is an OSError) or missing files
        raise GenkitError(
            f"could not load torchvision dataset {name} into {root}: {error}. Download it on a machine with network "
            "access (or place the files there) and set data.path, or use data.source=crops for the embedded data"
        ) from None


def _class_index(target: object) -> int | None:
    """`target` as an integer, or None when it is something else (attributes, boxes, a mask, a caption, ...)."""
    array = np.asarray(target)  # a Python or NumPy integer, or a 0-d integer tensor, is a 0-d integer array
    return int(array) if array.ndim == 0 and array.dtype.kind in "iu" else None


def _no_class_labels(name: str, index: int, target: object) -> GenkitError:
    """The error for item `index` of torchvision dataset `name` whose `target` is no class index."""
    what = f"target {target}" if isinstance(target, int) else f"a target of type {type(target).__name__}"
    return GenkitError(
        f"data.name={name} has no class labels: item {index} gives {what}, not a class index 0, 1, ...; "
        "use a class-labelled dataset (e.g. CIFAR10, MNIST, STL10) for a class-conditional model"
    )


def _first_class_index(dataset: Dataset, name: str) -> int:
    """The class index item 0 of `dataset` gives; a GenkitError when it gives none (e.g. CelebA's attributes)."""
    target = dataset[0][1] if len(dataset) else 0
    index = _class_index(target)
    if index is None or index < 0:
        raise _no_class_labels(name, 0, target if index is None else index)
    return index


def _torchvision_labels(dataset: Dataset, name: str) -> Tensor:
    """The class index of every item of a torchvision `dataset`: the targets its items give.

    Read from the list the dataset keeps of them (`targets`, `labels` or `_labels`, as torchvision's classes name it)
    when one is a list of indices as long as the dataset that agrees with item 0, so no image is decoded beyond item 0;
    else from every item (QMNIST's `targets`, for one, are rows of 8 numbers of which an item gives the first).
    """
    first = _first_class_index(dataset, name)
    for attribute in ("targets", "labels", "_labels"):
        try:
            listed = np.asarray(getattr(dataset, attribute, None))
        except (TypeError, ValueError):  # a ragged list, which holds no class indices
            continue
        if listed.shape == (len(dataset),) and listed.dtype.kind in "iu" and int(listed[0]) == first:
            if listed.min() >= 0:
                return torch.from_numpy(listed.astype(np.int64))
            break  # unlabelled items (STL10's -1): the loop below names one
    labels = []
    for index in range(len(dataset)):
        target = dataset[index][1]
        label = _class_index(target)
        if label is None or label < 0:
            raise _no_class_labels(name, index, target if label is None else label)
        labels.append(label)
    return torch.tensor(labels, dtype=torch.long)


def _torchvision_num_classes(config: DataConfig) -> int:
    """len(classes) of the train split, or 1 + the largest target of train and val when it has no `classes`."""
    train = _torchvision_dataset(config, "train")
    classes = getattr(train, "classes", None)
    if classes is not None:
        _first_class_index(train, config.name)  # a dataset with classes but other targets has no labels either
        return len(classes)
    val = _torchvision_dataset(config, "val")
    return 1 + max(int(_torchvision_labels(dataset, config.name).max()) for dataset in (train, val))
