"""Training batches of a cached set (``cache: ram | gpu``), cut and finished on the run's device.

The CPU path makes each sample in a worker: decode, crop, flip, (HR sets) bicubic LR, collate,
copy. For small networks that is slower than the step itself. Here each image is decoded once
(:class:`~data.image_cache.ImageCache`); a batch is then a handful of device kernels: one
gather for all the crops with their flips and transposes, a dtype conversion, and for HR-only
sets two matrix products for MATLAB bicubic. The per-sample randomness is drawn on the host
from the sampler's seeds with the very functions the CPU path uses (crop_origin, flip_draws,
plan_lq_degradations), so a cached batch holds the same patches as the CPU path's batch for
the same step (bit for bit for paired sets; HR-only LR to float rounding), schedules, resume
and DDP sharding included.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from data.degradations import fill_value
from data.image_cache import ImageCache, format_bytes, gather_patches
from data.image_io import tensor_to_float
from data.imresize import resize_matrix
from data.paired_image_dataset import PatchPlan, SRImageDatasetBase


class CachedBatches:
    """Decode ``dataset``'s images into memory once, then make its training batches on ``device``."""

    def __init__(self, dataset: SRImageDatasetBase, device: torch.device, channels_last: bool = False,
                 log: Any = None) -> None:
        name = type(dataset).__name__
        mode = dataset.cache
        self.device = torch.device(device)
        if mode == "gpu" and self.device.type != "cuda":
            raise ValueError(f"{name}: cache: gpu keeps the images on the GPU, but the run's device is "
                             f"{self.device}; use cache: ram")
        self.dataset = dataset
        self.channels_last = channels_last
        self.roles = 2 if hasattr(dataset, "lq_paths") else 1  # (gt, lq) read from files, or gt alone
        what = f"{len(dataset)} training images" + (" and their LR" if self.roles > 1 else "")
        self.cache = ImageCache(len(dataset), dataset.cache_read, dataset.channels, self.roles, mode,
                                self.device, what, threads=1 if dataset.io_backend == "lmdb" else None)
        # ram on a GPU run: patches are cut from RAM into a pinned staging buffer and copied
        self.staged = self.cache.storage != self.device
        self._matrices: dict[int, Tensor] = {}
        # the batch's path strings, made once: at hundreds of batches a second they add up
        self._gt_names = [str(p) for p in dataset.gt_paths]
        self._lq_names = [str(p) for p in getattr(dataset, "lq_paths", dataset.gt_paths)]
        #: the sampler items' plans, as the dataset of the planning worker (see :class:`PatchPlanner`)
        self.planner = PatchPlanner(dataset, [self.cache.sizes(i) for i in range(len(self.cache))])
        if log is not None:
            kind = "float32 (16-bit or float files)" if self.cache.is_float else "uint8"
            log.info(f"{name}: cache: {mode}: {what} decoded once, {format_bytes(self.cache.nbytes)} as {kind} in "
                     f"{self.cache.where}; crops, flips" + (" and bicubic LR" if self.roles == 1 else "")
                     + f" are made on {self.device}; no data workers are used")

    # ------------------------------------------------------------------ batches

    def make(self, items: Iterable[tuple[int, int, dict[str, Any]]]) -> dict[str, Any]:
        """The batch of ``(index, sample_seed, knobs)`` items, planned here (outside the stream:
        the VRAM probe's batches)."""
        return self.make_planned(*collate_plans([self.planner[item] for item in items]))

    def make_planned(self, plans: list[PatchPlan], knobs: dict[str, Any]) -> dict[str, Any]:
        """The batch of ``plans`` (drawn with ``knobs``), on the device, float, as
        :func:`data.prefetcher.batch_to_device` would hand the CPU path's batch to the runner.
        Reads no mutable dataset state, so it may run in a thread."""
        ds, cache = self.dataset, self.cache
        gt_size = int(ds.option("gt_size", knobs))
        sizes = (gt_size, gt_size // ds.scale)[:self.roles]
        # one (roles * B, 5) parameter table, one host-to-device copy
        channels = cache.channels
        if self.staged:
            crops = [self._stage(plans, role, size) for role, size in enumerate(sizes)]
            rows = [(b * size * size * channels, size, p.flip_code) for size in sizes for b, p in enumerate(plans)]
        else:
            rows = []
            for role in range(self.roles):
                for p in plans:
                    width = cache.sizes(p.index)[role][1]
                    top, left = p.origins[role]
                    rows.append((cache.offset(role, p.index) + (top * width + left) * channels, width, p.flip_code))
        params = self._to_device(np.array(rows, dtype=np.int64)).view(self.roles, len(plans), 3)
        patches = [gather_patches(crops[role] if self.staged else cache.buffer, cache.channels, params[role], size)
                   for role, size in enumerate(sizes)]
        gt = patches[0]
        lq = patches[1] if self.roles > 1 else self._bicubic(gt, gt_size)
        lq = self._dropout(lq, plans, gt_size // ds.scale)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return {"lq": tensor_to_float(lq).contiguous(memory_format=fmt),
                "gt": tensor_to_float(gt).contiguous(memory_format=fmt),
                "lq_path": [self._lq_names[p.index] for p in plans],
                "gt_path": [self._gt_names[p.index] for p in plans]}

    def _to_device(self, array: np.ndarray | Tensor) -> Tensor:
        t = torch.as_tensor(array)
        if self.device.type == "cuda":
            # from pinned memory the copy is asynchronous: the host goes on to the step
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _stage(self, plans: list[PatchPlan], role: int, size: int) -> Tensor:
        """RAM cache on a GPU run: the crop windows (unflipped) cut on the host into one pinned
        buffer and copied to the device as one flat tensor."""
        cache = self.cache
        staging = torch.empty((len(plans), size, size, cache.channels), dtype=cache.buffer.dtype,
                              pin_memory=self.device.type == "cuda")
        windows = [cache.image(role, p.index)[y:y + size, x:x + size] for p in plans for y, x in [p.origins[role]]]
        torch.stack(windows, out=staging)
        return staging.view(-1).to(self.device, non_blocking=True)

    def _bicubic(self, gt: Tensor, gt_size: int) -> Tensor:
        """MATLAB bicubic LR of the gt patches, computed in float64 like data.imresize, clipped
        to [0, 1] like the HR set's CPU path."""
        matrix = self._matrices.get(gt_size)
        if matrix is None:
            matrix = torch.from_numpy(resize_matrix(gt_size, 1.0 / self.dataset.scale)).to(self.device)
            self._matrices[gt_size] = matrix
        x = tensor_to_float(gt).double()
        return (matrix @ x @ matrix.T).float().clamp_(0.0, 1.0)

    def _dropout(self, lq: Tensor, plans: list[PatchPlan], lq_size: int) -> Tensor:
        """``lq_dropout``'s holes, drawn with the plans, filled with its ``fill``."""
        if not any(p.holes for p in plans):
            return lq
        mask = np.zeros((len(plans), 1, lq_size, lq_size), dtype=bool)
        for b, plan in enumerate(plans):
            for y, x, sy, sx in plan.holes:
                mask[b, 0, y:y + sy, x:x + sx] = True
        # the fill on the scale of the buffer's dtype, as the CPU path fills its numpy patch
        value = fill_value(np.dtype(np.uint8) if lq.dtype == torch.uint8 else np.dtype(np.float32),
                           self.dataset.lq_dropout.get("fill", 0.0))
        return lq.masked_fill(self._to_device(mask), value)


class PatchPlanner(Dataset):
    """A cached set's sampler items ``(index, sample_seed, knobs)`` as :class:`PatchPlan` s.

    Drawing a batch's patches (a generator per sample, crop corners, flips, dropout holes) is
    the Python-heavy share of a cached batch. Run in the training process it took turns with the
    step on the interpreter lock; as the dataset of a one-worker DataLoader (data.batch_stream) it
    runs in another process, and the training process only launches the batch's kernels.
    """

    def __init__(self, dataset: SRImageDatasetBase, sizes: list[list[tuple[int, int]]]) -> None:
        self.dataset = dataset
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, item: tuple[int, int, dict[str, Any]]) -> tuple[PatchPlan, dict[str, Any]]:
        index, seed, knobs = int(item[0]), int(item[1]), item[2]
        return self.dataset.plan_patch(index, np.random.default_rng(seed), self.sizes[index], knobs), knobs


def collate_plans(samples: list[tuple[PatchPlan, dict[str, Any]]]) -> tuple[list[PatchPlan], dict[str, Any]]:
    """A batch's plans and its knobs (a batch never mixes knob values)."""
    return [plan for plan, _ in samples], (samples[0][1] if samples else {})


class CachedPrefetcher:
    """The prefetcher protocol (``next()``, None at the end of the epoch) for a cached set.

    A thread makes the next batches (``ahead`` of them) from the plans of ``planned`` (an
    iterable of :func:`collate_plans` results: a DataLoader over :meth:`CachedBatches.planner`)
    while the training step runs, and on a GPU launches their kernels on a side stream. The
    batches and their order are the batch sampler's, whatever the timing. :meth:`close` stops
    the thread; batches it had made are dropped (the stream restarts at its position).
    """

    def __init__(self, batches: CachedBatches, planned: Iterable, ahead: int = 2) -> None:
        self.batches = batches
        self.device = batches.device
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._planned = iter(planned)  # made here: the sampler's start position is taken now
        self._thread = threading.Thread(target=self._work, name="cached-batches", daemon=True)
        self._thread.start()

    def _put(self, value: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for plans, knobs in self._planned:
                if self._stop.is_set():
                    return
                if self.stream is None:
                    made: Any = (self.batches.make_planned(plans, knobs), None)
                else:
                    with torch.cuda.stream(self.stream):
                        batch = self.batches.make_planned(plans, knobs)
                        done = torch.cuda.Event()
                        done.record(self.stream)
                    made = (batch, done)
                if not self._put(made):
                    return
            self._put(None)
        except BaseException as err:  # raised in the training thread by next()
            self._put(err)

    def next(self) -> dict[str, Any] | None:
        got = self._queue.get()
        if got is None:
            return None
        if isinstance(got, BaseException):
            raise got
        batch, done = got
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            for value in batch.values():
                if isinstance(value, torch.Tensor):
                    # made on the side stream, used on this one: not reused before that work is done
                    value.record_stream(current)
        return batch

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()
