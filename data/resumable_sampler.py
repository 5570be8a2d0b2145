"""A training sampler whose order and augmentation seeds depend only on (seed, epoch, position).

It yields ``(index, sample_seed)`` pairs; datasets draw their random crop and flips from
``sample_seed``. So the data a step sees does not depend on the worker count, and a run resumed
mid-epoch (``set_start``) sees exactly the samples the uninterrupted run would have seen.
With ``world_size > 1`` each rank takes every world-th item, like DistributedSampler.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    def __init__(
        self,
        num_items: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        enlarge_ratio: int = 1,
    ) -> None:
        if num_items <= 0:
            raise ValueError("the training dataset is empty")
        self.num_items = num_items
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.enlarge_ratio = enlarge_ratio
        self.epoch = 0
        self.start = 0
        self.per_rank = math.ceil(num_items * enlarge_ratio / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, position: int) -> None:
        """Skip the first ``position`` items of this rank's list in the next pass only."""
        self.start = position

    def _generator(self, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 4 + stream)

    def order(self) -> list[tuple[int, int]]:
        total = self.num_items * self.enlarge_ratio
        if self.shuffle:
            perm = torch.randperm(total, generator=self._generator(0)) % self.num_items
        else:
            perm = torch.arange(total) % self.num_items
        seeds = torch.randint(0, 2**31 - 1, (total,), generator=self._generator(1))
        padded = self.per_rank * self.world_size
        idx = torch.cat([perm, perm[: padded - total]])
        sd = torch.cat([seeds, seeds[: padded - total]])
        idx, sd = idx[self.rank :: self.world_size], sd[self.rank :: self.world_size]
        return list(zip(idx.tolist(), sd.tolist()))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        items = self.order()[self.start :]
        self.start = 0
        return iter(items)

    def __len__(self) -> int:
        return self.per_rank
