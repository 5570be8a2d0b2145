"""HR-only folder: the LR input is made on the fly with MATLAB-style bicubic downscaling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from data.auto_split import SplitOptions
from data.degradations import DropoutOptions, JpegOptions
from data.image_io import to_float
from data.imresize import imresize
from data.lmdb_backend import IoBackend
from data.paired_image_dataset import CacheMode, PatchPlan, SRImageDatasetBase
from data.transforms import augment, random_crop
from utils.registry import DATASET_REGISTRY
from utils.schedule import Scheduled


@DATASET_REGISTRY.register()
class HRImageDataset(SRImageDatasetBase):
    """GT images only; lq = bicubic(gt, 1/scale), clipped to [0, 1], for any channel count.

    Training: a random ``gt_size`` patch plus flips/rotations, then downscaled, then the
    lq-only ``lq_jpeg`` / ``lq_dropout``.
    Validation/test: the whole image mod-cropped to a multiple of ``scale`` (or its
    ``center_crop``), then downscaled.
    ``lq_path`` is the gt file's path (there is no LR file). ``dataroot_gt`` may be a folder or
    a stack file (4-D ``.npy``), or with ``io_backend: {type: lmdb}`` a BasicSR LMDB folder
    (``*.lmdb``). Shared options (``channels``, ``value_scale``, ``indices``, ...):
    see datasets/README.md.

    Args:
        center_crop: validation/test only: cut each gt to its centre ``center_crop`` square (a multiple of
            ``scale``) before the lq is made from it.
    """

    def __init__(
        self,
        dataroot_gt: str,
        scale: int = 4,
        phase: str = "train",
        gt_size: Scheduled | None = None,
        use_hflip: bool = True,
        use_rot: bool = True,
        aug_prob: Scheduled = 0.5,
        meta_info_file: str | None = None,
        channels: int = 3,
        value_scale: float | None = None,
        indices: list[int] | None = None,
        center_crop: int | None = None,
        lq_jpeg: JpegOptions | None = None,
        lq_dropout: DropoutOptions | None = None,
        io_backend: IoBackend | None = None,
        cache: CacheMode | None = None,
        split: SplitOptions | None = None,
    ) -> None:
        super().__init__(scale, phase, gt_size, use_hflip, use_rot, aug_prob, channels=channels,
                         value_scale=value_scale, center_crop=center_crop, lq_jpeg=lq_jpeg, lq_dropout=lq_dropout,
                         io_backend=io_backend, cache=cache, split=split)
        self.dataroot_gt = dataroot_gt
        self.gt_paths = self._list(dataroot_gt, "dataroot_gt")
        self._keep_indices(indices)
        self._filter_meta_info(meta_info_file)
        self._check_images()

    def verify(self, index: int) -> None:
        gt_path = self.gt_paths[index]
        self._eval_gt(self.read(gt_path), gt_path)

    def load(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, Path, Path]:
        gt_path = self.gt_paths[index]
        gt = self.read(gt_path)
        if rng is not None:
            gt = random_crop(gt, int(self.option("gt_size")), rng, gt_path)
            gt = augment([gt], self.use_hflip, self.use_rot, rng, self.option("aug_prob"))[0]
        else:
            gt = self._eval_gt(gt, gt_path)
        lq = np.clip(imresize(to_float(gt), 1.0 / self.scale), 0.0, 1.0)
        return gt, lq, gt_path, gt_path

    def cache_read(self, index: int) -> tuple[np.ndarray, ...]:
        return (self.read(self.gt_paths[index]),)

    def plan_patch(self, index: int, rng: np.random.Generator, sizes: list[tuple[int, int]],
                   knobs: dict[str, Any]) -> PatchPlan:
        size = int(self.option("gt_size", knobs))
        y, x, code, holes = self._draw_patch(rng, sizes[0], size, self.gt_paths[index], knobs)
        return PatchPlan(index, ((y, x),), code, holes)
