"""Launched by test_pairs with two CPU ranks: writes a pairs folder of the test's mixture field."""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from genkit.gaussian_mixture import GaussianMixture
from genkit.train.pairs import generate_pairs


def main(folder: str, num_pairs: int, shard_size: int, seed: int, batch_size: int) -> None:
    """Generate with the same field and settings as test_pairs' one-process folder, on exactly two ranks."""
    torch.set_num_threads(1)  # as in test_pairs: tiny tensors, and two ranks share the cores
    accelerator = Accelerator()
    # Without ACCELERATE_USE_CPU each launched process would silently run alone (ENVIRONMENT.md).
    assert accelerator.num_processes == 2, f"expected 2 ranks, got {accelerator.num_processes}"
    field = GaussianMixture.random(3, (2,), seed=0).rectified
    generate_pairs(field, (2,), Path(folder), num_pairs, shard_size, seed, accelerator, batch_size=batch_size)
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
