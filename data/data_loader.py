"""DataLoader construction: seeded, resumable sampling for training; one pass per image for validation.

Training uses :class:`~data.resumable_sampler.ResumableSampler`, which hands each sample its own
augmentation seed, so the batches of epoch ``e`` depend only on (seed, e, rank, world_size) —
not on the worker count or on worker RNG state — and a resumed run sees the same data.
Call ``loader.batch_sampler.set_epoch(e)`` before iterating epoch ``e``.
"""

from __future__ import annotations

import builtins
import functools
import logging
import math
import os
import random
import re
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from data.image_io import ImageReadError, tensor_to_float
from data.resumable_sampler import ResumableBatchSampler, ResumableSampler
from utils.options import LoaderOptions, head_and_kwargs
from utils.registry import DATASET_REGISTRY
from utils.schedule import Schedule

logger = logging.getLogger("upforge")

# torch's wrapper around an error raised in a worker process or the pin-memory thread
# (torch.utils.data._utils ExceptionWrapper.reraise): "Caught <Type> in <where>.\nOriginal Traceback..."
_WORKER_WRAPPER = re.compile(r"Caught (?P<type>\w+) in (?P<where>[^\n]*?)\.\nOriginal (?P<tb>Traceback .*)", re.S)
_TRACEBACK_HEAD = "Traceback (most recent call last):"


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


def collate_samples(samples: list[Any]) -> Any:
    """Collate sample dicts into a batch; tensors of one key but different dtypes meet on one scale.

    Training keeps 8-bit images as uint8 tensors while 16-bit and float files give float32 in
    [0, 1]; stacking the two would promote uint8 to float without dividing by 255. So when the
    samples' dtypes differ for a key, each tensor goes through ``tensor_to_float`` first. Same
    dtypes keep the default behaviour (uint8 stays uint8 for the fast path); other values
    (paths) are collated as ``default_collate`` does (strings into lists).
    """
    if not samples or not isinstance(samples[0], Mapping):
        return default_collate(samples)
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if all(isinstance(v, torch.Tensor) for v in values) and len({v.dtype for v in values}) > 1:
            values = [tensor_to_float(v) for v in values]
            dtype = functools.reduce(torch.promote_types, [v.dtype for v in values])
            values = [v.to(dtype) for v in values]
        batch[key] = default_collate(values)
    return batch


class WorkerError(RuntimeError):
    """An error raised in a DataLoader worker whose type cannot be rebuilt here from its message;
    the message is ``<Type>: <original message>``."""


def unwrap_worker_error(err: BaseException) -> BaseException | None:
    """The error a DataLoader worker raised, rebuilt without torch's wrapper; None if ``err`` is
    not such a wrapper.

    torch re-raises a worker's error as ``Caught X in DataLoader worker process N. Original
    Traceback ...`` followed by the worker's whole traceback, which buries the one line that
    says what went wrong (and, when X takes more than a message, turns it into a RuntimeError).
    The rebuilt error has the original type where it can be made from its message (the type is
    looked up among the modules already imported, nothing is imported), else it is a
    :class:`WorkerError`; its message is the original one with any notes (a dataset adds the
    sample's files as a note). The worker's traceback stays on it as ``worker_traceback``.
    """
    match = _WORKER_WRAPPER.match(str(err))
    if match is None:
        return None
    traceback_text = match.group("tb")
    qualname, message = _final_exception(traceback_text)
    clean = _rebuild(qualname, message) or WorkerError(f"{match.group('type')}: {message}")
    clean.worker_traceback = traceback_text
    logger.debug("error in %s; its traceback there:\n%s", match.group("where"), traceback_text)
    return clean


def _final_exception(traceback_text: str) -> tuple[str, str]:
    """``(qualified type name, message and notes)`` of the last exception of a formatted
    traceback (the one raised; chained causes come before it)."""
    lines = traceback_text.rstrip("\n").split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith(_TRACEBACK_HEAD)]
    i = starts[-1] + 1 if starts else 0
    while i < len(lines) and lines[i].startswith(" "):  # the frames: "  File ...", code, carets
        i += 1
    head, *rest = lines[i:] or [""]
    qualname, _, first = head.partition(": ")  # "module.Type: message" (just "Type" without one)
    return qualname, "\n".join([first, *rest])


def _rebuild(qualname: str, message: str) -> BaseException | None:
    """An error of the type named ``qualname`` (``ValueError``, ``data.image_io.ImageReadError``)
    carrying ``message``, if that type is already imported and can be made from it."""
    module, _, name = qualname.rpartition(".")
    cls = getattr(sys.modules.get(module) if module else builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)) or cls is KeyError:  # KeyError quotes its text
        return None
    if issubclass(cls, ImageReadError):
        return cls.from_message(message)
    try:
        clean = cls(message)
    except Exception:  # noqa: BLE001 - a type that needs more than a message: WorkerError instead
        return None
    return clean if str(clean) == message else None


def next_batch(iterator: Iterator) -> Any:
    """``next(iterator)``, with a DataLoader worker's error raised as the worker raised it
    (see :func:`unwrap_worker_error`)."""
    try:
        return next(iterator)
    except StopIteration:
        raise
    except Exception as err:
        clean = unwrap_worker_error(err)
        if clean is None:
            raise
        raise clean from None  # the wrapper adds nothing; the worker's traceback is on the error


class _UnwrappingIterator:
    """A DataLoader iterator whose worker errors come out unwrapped (:func:`next_batch`)."""

    def __init__(self, iterator: Iterator) -> None:
        self._iterator = iterator

    def __iter__(self) -> _UnwrappingIterator:
        return self

    def __next__(self) -> Any:
        return next_batch(self._iterator)

    def __len__(self) -> int:
        return len(self._iterator)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._iterator, name)


class SampleLoader(DataLoader):
    """A DataLoader whose iterators raise a worker's error as the worker raised it, naming the
    file and the cause, instead of torch's "Caught X in DataLoader worker process N" wrapper."""

    def __iter__(self) -> _UnwrappingIterator:
        return _UnwrappingIterator(super().__iter__())


#: an epoch shorter than this many batches per worker leaves the workers idle at its end (a warning)
SHORT_EPOCH_BATCHES_PER_WORKER = 10


def _mix_seed(*parts: int) -> int:
    """A well-spread non-negative 63-bit seed from several integers."""
    entropy = [int(p) % 2**63 for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) % 2**63


#: seconds a data worker keeps serving batches after a stop signal reached it too
STOP_GRACE_S = 60.0


def outlive_stop_signals(_worker_id: int = 0) -> None:
    """Worker init: Ctrl+C, `timeout` and batch schedulers signal the whole process group, but the
    main process finishes its step after the signal (under DDP it runs on to the next logging
    step, where the ranks agree to stop) and then saves, and it may need batches until then. So
    a worker that gets SIGINT or SIGTERM keeps serving and exits ``STOP_GRACE_S`` later; the main
    process normally shuts it down long before."""

    def exit_later(signum: int, frame: Any) -> None:
        if not any(t.name == "stop-grace" for t in threading.enumerate()):
            timer = threading.Timer(STOP_GRACE_S, os._exit, (0,))
            timer.name, timer.daemon = "stop-grace", True
            timer.start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, exit_later)


def _seed_worker(worker_id: int, rank: int) -> None:
    # torch has already seeded this worker with base_seed + worker_id; derive numpy's and
    # python's from it (and the rank) so libraries using their global RNGs differ per worker.
    seed = _mix_seed(torch.initial_seed(), rank, worker_id)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    # Workers are the parallelism: OpenCV's own thread pool (one thread per core in every worker)
    # only oversubscribes the cores, so that more workers deliver fewer batches.
    cv2.setNumThreads(0)
    outlive_stop_signals()


def build_dataset(ds_opt: dict) -> Dataset:
    """Instantiate a validated dataset section; loader keys (batch size, workers, ...) are left out."""
    head, kwargs = head_and_kwargs(ds_opt, LoaderOptions)
    return DATASET_REGISTRY.get(head["type"])(**kwargs)


def build_val_loader(ds_opt: dict, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A validation/test loader for a validated dataset section: whole images, one per batch,
    each rank taking its own share."""
    return build_dataloader(build_dataset(ds_opt), "val", 1, ds_opt.get("num_worker_per_gpu", 0),
                            pin_memory=False, persistent_workers=False, rank=rank, world_size=world_size)


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
    accumulate: int = 1,
) -> DataLoader:
    """Build the loader for ``phase`` ('train', or anything else for validation/test).

    Train: a :class:`ResumableBatchSampler` over a ``ResumableSampler`` (seeded shuffle,
    per-sample seeds, distributed split, enlarge ratio); ``batch_size`` may be a schedule, and the
    dataset's non-constant ``schedules`` (e.g. a patch-size schedule) become per-batch knobs;
    ``accumulate`` (micro-batches per step) maps batches to steps. Other phases: batch size 1,
    in order, and with ``world_size > 1`` each rank takes a disjoint share (``ShardSampler``).
    """
    sizes = batch_size.values() if isinstance(batch_size, Schedule) else [batch_size]
    if min(sizes) < 1:
        raise ValueError(f"build_dataloader: batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"build_dataloader: num_workers must be >= 0, got {num_workers}")
    n = len(dataset)
    common = {"num_workers": num_workers, "pin_memory": pin_memory and torch.cuda.is_available(),
              "persistent_workers": persistent_workers and num_workers > 0,
              "worker_init_fn": functools.partial(_seed_worker, rank=rank),
              "prefetch_factor": 4 if num_workers > 0 else None}
    generator = torch.Generator()
    generator.manual_seed(_mix_seed(seed, rank, 0))
    if phase != "train":
        return SampleLoader(dataset, batch_size=1, sampler=ShardSampler(n, rank, world_size), generator=generator,
                            **common)
    sampler = ResumableSampler(n, seed, True, rank, world_size, dataset_enlarge_ratio)
    if len(sampler) < max(sizes):
        raise ValueError(
            f"build_dataloader: {len(sampler)} training samples per process "
            f"(dataset {n} x enlarge ratio {dataset_enlarge_ratio} / {world_size} processes) "
            f"is fewer than batch_size {max(sizes)}; with drop_last no batch would be made"
        )
    batches = ResumableBatchSampler(sampler, batch_size, getattr(dataset, "schedules", {}), accumulate)
    return SampleLoader(dataset, batch_sampler=batches, generator=generator, collate_fn=collate_samples, **common)


def build_loaders(opt: Any, device: torch.device) -> tuple[Any, dict[str, DataLoader]]:
    """The training batch stream and the validation loaders of a validated option set."""
    from data.batch_stream import BatchStream
    from utils import dist
    from utils.logger import get_logger

    stream, val_loaders = None, {}
    rank, world = dist.get_rank(), dist.get_world_size()
    for key, ds_opt in opt.datasets.items():
        name = ds_opt.get("name") or key
        if key != "train":
            val_loaders[name] = build_val_loader(ds_opt, rank, world)
            continue
        dataset = build_dataset(ds_opt)
        # a cached set makes its batches on the device (data.cached_batches): workers would idle
        workers = 0 if getattr(dataset, "makes_device_batches", False) else ds_opt["num_worker_per_gpu"]
        loader = build_dataloader(
            dataset, "train", ds_opt["batch_size_per_gpu"], workers,
            pin_memory=ds_opt["pin_memory"] and device.type == "cuda", persistent_workers=ds_opt["persistent_workers"],
            seed=opt.manual_seed, rank=rank, world_size=world, dataset_enlarge_ratio=ds_opt["dataset_enlarge_ratio"],
            accumulate=opt.train.accumulate_grad_batches if opt.train else 1)
        stream = BatchStream(loader, device, ds_opt.get("prefetch_mode"), opt.channels_last)
        live = ", ".join(f"{k} {v.to_spec()}" for k, v in getattr(dataset, "schedules", {}).items())
        get_logger().info(f"train set '{name}': {len(dataset)} images, {len(loader)} batches per epoch per GPU"
                          + (f"; scheduled: {live}" if live else ""))
        if workers and len(loader) < SHORT_EPOCH_BATCHES_PER_WORKER * workers:
            # the workers' queues drain at every epoch's end: a short epoch keeps most workers idle
            ratio = ds_opt["dataset_enlarge_ratio"]
            suggest = ratio * math.ceil(SHORT_EPOCH_BATCHES_PER_WORKER * workers / max(len(loader), 1))
            get_logger().warning(
                f"train set '{name}': {len(loader)} batches per epoch for {workers} workers; each epoch's end drains "
                f"their queues, so they idle and the loader delivers a fraction of its rate. Repeat the file list "
                f"with datasets.{key}.dataset_enlarge_ratio: {suggest} (now {ratio})")
    return stream, val_loaders
