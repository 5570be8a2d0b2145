"""Prefetchers: hand out one batch dict at a time; ``next()`` returns None when the epoch ends."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from data.data_loader import next_batch
from data.image_io import tensor_to_float


def batch_to_device(
    batch: dict[str, Any], device: torch.device | None, channels_last: bool, non_blocking: bool
) -> dict[str, Any]:
    """Move tensors (only) to ``device``, 4-D ones to channels_last if asked, uint8 (and uint16)
    images to float in [0, 1].

    Converting after the copy moves a quarter of the bytes and does the division on the device.
    A batch arrives here in one dtype per key (the collate function puts a batch mixing 8-bit and
    16-bit files on the float scale), so dividing by that dtype's peak is right for every sample.
    """
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            fmt = torch.channels_last if channels_last and value.ndim == 4 else torch.preserve_format
            value = tensor_to_float(value.to(device=device, non_blocking=non_blocking, memory_format=fmt))
        out[key] = value
    return out


class CPUPrefetcher:
    """Iterates the loader in the calling thread; optionally moves tensors to ``device``."""

    def __init__(
        self, loader: Iterable, device: torch.device | None = None, channels_last: bool = False
    ) -> None:
        self.loader = loader
        self.device = device
        self.channels_last = channels_last
        self._iter: Iterator | None = None
        self.reset()

    def reset(self) -> None:
        self._iter = iter(self.loader)

    def next(self) -> dict[str, Any] | None:
        try:
            batch = next_batch(self._iter)  # a worker's error comes out as the worker raised it
        except StopIteration:
            return None
        return batch_to_device(batch, self.device, self.channels_last, non_blocking=False)


class CUDAPrefetcher:
    """Copies the next batch to the GPU on a side stream while the current step computes.

    The loader should use ``pin_memory=True`` for the copies to overlap with compute.
    """

    def __init__(self, loader: Iterable, device: torch.device, channels_last: bool = False) -> None:
        self.loader = loader
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CUDAPrefetcher needs a CUDA device, got '{self.device}'")
        self.channels_last = channels_last
        self.stream = torch.cuda.Stream(device=self.device)
        self._iter: Iterator | None = None
        self._batch: dict[str, Any] | None = None
        self.reset()

    def _preload(self) -> None:
        try:
            batch = next_batch(self._iter)  # a worker's error comes out as the worker raised it
        except StopIteration:
            self._batch = None
            return
        # The copies are queued on the side stream, so they overlap the work already queued on
        # the compute stream; next() makes the compute stream wait for them.
        with torch.cuda.stream(self.stream):
            self._batch = batch_to_device(batch, self.device, self.channels_last, non_blocking=True)

    def reset(self) -> None:
        self._iter = iter(self.loader)
        self._preload()

    def next(self) -> dict[str, Any] | None:
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        batch = self._batch
        if batch is None:
            return None
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                # The memory was allocated on the side stream; tell the caching allocator it is
                # used on the compute stream too, so it is not reused before that work is done.
                value.record_stream(current)
        self._preload()
        return batch


def build_prefetcher(
    loader: Iterable,
    device: torch.device | str,
    mode: str | None = None,
    channels_last: bool = False,
) -> CPUPrefetcher | CUDAPrefetcher:
    """CUDAPrefetcher when ``device`` is CUDA and ``mode`` is None or 'cuda', else CPUPrefetcher.

    The CPU prefetcher moves batches to ``device`` synchronously.
    """
    if mode not in (None, "cpu", "cuda"):
        raise ValueError(f"prefetch_mode must be null, 'cpu' or 'cuda', got {mode!r}")
    device = torch.device(device)
    if device.type == "cuda" and mode in (None, "cuda"):
        return CUDAPrefetcher(loader, device, channels_last)
    return CPUPrefetcher(loader, device, channels_last)
