"""DataLoader construction: seeded, resumable sampling for training; one pass per image for validation.

Reproducibility contract (what a resume relies on):
- The training order of epoch ``e`` depends only on (seed, e, rank, world_size): the sampler
  reshuffles from ``seed + e``. Call ``loader.set_epoch(e)`` before iterating epoch ``e``.
- With workers, each worker's torch/numpy/random seeds come from (seed, rank, epoch, worker id),
  because ``set_epoch`` also reseeds the generator from which the DataLoader draws its worker
  base seed. With ``persistent_workers=True`` the workers are made once, at the first epoch
  iterated, and keep their RNG streams across epochs, so crops after a resume only match the
  uninterrupted run when ``persistent_workers=False`` (or ``num_workers=0``).
- With ``num_workers=0`` the dataset draws from the process's global torch RNG, which the
  trainer seeds and checkpoints.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EnlargedSampler(Sampler[int]):
    """Shuffling sampler for training, single- or multi-process (BasicSR's EnlargedSampler idea).

    Plays the role of ``DistributedSampler`` when ``world_size > 1``: the epoch's permutation
    of ``len(dataset) * enlarge_ratio`` indices (each image ``enlarge_ratio`` times) is padded
    to a multiple of ``world_size`` and rank ``r`` takes every ``world_size``-th entry from
    ``r``. The permutation is drawn from a generator seeded with ``seed + epoch``, so it is the
    same on every rank and after a resume.
    """

    def __init__(
        self,
        num_samples: int,
        rank: int = 0,
        world_size: int = 1,
        enlarge_ratio: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if num_samples < 1:
            raise ValueError("EnlargedSampler: the dataset is empty")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"EnlargedSampler: need 0 <= rank < world_size, got {rank}, {world_size}")
        if enlarge_ratio < 1:
            raise ValueError(f"EnlargedSampler: dataset_enlarge_ratio must be >= 1, got {enlarge_ratio}")
        self.num_samples_total = num_samples
        self.rank = rank
        self.world_size = world_size
        self.enlarge_ratio = enlarge_ratio
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.num_per_rank = math.ceil(num_samples * enlarge_ratio / world_size)
        self.total_size = self.num_per_rank * world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        n = self.num_samples_total * self.enlarge_ratio
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        pad = self.total_size - n
        if pad:
            order = torch.cat([order, order[:pad].repeat(math.ceil(pad / n))[:pad]])
        mine = order[self.rank : self.total_size : self.world_size] % self.num_samples_total
        return iter(mine.tolist())

    def __len__(self) -> int:
        return self.num_per_rank


class ShardSampler(Sampler[int]):
    """Sequential validation sampler: rank ``r`` gets indices r, r + world_size, ...

    Unlike ``DistributedSampler`` nothing is padded or repeated, so every image is evaluated
    exactly once across ranks; ranks may get one image more or fewer than each other, so
    metric reduction must sum values and counts rather than average per-rank means.
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"ShardSampler: need 0 <= rank < world_size, got {rank}, {world_size}")
        self.indices = list(range(rank, num_samples, world_size))

    def set_epoch(self, epoch: int) -> None:
        """Order does not depend on the epoch; kept so every sampler has the same interface."""

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _mix_seed(*parts: int) -> int:
    """A well-spread non-negative 63-bit seed from several integers."""
    entropy = [int(p) % 2**63 for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) % 2**63


def _seed_worker(worker_id: int, rank: int) -> None:
    # torch has already seeded this worker with base_seed + worker_id; derive numpy's and
    # python's from it (and the rank) so libraries using their global RNGs differ per worker.
    seed = _mix_seed(torch.initial_seed(), rank, worker_id)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class SRDataLoader(DataLoader):
    """A DataLoader with ``set_epoch``: reshuffles the sampler and reseeds worker seeding."""

    def __init__(self, *args, seed: int = 0, rank: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        if self.generator is not None:
            self.generator.manual_seed(_mix_seed(self.seed, self.rank, self.epoch))


def build_dataloader(
    dataset: Dataset,
    phase: str,
    batch_size: int,
    num_workers: int,
    pin_memory: bool = True,
    persistent_workers: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    dataset_enlarge_ratio: int = 1,
) -> SRDataLoader:
    """Build the loader for ``phase`` ('train', or anything else for validation/test).

    Train: ``EnlargedSampler`` (seeded shuffle, distributed split, enlarge ratio), the given
    batch size, ``drop_last=True``, seeded workers. Other phases: batch size 1, in order, and
    with ``world_size > 1`` each rank takes a disjoint share (``ShardSampler``). The sampler is
    ``loader.sampler``; call ``loader.set_epoch(epoch)`` at the start of every epoch.
    """
    if batch_size < 1:
        raise ValueError(f"build_dataloader: batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"build_dataloader: num_workers must be >= 0, got {num_workers}")
    n = len(dataset)
    train = phase == "train"
    if train:
        sampler = EnlargedSampler(n, rank, world_size, dataset_enlarge_ratio, seed, shuffle=True)
        if len(sampler) < batch_size:
            raise ValueError(
                f"build_dataloader: {len(sampler)} training samples per process "
                f"(dataset {n} x enlarge ratio {dataset_enlarge_ratio} / {world_size} processes) "
                f"is fewer than batch_size {batch_size}; with drop_last no batch would be made"
            )
    else:
        sampler = ShardSampler(n, rank, world_size)
        batch_size = 1

    generator = torch.Generator()
    generator.manual_seed(_mix_seed(seed, rank, 0))
    loader = SRDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=persistent_workers and num_workers > 0,
        drop_last=train,
        worker_init_fn=functools.partial(_seed_worker, rank=rank),
        generator=generator,
        seed=seed,
        rank=rank,
    )
    return loader
