"""Data sets from other libraries, read without network: a local Hugging Face `datasets` store (`hf`: saved with
`save_to_disk`, an imagefolder or parquet files; needs the `hf` extra) and a torchvision.datasets class
(`torchvision`, downloaded or read from disk).
"""

import inspect
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torchvision
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from genkit.data.config import DataConfig, image_channels
from genkit.data.datasets import WithoutLabels
from genkit.data.folder import FOLDER_VAL_EVERY, load_rgb
from genkit.data.transforms import _image_transform, _tensor_transform
from genkit.errors import GenkitError

if TYPE_CHECKING:
    import datasets

# The held-out split's name for datasets that take `split=`; those not listed call it "test".
TORCHVISION_VAL_SPLITS = {"CelebA": "valid", "Flowers102": "val", "ImageNet": "val", "Places365": "val"}
# The split of an hf store that is val: the first of these it has. A store with none holds out rows as a folder does.
HF_VAL_SPLITS = ("validation", "val", "test")


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
