"""A training sampler whose order and augmentation seeds depend only on (seed, epoch, position).

It yields ``(index, sample_seed)`` pairs; datasets draw their random crop and flips from
``sample_seed``. So the data a step sees does not depend on the worker count, and a run resumed
mid-epoch (``set_start``) sees exactly the samples the uninterrupted run would have seen.
With ``world_size > 1`` each rank takes every world-th item, like DistributedSampler.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

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


class ResumableBatchSampler(Sampler):
    """Batches of ``(index, sample_seed, knobs)`` from a :class:`ResumableSampler`'s epoch order.

    The batch size and the live dataset settings ("knobs", e.g. ``gt_size``) are functions of
    the training step a batch is consumed in: batch ``k`` of the run (counted from its start,
    across epochs) belongs to step ``k // accumulate + 1``. Every sample of a batch carries the
    same knobs, so no batch mixes patch sizes, and since the knobs travel with the indices the
    dataset copies inside persistent workers need no update. ``overrides`` (set by automations)
    take precedence over the schedules. A pass starts ``start`` samples into the epoch's order
    and ends when fewer samples than the next batch size remain (``drop_last``).
    """

    def __init__(self, sampler: ResumableSampler, batch_size: Any, knobs: dict[str, Any] | None = None,
                 accumulate: int = 1) -> None:
        self.sampler = sampler
        self.batch_size = batch_size  # a Schedule or an int
        self.knobs = dict(knobs or {})
        self.accumulate = accumulate
        self.overrides: dict[str, Any] = {}
        self.first_batch = 0  # run-wide number of the next pass's first batch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def set_start(self, position: int, first_batch: int) -> None:
        self.sampler.set_start(position)
        self.first_batch = first_batch

    def size_at(self, step: int) -> int:
        if "batch_size" in self.overrides:
            return int(self.overrides["batch_size"])
        return int(self.batch_size(step)) if callable(self.batch_size) else int(self.batch_size)

    def knobs_at(self, step: int) -> dict[str, Any]:
        values = {name: sched(step) for name, sched in self.knobs.items()}
        values.update({k: v for k, v in self.overrides.items() if k != "batch_size"})
        return values

    def __iter__(self) -> Iterator[list[tuple[int, int, dict[str, Any]]]]:
        items = list(iter(self.sampler))
        position, batch = 0, self.first_batch
        while True:
            step = batch // self.accumulate + 1
            size = self.size_at(step)
            if position + size > len(items):
                return
            knobs = self.knobs_at(step)
            yield [(index, seed, knobs) for index, seed in items[position:position + size]]
            position += size
            batch += 1

    def __len__(self) -> int:
        """Batches per full epoch at the current size (the size may change during the epoch)."""
        return len(self.sampler) // self.size_at(self.first_batch // self.accumulate + 1)
