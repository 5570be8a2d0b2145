"""An endless stream of training batches across epochs that can resume at any batch."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from data.prefetcher import build_prefetcher


class BatchStream:
    """Wraps a training loader whose sampler is a :class:`~data.resumable_sampler.ResumableSampler`;
    ``state()`` records epoch and position."""

    def __init__(
        self,
        loader: DataLoader,
        device: torch.device,
        prefetch_mode: str | None = None,
        channels_last: bool = False,
    ) -> None:
        if len(loader) == 0:
            raise ValueError(
                f"the training set has {len(loader.dataset)} images, fewer than one batch of {loader.batch_size}; "
                "lower batch_size_per_gpu or add images"
            )
        self.loader = loader
        self.sampler = loader.sampler
        self.device = device
        self.prefetch_mode = prefetch_mode
        self.channels_last = channels_last
        self.epoch = 0
        self.batches_done = 0
        self._prefetcher: Any = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self._prefetcher = None

    def _start_epoch(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.batches_done * self.loader.batch_size)
        self._prefetcher = build_prefetcher(self.loader, self.device, self.prefetch_mode,
                                            channels_last=self.channels_last)

    def next(self) -> dict[str, Any]:
        if self._prefetcher is None:
            self._start_epoch()
        batch = self._prefetcher.next()
        if batch is None:
            self.epoch += 1
            self.batches_done = 0
            self._start_epoch()
            batch = self._prefetcher.next()
        self.batches_done += 1
        return batch
