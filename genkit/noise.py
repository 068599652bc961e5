"""genkit's one seeding scheme: every random draw is a function of a tuple of integers, whatever the process count.

`generator(seed, i)` seeds a torch generator from numpy's SeedSequence hash of the tuple, so keys never collide
across seeds (a linear seed * c + i would: (seed, c) and (seed + 1, 0) would share a stream). Sample i of a solve
starts from `initial_noise`'s z_i, in `genkit sample`, `genkit compare` and the GAN comparison alike.
Sample i of a conditional model draws its class from `initial_conditions` (seed, i, 1) as in the training data.
"""

import numpy as np
import torch
from torch import Tensor


def generator(*keys: int) -> torch.Generator:
    """A CPU torch generator seeded by the 64-bit SeedSequence hash of `keys`."""
    stream = int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(stream)


def initial_noise(indices: list[int], shape: tuple[int, ...], seed: int) -> Tensor:
    """z_i ~ N(0, I) of `shape` for each i in `indices`, from generator(seed, i): a function of (seed, i) only."""
    noise = [torch.randn(shape, generator=generator(seed, i)) for i in indices]
    return torch.stack(noise) if noise else torch.empty(0, *shape)


# The last key of a condition's generator, so sample i's class draw is independent of its noise z_i.
CONDITION_KEY = 1


def initial_conditions(indices: list[int], frequencies: Tensor, seed: int) -> Tensor:
    """Class index c_i ~ Categorical(frequencies) for each i in `indices`, from generator(seed, i, CONDITION_KEY)."""
    draws = [torch.multinomial(frequencies, 1, generator=generator(seed, i, CONDITION_KEY)) for i in indices]
    return torch.cat(draws) if draws else torch.empty(0, dtype=torch.long)
