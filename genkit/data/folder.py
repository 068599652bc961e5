"""The `folder` source: every image file under data.path, checked once (the verdicts cached in an index), split by
sorted position; with labels, each direct subfolder of data.path is a class, as in torchvision's ImageFolder.
"""

import hashlib
import json
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, gather_object
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from genkit.data.config import DataConfig
from genkit.data.datasets import Labelled
from genkit.data.transforms import _tensor_transform
from genkit.errors import GenkitError
from genkit.files import cache_dir, write_text
from genkit.processes import process_state

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# Every FOLDER_VAL_EVERY-th image of the sorted file list, from the first on, is held out for val.
FOLDER_VAL_EVERY = 20
# Modes of 16-bit grayscale files (PNG, TIFF), whose values run to 65535; PIL's convert("RGB") clips them at 255.
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
# Bumped when load_rgb changes what it accepts, so indexes written by an older check are not trusted.
INDEX_VERSION = 1


class ImageFiles(Dataset):
    """Image files read on access; item i is `transform` of `load_rgb(paths[i], size)`."""

    def __init__(self, paths: list[Path], size: int, transform: Callable[[Image.Image], Tensor]):
        self.paths, self.size, self.transform = paths, size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(load_rgb(self.paths[index], self.size))


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
    return {root / relative: reason for relative, reason in _checked(root, size).items()}


def _checked(root: Path, size: int) -> dict[str, str | None]:
    """`checked_images(root, size)` keyed by each file's relative POSIX path; collective as it is."""
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
    return {relative: known[relative] for relative in files}


def _folder_root(config: DataConfig) -> Path:
    """data.path, checked to be a folder."""
    if config.path is None:
        raise GenkitError("data.source=folder needs data.path, the folder of images")
    root = Path(config.path)
    if not root.is_dir():
        raise GenkitError(f"image folder {root} does not exist or is not a folder; set data.path to a folder of images")
    return root


def _folder_classes(relatives: list[str], root: Path) -> list[str]:
    """The sorted names of the direct subfolders of `root` that the image files at `relatives` are in: the classes.

    A subfolder without image files is no class (torchvision's ImageFolder refuses one). An image directly in `root`
    has no class, which is an error rather than a skip: a label silently missing would shift the data's class shares.
    """
    loose = next((relative for relative in relatives if "/" not in relative), None)
    if loose is not None:
        raise GenkitError(
            f"image {root / loose} is in no class subfolder; with labels every image must be at "
            "data.path/<class>/<image> (one subfolder a class, as torchvision's ImageFolder reads)"
        )
    return sorted({relative.split("/", 1)[0] for relative in relatives})


def _folder_num_classes(config: DataConfig) -> int:
    """How many classes the folder at data.path has; lists it, decoding nothing."""
    root = _folder_root(config)
    relatives = list(_image_files(root))
    if not relatives:
        raise GenkitError(f"no images ({' '.join(IMAGE_SUFFIXES)}) under {root}; put images there or fix data.path")
    return len(_folder_classes(relatives, root))


def _folder(config: DataConfig, split: str, labels: bool = False) -> ImageFiles | Labelled:
    """The image files under data.path (recursive), split by sorted position, unreadable ones skipped or an error;
    with `labels`, each with the index of its class subfolder among `_folder_classes`.
    """
    root = _folder_root(config)
    reasons = _checked(root, config.image_size)
    relatives = list(reasons)
    if not relatives:
        raise GenkitError(f"no images ({' '.join(IMAGE_SUFFIXES)}) under {root}; put images there or fix data.path")
    # Classes come from every file, readable or not and of either split, so both splits and all runs agree on them.
    classes = _folder_classes(relatives, root) if labels else []
    # Split by position among all files, so a file's split does not depend on which others are corrupt.
    split_files = [file for index, file in enumerate(relatives) if (index % FOLDER_VAL_EVERY == 0) == (split == "val")]
    if not split_files:
        raise GenkitError(
            f"the {split} split of {root} is empty: it has {len(relatives)} image(s) and every {FOLDER_VAL_EVERY}th, "
            "from the first, is held out for val; add images"
        )
    readable = [relative for relative in split_files if reasons[relative] is None]
    unreadable = [(root / relative, reasons[relative]) for relative in split_files if reasons[relative] is not None]
    if unreadable and config.strict:
        path, reason = unreadable[0]
        raise GenkitError(f"unreadable image {path} ({reason}); remove or replace it, or set data.strict=false")
    if not readable:
        path, reason = unreadable[0]
        raise GenkitError(
            f"none of the {len(split_files)} {split} images under {root} can be read (first {path}: {reason}); "
            "replace them with readable images or fix data.path"
        )
    if unreadable and process_state().is_main_process:
        path, reason = unreadable[0]
        warnings.warn(
            f"skipped {len(unreadable)} unreadable image(s) of {len(split_files)} in the {split} split of {root}; "
            f"first {path}: {reason}. Set data.strict=true to make this an error",
            stacklevel=3,
        )
    images = ImageFiles([root / relative for relative in readable], config.image_size, _tensor_transform(config, split))
    if not labels:
        return images
    class_index = {name: index for index, name in enumerate(classes)}
    return Labelled(images, torch.tensor([class_index[relative.split("/", 1)[0]] for relative in readable]))
