"""Decoded training images kept in memory (``cache: ram | gpu``), and batched patch cutting.

Every image is decoded once and stored, flattened HWC, in one buffer: uint8 when every image
of the set is 8-bit (a quarter of float32's bytes), else float32 on the [0, 1] scale (what the
CPU path's collation makes of 16-bit or mixed sets). One buffer instead of a tensor per image
lets :func:`gather_patches` cut a whole batch of crops, with each sample's own flips and
transpose, in one indexing kernel whatever the batch size.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from data.image_io import to_float

logger = logging.getLogger("upforge")

CACHE_MODES = ("ram", "gpu")

#: GPU memory a ``cache: gpu`` set must leave free for training: this share of the card, at least
#: MIN_GPU_HEADROOM bytes
GPU_HEADROOM_SHARE = 0.25
MIN_GPU_HEADROOM = 2 * 2**30
#: share of the machine's available RAM a ``cache: ram`` set may take
RAM_SHARE = 0.8


def format_bytes(nbytes: float) -> str:
    """A byte count for people: GiB from a quarter GiB up, else MiB, else KiB."""
    if nbytes >= 2**28:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def available_ram() -> int | None:
    """Bytes of RAM the kernel says can be taken without swapping (Linux); None elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(nbytes: int, mode: str, device: torch.device, what: str) -> str:
    """Raise ``MemoryError`` naming the sizes when ``nbytes`` of cache do not fit where ``mode``
    keeps them; return a description of where they go."""
    size = format_bytes
    if mode == "gpu":
        free, total = torch.cuda.mem_get_info(device)
        headroom = max(int(total * GPU_HEADROOM_SHARE), MIN_GPU_HEADROOM)
        if nbytes > free - headroom:
            raise MemoryError(
                f"cache: gpu: {what} take {size(nbytes)}, but {device} has {size(free)} free of {size(total)} and "
                f"{size(headroom)} stay free for training; use cache: ram, or no cache (the CPU path with workers)")
        return f"{device} ({size(free - nbytes)} left free)"
    avail = available_ram()
    if avail is not None and nbytes > RAM_SHARE * avail:
        raise MemoryError(
            f"cache: ram: {what} take {size(nbytes)}, but the machine has {size(avail)} of RAM available "
            f"(at most {RAM_SHARE:.0%} of it is used for the cache); leave cache out (the CPU path with workers)")
    return "RAM" + (f" ({size(avail - nbytes)} left available)" if avail is not None else "")


class ImageCache:
    """The images of a dataset's samples, decoded, in one flat buffer.

    ``read(i)`` gives sample ``i``'s images (gt, or gt and lq: ``roles`` of them) as HWC numpy
    arrays, exactly as the dataset's CPU path reads them (alignment crops included); reading
    runs in threads (the decoders release the GIL). ``mode`` gpu keeps the buffer on ``device``;
    ram keeps it in (pageable) RAM, from which batches are cut into a small pinned staging
    buffer and copied (see :mod:`data.cached_batches`): only the patches move, so pinning the
    whole set would buy nothing.
    """

    def __init__(self, count: int, read: Callable[[int], Sequence[np.ndarray]], channels: int, roles: int,
                 mode: str, device: torch.device, what: str, threads: int | None = None) -> None:
        if mode not in CACHE_MODES:
            raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)} or null, got {mode!r}")
        self.channels = channels
        self.roles = roles
        with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
            samples = [tuple(images) for images in pool.map(read, range(count))]
        flat = [img for images in samples for img in images]  # sample-major: gt, lq, gt, lq, ...
        if any(len(images) != roles for images in samples):
            raise ValueError(f"ImageCache: every sample must have {roles} image(s)")
        self.is_float = any(img.dtype != np.uint8 for img in flat)
        dtype = torch.float32 if self.is_float else torch.uint8
        self._hw = [(int(img.shape[0]), int(img.shape[1])) for img in flat]
        lengths = [h * w * channels for h, w in self._hw]
        self.nbytes = sum(lengths) * dtype.itemsize
        self.storage = torch.device(device) if mode == "gpu" else torch.device("cpu")
        self.where = check_fits(self.nbytes, mode, self.storage, what)
        self.buffer = torch.empty(sum(lengths), dtype=dtype, device=self.storage)
        self._offsets = [0, *np.cumsum(lengths[:-1]).tolist()]
        for img, start, length in zip(flat, self._offsets, lengths, strict=True):
            values = to_float(img) if self.is_float else img
            self.buffer[start:start + length].copy_(torch.from_numpy(np.ascontiguousarray(values).reshape(-1)))

    def __len__(self) -> int:
        return len(self._hw) // self.roles

    def sizes(self, index: int) -> list[tuple[int, int]]:
        """``(height, width)`` of each of sample ``index``'s images."""
        return self._hw[index * self.roles:(index + 1) * self.roles]

    def offset(self, role: int, index: int) -> int:
        return self._offsets[index * self.roles + role]

    def image(self, role: int, index: int) -> Tensor:
        """Image ``role`` of sample ``index`` as an HWC view of the buffer."""
        h, w = self._hw[index * self.roles + role]
        start = self.offset(role, index)
        return self.buffer[start:start + h * w * self.channels].view(h, w, self.channels)


@functools.lru_cache(maxsize=32)
def flip_maps(size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For each flip code ``h + 2 v + 4 t`` (:func:`data.transforms.flip_draws`), the patch row and
    column every output pixel comes from: two (8, size, size) int64 tensors on ``device``.

    Output pixel (i, j) comes from patch pixel (a, b): the transpose swaps the axes, then the
    vertical and horizontal flips mirror them (undoing augment's steps from the last one back).
    """
    i = torch.arange(size).view(size, 1).expand(size, size)
    j = torch.arange(size).view(1, size).expand(size, size)
    rows, cols = [], []
    for code in range(8):
        a, b = (j, i) if code & 4 else (i, j)
        rows.append(size - 1 - a if code & 2 else a)
        cols.append(size - 1 - b if code & 1 else b)
    return torch.stack(rows).to(device), torch.stack(cols).to(device)


def gather_patches(buffer: Tensor, channels: int, params: Tensor, size: int) -> Tensor:
    """Cut one ``size`` x ``size`` patch per row of ``params`` from the flat HWC ``buffer``.

    ``params`` is an int64 (B, 3) tensor on the buffer's device: the buffer index of the patch's
    top-left value (image offset + (top * width + left) * channels), the image width, and the flip
    code ``h + 2 v + 4 t`` of :func:`data.transforms.flip_draws` (horizontal flip, vertical flip,
    transpose, applied in that order). Returns (B, C, size, size), channels-last in memory (the
    gather runs in HWC order); bit for bit the CPU path's ``augment(crop)``. A handful of kernels
    whatever the batch size: the flips come from precomputed index maps.
    """
    rows, cols = flip_maps(size, buffer.device)
    start, width, code = params[:, 0].view(-1, 1, 1), params[:, 1].view(-1, 1, 1), params[:, 2]
    pixel = (rows[code] * width + cols[code]) * channels + start
    index = pixel.unsqueeze(-1) + torch.arange(channels, device=buffer.device)
    return buffer[index].permute(0, 3, 1, 2)
