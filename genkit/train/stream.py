"""The data stream: every micro-batch of an endless sequence of seeded epoch permutations, split over processes."""

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from genkit.noise import generator


class StreamSampler(Sampler[list[int]]):
    """This process's share of every micro-batch of an endless stream of seeded epoch permutations.

    The global batch at a stream position is the same whatever the process count (rank r takes the r-th
    contiguous slice), and resuming at a step is starting the stream at that position: no state to save.
    """

    def __init__(self, size: int, micro_batch: int, rank: int, world: int, seed: int, start: int):
        self.size, self.micro_batch, self.rank, self.world = size, micro_batch, rank, world
        self.seed, self.start = seed, start
        self.local = micro_batch // world

    def _stream(self, position: int) -> Iterator[int]:
        epoch, offset = divmod(position, self.size)
        while True:
            order = torch.randperm(self.size, generator=generator(self.seed, epoch))
            yield from order[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[list[int]]:
        stream = self._stream(self.start * self.micro_batch)
        while True:
            batch = [next(stream) for _ in range(self.micro_batch)]
            yield batch[self.rank * self.local : (self.rank + 1) * self.local]
