"""The `hf` source: a local Hugging Face `datasets` store (saved with `save_to_disk`, an imagefolder or parquet files;
needs the `hf` extra), read without network. Asked for labels, an item is (image, class index) from the store's
`data.label_column`.
"""

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from genkit.data.config import SPLITS, DataConfig
from genkit.data.datasets import Labelled
from genkit.data.folder import FOLDER_VAL_EVERY, load_rgb
from genkit.data.transforms import _tensor_transform
from genkit.errors import GenkitError

if TYPE_CHECKING:
    import datasets

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


def _hf(config: DataConfig, split: str, labels: bool = False) -> StoredImages | Labelled:
    """The image column of the local `datasets` store at data.path, in the store's splits or split like a folder; with
    `labels`, each image with its row's class index from data.label_column (`_hf_labels`).
    """
    whole, picked = _hf_rows(config, split)  # first: it makes a missing datasets library one clear error
    import datasets

    rows = whole if picked is None else whole.select(picked)
    root, column = Path(config.path), config.image_column
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
    images = StoredImages(rows, column, config.image_size, _tensor_transform(config, split))
    return Labelled(images, _hf_labels(config, split, whole, picked)) if labels else images


def _hf_rows(config: DataConfig, split: str) -> "tuple[datasets.Dataset, list[int] | None]":
    """The split of the store at data.path as (a Dataset, which of its rows are the split; None: all), not empty."""
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
    whole, picked = _hf_split(store, split, root)
    if (len(whole) if picked is None else len(picked)) == 0:
        raise GenkitError(
            f"the {split} split of the dataset at {root} is empty; add rows (a store without a "
            f"{'/'.join(HF_VAL_SPLITS)} split holds every {FOLDER_VAL_EVERY}th row of train, from the first, out "
            "for val)"
        )
    return whole, picked


def _hf_label_feature(config: DataConfig, rows: "datasets.Dataset") -> "datasets.ClassLabel | datasets.Value":
    """The feature of data.label_column in `rows`: a ClassLabel or an integer Value, else a GenkitError."""
    import datasets

    root, column = Path(config.path), config.label_column
    if column not in rows.column_names:
        raise GenkitError(
            f"the dataset at {root} has no column {column!r} (it has {', '.join(rows.column_names)}); "
            "set data.label_column to its column of class labels"
        )
    feature = rows.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return feature
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        return feature
    raise GenkitError(
        f"column {column!r} of the dataset at {root} holds {feature}, not class labels (a ClassLabel or integer "
        "column); set data.label_column to its column of class labels"
    )


def _hf_labels(config: DataConfig, split: str, whole: "datasets.Dataset", picked: list[int] | None) -> Tensor:
    """The class index of every row of the split (`_hf_rows`): ClassLabel's index or the integer column's value."""
    root, column = Path(config.path), config.label_column
    _hf_label_feature(config, whole)
    # The column of the whole split read as one Arrow array (milliseconds), then indexed: read through select()'s index
    # mapping, a million rows took 13 s. No image is decoded.
    values = whole.select_columns([column]).with_format("arrow")[:][column]
    if values.null_count:
        raise GenkitError(
            f"column {column!r} of the dataset at {root} has {values.null_count} row(s) without a label; drop them or "
            "set data.label_column to a column of class labels"
        )
    labels = torch.from_numpy(values.to_numpy().astype(np.int64))
    labels = labels if picked is None else labels[torch.as_tensor(picked, dtype=torch.long)]
    negative = (labels < 0).nonzero().flatten()
    if len(negative):
        row = int(negative[0])
        raise GenkitError(
            f"row {row} of the {split} split of the dataset at {root} has label {int(labels[row])} in column "
            f"{column!r}; class labels must be 0, 1, ... (a ClassLabel's -1 means unlabelled): drop such rows or set "
            "data.label_column"
        )
    return labels


def _hf_num_classes(config: DataConfig) -> int:
    """ClassLabel's num_classes, or for an integer column 1 + its largest value in train and val; decodes no image."""
    whole, picked = _hf_rows(config, "train")
    import datasets

    feature = _hf_label_feature(config, whole)
    if isinstance(feature, datasets.ClassLabel):
        return feature.num_classes
    # Both splits, so that every val label is below num_classes too.
    return 1 + max(int(_hf_labels(config, split, *_hf_rows(config, split)).max()) for split in SPLITS)


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


def _hf_split(
    store: "datasets.Dataset | datasets.DatasetDict", split: str, root: Path
) -> "tuple[datasets.Dataset, list[int] | None]":
    """The rows of `split`: the store's train and HF_VAL_SPLITS splits, else train's rows split as a folder's files.

    Returned as (a Dataset, the positions of the split's rows in it; None: all of them).
    """
    if isinstance(store, dict):  # a DatasetDict: named splits
        if "train" not in store:
            raise GenkitError(
                f"the dataset at {root} has splits {', '.join(store)} but none named train; rename its training split"
            )
        held_out = next((name for name in HF_VAL_SPLITS if name in store), None)
        if held_out is not None:
            return store["train" if split == "train" else held_out], None
        store = store["train"]
    return store, [index for index in range(len(store)) if (index % FOLDER_VAL_EVERY == 0) == (split == "val")]
