"""What data a run trains on: `DataConfig` (its source, size, split seed and augmentations) and the shape of an item.

Datasets of images as float tensors in [-1, 1], CHW, one image an item (labels dropped unless asked for), and of 2-D
toy points.
"""

from dataclasses import dataclass

from genkit.config import ranged
from genkit.errors import GenkitError
from genkit.toys import TOYS

SOURCES = ("crops", "mnist5k", "folder", "torchvision", "hf", *TOYS)
SPLITS = ("train", "val")
GRAYSCALE_TORCHVISION = ("MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST", "USPS", "SEMEION", "Omniglot")


@dataclass
class DataConfig:
    source: str = "crops"  # one of SOURCES
    image_size: int = ranged(32, minimum=1)  # output side length (square)
    # folder: the image folder; torchvision: the root to download into / read from; hf: the datasets store
    path: str | None = None
    name: str | None = None  # torchvision: dataset class name, e.g. CIFAR10, MNIST, CelebA
    download: bool = True  # torchvision: allow downloading
    strict: bool = False  # folder: a corrupt/unreadable image is an error instead of a counted warning
    image_column: str = "image"  # hf: the column holding the images
    label_column: str = "label"  # hf, with labels: the column holding the class (a ClassLabel or integer column)
    flip: bool = False  # image sources, train split: mirror left-right with probability 1/2
    random_resized_crop: bool = False  # image sources, train split: a random part of the image, resized
    # random_resized_crop: [low, high], the range of the part's share of the image's area
    crop_scale: list[float] = ranged(lambda: [0.8, 1.0], above=0, maximum=1)
    num_train: int = ranged(8192, minimum=1)  # crops, toys: how many train crops or points
    num_val: int = ranged(512, minimum=1)  # crops, toys: how many val crops or points
    seed: int = ranged(0, minimum=0)  # crops: the crop positions; toys: the draws

    def __post_init__(self):
        if self.source not in SOURCES:
            raise GenkitError(f"unknown data.source {self.source!r}; choose one of {', '.join(SOURCES)}")
        if self.image_size < 1:
            raise GenkitError(f"data.image_size must be a positive number of pixels, got {self.image_size}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise GenkitError(
                f"data.crop_scale={list(self.crop_scale)} must be [low, high] shares of the image's area with "
                "0 < low <= high <= 1, e.g. [0.8, 1.0]"
            )


def image_channels(config: DataConfig) -> int:
    """Channels of the images `build_dataset(config, ...)` gives: 1 for MNIST-like grayscale sets, else 3."""
    if config.source in TOYS:
        raise GenkitError(
            f"data.source={config.source} gives 2-D points, not images; use an image source "
            "(crops, mnist5k, folder, torchvision, hf) or a model for points"
        )
    grayscale = config.source == "mnist5k" or (config.source == "torchvision" and config.name in GRAYSCALE_TORCHVISION)
    return 1 if grayscale else 3


def data_shape(config: DataConfig) -> tuple[int, ...]:
    """Shape of one item of `build_dataset(config, ...)`: (2,) for the toys, else (channels, size, size)."""
    if config.source in TOYS:
        return (2,)
    return (image_channels(config), config.image_size, config.image_size)
