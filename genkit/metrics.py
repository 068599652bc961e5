"""Metrics: tensors in, numbers out; nothing here knows about training."""

import torch
from torch import Tensor


def psnr(images: Tensor, reference: Tensor, data_range: float = 2.0) -> float:
    """Mean over images of 10 log10(range^2 / MSE), for images in [-1, 1] (range 2)."""
    mse = (images.double() - reference.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).mean().item()
