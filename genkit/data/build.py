"""One dataset of any source and split (`build_dataset`), and the first items of the val split as one tensor."""

import torch
from torch import Tensor
from torch.utils.data import Dataset

from genkit.data.config import SPLITS, DataConfig
from genkit.data.datasets import Points
from genkit.data.folder import _folder
from genkit.data.hub import _hf, _torchvision
from genkit.data.shipped import _crops, _mnist5k
from genkit.errors import GenkitError
from genkit.toys import TOYS


def build_dataset(config: DataConfig, split: str) -> Dataset:
    """The `split` ("train" or "val") of the data `config` names; raises GenkitError on bad or missing data."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if config.source in TOYS:
        return _toy(config, split)
    if config.source == "crops":
        return _crops(config, split)
    if config.source == "mnist5k":
        return _mnist5k(config, split)
    if config.source == "folder":
        return _folder(config, split)
    if config.source == "hf":
        return _hf(config, split)
    return _torchvision(config, split)


def _toy(config: DataConfig, split: str) -> Points:
    """`num_train`/`num_val` draws of the toy: train with generator seed 2 * seed, val with 2 * seed + 1.

    Distinct generator seeds make the splits independent draws, and no seed's val equals another seed's train.
    """
    count = config.num_train if split == "train" else config.num_val
    generator = torch.Generator().manual_seed(2 * config.seed + (split == "val"))
    return Points(TOYS[config.source](count, generator))


def validation_samples(config: DataConfig, count: int) -> Tensor:
    """The first `count` validation samples: the fixed reference set every evaluation of a run sees."""
    dataset = build_dataset(config, "val")
    if len(dataset) == 0:
        raise GenkitError("the validation split is empty; add data or pick another data.source")
    return torch.stack([dataset[i] for i in range(min(count, len(dataset)))])
