"""An endless stream of training batches across epochs that resumes at any sample."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from data.cached_batches import CachedBatches, CachedPrefetcher, collate_plans
from data.data_loader import outlive_stop_signals
from data.prefetcher import build_prefetcher
from utils.logger import get_logger


def _plain(value: Any) -> Any:
    """A numpy scalar (``np.int64(16)``) as the Python number it holds; other values unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def batch_length(batch: dict[str, Any]) -> int:
    return next(len(v) for v in batch.values() if isinstance(v, torch.Tensor))


class BatchStream:
    """Wraps a training loader whose batch sampler is a
    :class:`~data.resumable_sampler.ResumableBatchSampler`.

    The position is kept in samples (``position`` into this rank's order of ``epoch``), so a
    batch-size change resumes exactly where the last consumed batch ended. :meth:`set_knob`
    (an automation changing the batch size or a dataset setting) restarts the loader at that
    position: batches the workers had already prepared with the old values are discarded and
    made again, so no sample is dropped or repeated and a resumed run sees the same batches.
    A dataset with ``cache`` set gets its batches from :class:`~data.cached_batches.CachedBatches`
    (made on the device from the same sampler items) instead of the loader's workers.
    """

    def __init__(self, loader: DataLoader, device: torch.device, prefetch_mode: str | None = None,
                 channels_last: bool = False) -> None:
        self.loader = loader
        self.batch_sampler = loader.batch_sampler
        if len(self.batch_sampler) == 0:
            raise ValueError(
                f"the training set has {len(loader.dataset)} images, fewer than one batch of "
                f"{self.batch_sampler.size_at(1)}; lower batch_size_per_gpu or add images"
            )
        self.device = device
        self.prefetch_mode = prefetch_mode
        self.channels_last = channels_last
        self.epoch = 0
        self.position = 0
        self.batches = 0
        self._last_sizes: list[int] = []
        self._prefetcher: Any = None
        self.cached: CachedBatches | None = None
        self._plans: DataLoader | None = None
        if getattr(loader.dataset, "makes_device_batches", False):
            self.cached = CachedBatches(loader.dataset, device, channels_last, get_logger())
            # the patches are drawn in a worker process; the same batch sampler feeds it
            self._plans = DataLoader(self.cached.planner, batch_sampler=self.batch_sampler, num_workers=1,
                                     collate_fn=collate_plans, persistent_workers=True, prefetch_factor=4,
                                     worker_init_fn=outlive_stop_signals)

    # --------------------------------------------------------------------- knobs

    def knob_names(self) -> list[str]:
        return list(dict.fromkeys(["batch_size", *getattr(self.loader.dataset, "live_options", ())]))

    def knob(self, name: str, step: int) -> Any:
        """The value batches of ``step`` are made with."""
        if name == "batch_size":
            return self.batch_sampler.size_at(step)
        self._check_name(name)
        values = self.batch_sampler.knobs_at(step)
        return values[name] if name in values else getattr(self.loader.dataset, name)

    def set_knob(self, name: str, value: Any) -> None:
        """From the next batch on, make batches with ``name = value``."""
        self._check_name(name)
        if name == "batch_size" and (int(value) != value or value < 1):
            raise ValueError(f"batch_size must be a positive whole number, got {value!r}")
        check = getattr(self.loader.dataset, "check_knob", None)
        if check is not None and name != "batch_size":
            check(name, value)
        self.batch_sampler.overrides[name] = value
        self.restart()

    def _check_name(self, name: str) -> None:
        if name not in self.knob_names():
            raise KeyError(f"no data setting named '{name}'; live settings: {', '.join(self.knob_names())}")

    # --------------------------------------------------------------------- state

    def state(self) -> dict[str, Any]:
        """Plain Python values only: training states load with ``weights_only=True``, which refuses
        pickled objects (numpy scalars included), so knob values are stored as Python numbers."""
        overrides = {k: _plain(v) for k, v in self.batch_sampler.overrides.items()}
        return {"epoch": int(self.epoch), "position": int(self.position), "batches": int(self.batches),
                "overrides": overrides}

    def load_state(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.batches = int(state["batches"])
        self.batch_sampler.overrides = dict(state.get("overrides", {}))
        self.restart()

    def restart(self) -> None:
        """Make the next batch anew from the current position (discarding prefetched ones)."""
        self.close()

    def close(self) -> None:
        """Stop making batches ahead (a cached set's thread); the next :meth:`next` starts again."""
        if isinstance(self._prefetcher, CachedPrefetcher):
            self._prefetcher.close()
        self._prefetcher = None

    def shutdown(self) -> None:
        """End of the run: :meth:`close`, then stop the loaders' persistent workers now, while the
        process is whole. Left to interpreter exit with pinned memory, torch waits 5 s for each
        worker in turn (pytorch/pytorch#81794; a minute with 12 workers on a GPU machine)."""
        self.close()
        for loader in (self.loader, self._plans):
            iterator = getattr(loader, "_iterator", None)  # persistent workers live here (torch's name)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
                loader._iterator = None

    def rewind(self) -> None:
        """Give back the batches of the current step (e.g. to redo it after an out-of-memory error)."""
        for size in reversed(self._last_sizes):
            self.position -= size
            self.batches -= 1
        self._last_sizes.clear()
        self.restart()

    def step_done(self) -> None:
        """The batches taken so far belong to a finished step; :meth:`rewind` no longer returns them."""
        self._last_sizes.clear()

    def sample_batch(self, size: int, step: int) -> dict[str, Any]:
        """A batch of ``size`` samples from the start of this epoch's order, made with the settings
        of ``step`` and moved to the device, outside the stream (nothing is consumed)."""
        from data.prefetcher import batch_to_device

        order = self.batch_sampler.sampler.order()
        knobs = self.batch_sampler.knobs_at(step)
        items = [order[i % len(order)] for i in range(size)]
        if self.cached is not None:
            return self.cached.make([(index, seed, knobs) for index, seed in items])
        batch = self.loader.collate_fn([self.loader.dataset[(index, seed, knobs)] for index, seed in items])
        return batch_to_device(batch, self.device, self.channels_last, non_blocking=False)

    # ------------------------------------------------------------------- batches

    def _start(self) -> None:
        self.close()
        self.batch_sampler.set_epoch(self.epoch)
        self.batch_sampler.set_start(self.position, self.batches)
        if self.cached is not None:
            self._prefetcher = CachedPrefetcher(self.cached, self._plans)
            return
        self._prefetcher = build_prefetcher(self.loader, self.device, self.prefetch_mode,
                                            channels_last=self.channels_last)

    def next(self) -> dict[str, Any]:
        if self._prefetcher is None:
            self._start()
        batch = self._prefetcher.next()
        if batch is None:
            self.epoch += 1
            self.position = 0
            self._start()
            batch = self._prefetcher.next()
            if batch is None:
                raise RuntimeError(f"an epoch of the training set holds fewer samples than one batch of "
                                   f"{self.batch_sampler.size_at(self.batches + 1)}; lower the batch size")
        size = batch_length(batch)
        self.position += size
        self.batches += 1
        self._last_sizes.append(size)
        return batch
