"""Pixel art and retro sprites from an HR-only folder: degraded LR, tile-aligned and edge-aware crops."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch

from data.auto_split import SplitOptions
from data.image_cache import ImageCache, format_bytes
from data.image_io import ImageReadError, list_images, to_float
from data.imresize import imresize
from data.lmdb_backend import IoBackend
from data.paired_image_dataset import CacheMode, SizeProbe, SRImageDatasetBase
from data.pixel_degradations import (
    KNOBS,
    DegradationStep,
    PaletteError,
    PixelDegradationOptions,
    check_pixel_degradations,
    check_value,
    count_colours,
    downscale,
    knob_schedules,
    pixel_degrade,
)
from data.transforms import augment, check_patch_fits
from utils.registry import DATASET_REGISTRY
from utils.schedule import Scheduled, as_schedule
from utils.steps import Step

logger = logging.getLogger("upforge")

EVAL_KERNELS = ("nearest", "box", "bilinear", "bicubic")
#: live crop settings (probabilities)
CROP_KNOBS = ("crops_tile_aligned_prob", "prefer_top_p")


# ------------------------------------------------------------------------------ crops


def candidate_corners(h: int, w: int, size: int, rng: np.random.Generator, count: int, aligned_prob: float,
                      tile: int) -> list[tuple[int, int]]:
    """``count`` random corners ``(y, x)`` of ``size`` patches of an ``h`` x ``w`` image.

    Draws ``rng.random((count, 3))``: per candidate ``(aligned, uy, ux)``. With ``aligned <
    aligned_prob`` the corner is on the tile grid, ``y = tile * floor(uy * ((h - size) // tile +
    1))`` (every multiple of ``tile`` that leaves room for the patch equally likely), else
    ``y = floor(uy * (h - size + 1))``; ``x`` alike.
    """
    draws = rng.random((count, 3))

    def pick(u: float, length: int, aligned: bool) -> int:
        if aligned:
            slots = (length - size) // tile + 1
            return tile * min(int(u * slots), slots - 1)
        return min(int(u * (length - size + 1)), length - size)

    return [(pick(uy, h, a < aligned_prob), pick(ux, w, a < aligned_prob)) for a, uy, ux in draws]


def sobel_energy(patch: np.ndarray) -> float:
    """Edge energy of an HWC patch: the mean of ``Gx**2 + Gy**2`` of the 3x3 Sobel gradients of
    its full-range BT.601 luma, the seed's Y (OpenCV's RGB2GRAY weights; gray: the channel
    itself), over the pixels whose 3x3 neighbourhood lies inside the patch (no padding, so the
    patch border adds no edge). 0 below 3x3."""
    h, w, channels = patch.shape
    if h < 3 or w < 3:
        return 0.0
    # OpenCV's kernels: about 4x faster than the same sums as numpy slices, in every crop ranking
    p = patch.astype(np.float32)
    to_gray = cv2.COLOR_RGB2GRAY if channels == 3 else cv2.COLOR_RGBA2GRAY
    y = p[:, :, 0] if channels < 3 else cv2.cvtColor(p[:, :, :4], to_gray)
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3)[1:-1, 1:-1]  # the border rows and columns used padding
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)[1:-1, 1:-1]
    total = cv2.sumElems(cv2.multiply(gx, gx))[0] + cv2.sumElems(cv2.multiply(gy, gy))[0]
    return float(total / ((h - 2) * (w - 2)))


def pick_crop(img: np.ndarray, size: int, rng: np.random.Generator, candidates: int, aligned_prob: float, tile: int,
              prefer_top_p: float, path: str | Path | None = None) -> tuple[int, int]:
    """The corner of the training crop: :func:`candidate_corners`, then ``rng.random(2)``
    ``(prefer, which)``: with ``prefer < prefer_top_p`` the candidate of the highest
    :func:`sobel_energy` (the first on ties), else candidate ``floor(which * candidates)``.
    Draws the same count whatever is picked; energies are computed only when they decide."""
    h, w = img.shape[:2]
    check_patch_fits(h, w, size, path)
    corners = candidate_corners(h, w, size, rng, candidates, aligned_prob, tile)
    prefer, which = rng.random(2)
    if candidates > 1 and prefer < prefer_top_p:
        energies = [sobel_energy(img[y : y + size, x : x + size]) for y, x in corners]
        return corners[int(np.argmax(energies))]
    return corners[min(int(which * candidates), candidates - 1)]


# ------------------------------------------------------------------------------ the dataset


@DATASET_REGISTRY.register()
class PixelArtDataset(SRImageDatasetBase):
    """Pixel art / retro sprites from an HR-only folder; training LR made by the pixel degradations.

    Training, per sample (all from the sample's seed): a ``gt_size`` crop chosen among
    ``candidates`` random ones (tile-aligned with probability ``crops_tile_aligned_prob``, the
    one of highest Sobel energy kept with probability ``prefer_top_p``), flips/rotations, then
    ``degradations`` (data/pixel_degradations.py: palette jitter on the HR, which is then the gt
    too; nearest / box / bilinear resampling; tiny blur; noise; JPEG; channel drop).
    Validation/test: like HRImageDataset, the whole image mod-cropped to a multiple of ``scale``
    (or its ``center_crop``), with a clean LR: ``eval_kernel`` (box by default), no degradation,
    as the seed validated. 8-bit images only, ``channels`` 1 or 3.

    Live settings (schedules, ``degrad_schedule``, ``ctx.set_data``): ``gt_size``, ``aug_prob``,
    ``crops_tile_aligned_prob``, ``prefer_top_p`` and every degradation setting but
    ``palette_max_colors``. When palette jitter can fire (any value of ``palette_prob`` above 0) every
    training image is decoded at build and one with more than ``palette_max_colors`` distinct colours
    is an error naming it. ``cache: ram`` keeps the decoded images in RAM for the data workers.
    Shared options (``split``, ``indices``, ``meta_info_file``, ...): see datasets/README.md.

    Args:
        degradations: training only: the LR recipe ``{palette_prob, palette_shift, palette_contrast, palette_hue,
            palette_max_colors, nearest_prob, box_prob, blur_prob, blur_sigma, noise_prob, noise_sigma, jpeg_prob,
            jpeg_quality, channel_drop_prob}``, every key optional (defaults: the seed's recipe, see
            datasets/README.md); probabilities and palette magnitudes take schedules; ``box_prob`` and
            ``nearest_prob`` sum to at most 1, bilinear gets the rest. null: the defaults.
        degrad_schedule: training only: a curriculum ``{step: {setting: value, ...}, ...}`` (steps may be
            ``0.6T``): each setting named becomes a piecewise-constant schedule of the values given to it,
            holding its ``degradations`` value before the first step that names it; ranges are given as
            ``[lo, hi]``. A setting may not be a schedule in ``degradations`` as well.
        crops_tile_aligned_prob: training only: probability that a candidate crop's corner lies on the
            ``tile_size`` grid (multiples of ``tile_size`` in both axes); may be a schedule.
        tile_size: the sprite tile grid in HR pixels (e.g. 16) for tile-aligned crops.
        candidates: training only: random candidate crops per sample (1: a plain random crop).
        prefer_top_p: training only: probability of keeping the candidate of highest Sobel edge energy
            (else a random candidate); used when ``candidates`` > 1; may be a schedule.
        eval_kernel: validation/test only: the clean downscale that makes the LR: ``nearest``, ``box``
            (area, the default), ``bilinear`` (tent filter) or ``bicubic`` (MATLAB, as HRImageDataset).
        min_size: leave out the images whose shorter side is below this many pixels (sizes from the file
            headers; the count left out is logged), e.g. the 16 px tiles of a folder trained with 128 px patches;
            applied after ``split``, before ``indices`` and ``meta_info_file``. null: keep every image (a
            training image smaller than ``gt_size`` is then an error naming it).
        recursive: list the images of ``dataroot_gt``'s subfolders too (names relative to it, e.g. for
            ``split`` and ``meta_info_file``); folders only.
        center_crop: validation/test only: cut each gt to its centre ``center_crop`` square (a multiple of
            ``scale``) before the LR is made from it.
        cache: training only: ``ram`` decodes every image once at start-up into RAM (the size is logged; a set
            that does not fit is refused), and the data workers crop and degrade from there instead of decoding
            a file per sample. ``gpu`` is an error: the degradations run on the CPU, in the workers.
    """

    live_options = SRImageDatasetBase.live_options + CROP_KNOBS + KNOBS

    def __init__(
        self,
        dataroot_gt: str,
        scale: int = 4,
        phase: str = "train",
        gt_size: Scheduled | None = None,
        use_hflip: bool = True,
        use_rot: bool = True,
        aug_prob: Scheduled = 0.5,
        degradations: PixelDegradationOptions | None = None,
        degrad_schedule: dict[Step, DegradationStep] | None = None,
        crops_tile_aligned_prob: Scheduled = 0.0,
        tile_size: int = 16,
        candidates: int = 1,
        prefer_top_p: Scheduled = 1.0,
        eval_kernel: Literal["nearest", "box", "bilinear", "bicubic"] | None = None,
        recursive: bool = False,
        min_size: int | None = None,
        meta_info_file: str | None = None,
        channels: int = 3,
        indices: list[int] | None = None,
        center_crop: int | None = None,
        split: SplitOptions | None = None,
        io_backend: IoBackend | None = None,
        cache: CacheMode | None = None,
    ) -> None:
        self._built = False
        super().__init__(scale, phase, gt_size, use_hflip, use_rot, aug_prob, channels=channels,
                         center_crop=center_crop, io_backend=io_backend, cache=cache, split=split)
        self.check_keywords(channels=channels, degradations=degradations, degrad_schedule=degrad_schedule,
                            crops_tile_aligned_prob=crops_tile_aligned_prob, tile_size=tile_size,
                            candidates=candidates, prefer_top_p=prefer_top_p, eval_kernel=eval_kernel)
        self.dataroot_gt = dataroot_gt
        self.gt_paths = self._list_gt(dataroot_gt, recursive)
        self._keep_split()  # the split first (_keep_indices applies it again, which then changes nothing)
        self._keep_min_size(min_size)
        self._keep_indices(indices)
        self._filter_meta_info(meta_info_file)
        self._check_images()
        self._images: ImageCache | None = None
        if self.cache == "ram":
            # decoded once here; forked workers read the same pages (nothing is copied per worker)
            what = f"{len(self)} training images"
            self._images = ImageCache(len(self), lambda i: (self._read_u8(self.gt_paths[i]),), self.channels, 1,
                                      "ram", torch.device("cpu"), what)
            logger.info(f"{type(self).__name__}: cache: ram: {what} decoded once, "
                        f"{format_bytes(self._images.nbytes)} in {self._images.where}; the data workers crop and "
                        "degrade them")
        self._palettes_checked = False
        if phase == "train" and max(self._knob_schedules["palette_prob"].values()) > 0:
            self._check_palettes()
        self._built = True

    # ----------------------------------------------------------- checks at build

    def check_keywords(self, channels: Any = 3, degradations: Any = None, degrad_schedule: Any = None,
                       crops_tile_aligned_prob: Any = 0.0, tile_size: Any = 16, candidates: Any = 1,
                       prefer_top_p: Any = 1.0, eval_kernel: Any = None) -> None:
        """Check this class's own keywords and set what they decide, touching no file. The
        constructor calls it after the base class's checks, and so does the option-file check
        (data/option_checks.py) on a bare instance: ``--check`` and start-up say the same."""
        name = type(self).__name__
        if channels not in (1, 3):
            raise ValueError(f"{name}: channels must be 1 or 3 (JPEG and the palette hue work on gray or RGB), "
                             f"got {channels!r}")
        self._check_phase_options(degradations, degrad_schedule, crops_tile_aligned_prob, candidates, eval_kernel)
        self.tile_size = self._positive_int(tile_size, "tile_size")
        self.candidates = self._positive_int(candidates, "candidates")
        self.eval_kernel = eval_kernel or "box"
        if self.eval_kernel not in EVAL_KERNELS:
            raise ValueError(f"{name}: eval_kernel must be one of {', '.join(EVAL_KERNELS)}, got {eval_kernel!r}")
        checked = check_pixel_degradations(degradations, f"{name}: degradations")
        self.palette_max_colors: int = checked["palette_max_colors"]
        self._knob_schedules = knob_schedules(checked, degrad_schedule, f"{name}: degrad_schedule")
        for key, schedule in self._knob_schedules.items():
            setattr(self, key, self._schedule(key, schedule))
        for key, value in (("crops_tile_aligned_prob", crops_tile_aligned_prob), ("prefer_top_p", prefer_top_p)):
            self._knob_schedules[key] = as_schedule(value)
            setattr(self, key, self._schedule(key, self._knob_schedules[key]))

    def _check_phase_options(self, degradations: Any, degrad_schedule: Any, aligned: Any, candidates: Any,
                             eval_kernel: Any) -> None:
        """Training options in a val/test set (and the reverse) are mistakes, not silently ignored."""
        name = type(self).__name__
        if self.phase == "train":
            if eval_kernel is not None:
                raise ValueError(f"{name}: eval_kernel is the clean LR of validation/test sets; a training set makes "
                                 "its LR with degradations")
            return
        given = [k for k, v in (("degradations", degradations), ("degrad_schedule", degrad_schedule)) if v is not None]
        given += ["crops_tile_aligned_prob"] if as_schedule(aligned) != 0 else []
        given += ["candidates"] if candidates != 1 else []
        if given:
            raise ValueError(f"{name}: training option(s) {', '.join(given)} in a {self.phase} set; a {self.phase} "
                             "set is whole images with a clean eval_kernel LR")

    def _positive_int(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(self).__name__}: {key} must be a whole number >= 1, got {value!r}")
        return value

    def _check_cache(self, cache: Any) -> str | None:
        if cache == "gpu":
            raise ValueError(f"{type(self).__name__}: cache: gpu is not supported: its degradations (palette jitter, "
                             "resampling mix, blur, noise, JPEG, channel drop) and edge-aware crops run on the CPU in "
                             "the data workers; cache: ram keeps the decoded images in RAM for them")
        return super()._check_cache(cache)

    @property
    def makes_device_batches(self) -> bool:
        return False  # cache: ram only spares the workers the decoding; they still make the samples

    def check_knob(self, option: str, value: Any) -> None:
        super().check_knob(option, value)
        name = type(self).__name__
        if option in KNOBS:
            try:
                check_value(option, value)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        if option in CROP_KNOBS and (isinstance(value, bool) or not 0.0 <= value <= 1.0):
            raise ValueError(f"{name}: {option} must be a probability in [0, 1], got {value!r}")
        if option == "palette_prob" and value > 0 and getattr(self, "_built", False):
            self._check_palettes()  # an automation turns palette jitter on

    def _list_gt(self, root: str, recursive: bool) -> list[Path]:
        """The dataroot's images; with ``recursive`` those of its subfolders too. An empty folder
        whose subfolders hold images says so."""
        name = type(self).__name__
        if recursive:
            if self.io_backend != "disk":
                raise ValueError(f"{name}: recursive lists image folders; an LMDB lists its meta_info.txt")
            path = self._check_dataroot(root, "dataroot_gt")
            try:
                return list_images(path, recursive=True)
            except (FileNotFoundError, NotADirectoryError) as err:
                raise type(err)(f"{name}: dataroot_gt: {err}") from err
        try:
            return self._list(root, "dataroot_gt")
        except FileNotFoundError as err:
            nested = self._nested_images(root)
            if nested:
                raise FileNotFoundError(f"{err}; its subfolders hold {nested} images: set recursive: true to use "
                                        "them") from err
            raise

    def _keep_min_size(self, min_size: Any) -> None:
        """Leave out the images whose shorter side is below ``min_size`` (unknown sizes are kept)."""
        if min_size is None:
            return
        name, n = type(self).__name__, len(self.gt_paths)
        size = self._positive_int(min_size, "min_size")
        probe = SizeProbe(self)
        keep = [i for i, path in enumerate(self.gt_paths) if (hw := probe(path)) is None or min(hw) >= size]
        if not keep:
            raise ValueError(f"{name}: none of the {n} images of '{self.dataroot_gt}'"
                             + (f" (split part {self.split['part']!r})" if self.split else "")
                             + f" is at least {size} px on its shorter side (min_size)")
        if len(keep) < n:
            logger.info("%s (%s): min_size %d leaves out %d of %d images", name, self.phase, size, n - len(keep), n)
        self._leave_out(keep)

    def _nested_images(self, root: str) -> int:
        path = Path(root)
        if self.io_backend != "disk" or not path.is_dir():
            return 0
        try:
            return len(list_images(path, recursive=True))
        except (FileNotFoundError, NotADirectoryError):
            return 0

    def _check_palettes(self) -> None:
        """Every training image is a palette image (at most ``palette_max_colors`` distinct
        colours), so palette jitter never meets one mid-run. Decodes every image once."""
        if self._palettes_checked:
            return
        over: list[str] = []
        for index, path in enumerate(self.gt_paths):
            try:
                count = count_colours(self._image(index))
            except ImageReadError:
                continue  # skipped with a warning when it is read for a sample
            if count > self.palette_max_colors:
                over.append(f"'{path}' ({count} colours)")
        if over:
            shown = "; ".join(over[:5]) + ("; ..." if len(over) > 5 else "")
            raise PaletteError(
                f"{type(self).__name__}: palette jitter shifts an image's palette, but {len(over)} of {len(self)} "
                f"training images have more than palette_max_colors {self.palette_max_colors} distinct colours: "
                f"{shown}. Raise palette_max_colors, set palette_prob to 0, or leave them out (split, indices, "
                "meta_info_file)")
        self._palettes_checked = True

    # ----------------------------------------------------------- reading

    def _read_u8(self, path: Path) -> np.ndarray:
        img = self.read(path)
        if img.dtype != np.uint8:
            raise ValueError(f"{type(self).__name__} reads 8-bit images (pixel art), but '{path}' is {img.dtype}")
        return img

    def _image(self, index: int) -> np.ndarray:
        """Training image ``index``: a view of the RAM cache, or decoded from its file."""
        if self._images is not None:
            return self._images.image(0, index).numpy()
        return self._read_u8(self.gt_paths[index])

    def eval_lq(self, gt: np.ndarray) -> np.ndarray:
        """The clean LR of a validation/test gt: ``eval_kernel``; bicubic gives float32 in [0, 1]."""
        if self.eval_kernel == "bicubic":
            return np.clip(imresize(to_float(gt), 1.0 / self.scale), 0.0, 1.0)
        return downscale(gt, self.scale, self.eval_kernel)

    def verify(self, index: int) -> None:
        gt_path = self.gt_paths[index]
        self._eval_gt(self._read_u8(gt_path), gt_path)

    # ----------------------------------------------------------- samples

    def degradation_values(self, knobs: dict[str, Any] | None = None) -> dict[str, Any]:
        """The degradation settings of the sample being made (its knobs, else the defaults)."""
        values = {key: self.option(key, knobs) for key in KNOBS}
        values["palette_max_colors"] = self.palette_max_colors
        return values

    def load(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, Path, Path]:
        gt_path = self.gt_paths[index]
        img = self._image(index)
        if rng is None:
            gt = np.ascontiguousarray(self._eval_gt(img, gt_path))
            return gt, self.eval_lq(gt), gt_path, gt_path
        size = int(self.option("gt_size"))
        y, x = pick_crop(img, size, rng, self.candidates, self.option("crops_tile_aligned_prob"), self.tile_size,
                         self.option("prefer_top_p"), gt_path)
        patch = augment([img[y : y + size, x : x + size]], self.use_hflip, self.use_rot, rng,
                        self.option("aug_prob"))[0]
        gt, lq = pixel_degrade(patch, self.scale, rng, self.degradation_values())
        return np.ascontiguousarray(gt), lq, gt_path, gt_path
