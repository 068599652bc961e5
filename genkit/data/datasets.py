"""The dataset classes every source returns: float tensors in [-1, 1], CHW, one image an item (labels dropped), or
float32 points [2]; or, asked for labels, (image, class index) pairs.
"""

from collections.abc import Callable

from torch import Tensor
from torch.utils.data import Dataset


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


class Labelled(Dataset):
    """`images` with a class index each: item i is (images[i], int(labels[i])).

    The labels are held as one int64 tensor [N] beside the images, so counting classes decodes no image.
    """

    def __init__(self, images: Dataset, labels: Tensor):
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


class WithoutLabels(Dataset):
    """A dataset of (image, label, ...) tuples seen as a dataset of images."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor:
        return self.dataset[index][0]
