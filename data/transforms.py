"""Crops and flips for HWC numpy images; randomness always comes from a generator passed in."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _name(path: str | Path | None) -> str:
    return f" ('{path}')" if path is not None else ""


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right edges so height and width are multiples of ``scale``."""
    if scale < 1:
        raise ValueError(f"mod_crop: scale must be >= 1, got {scale}")
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def crop_origin(h: int, w: int, size: int, rng: np.random.Generator,
                path: str | Path | None = None) -> tuple[int, int]:
    """Top-left corner ``(y, x)`` of a random ``size`` x ``size`` patch of an ``h`` x ``w`` image
    (``path``: the image, named when it is smaller than the patch).

    The one place crops draw from the generator (two integers, y then x): the CPU crops here and
    the cached sets' device crops (data.cached_batches) call it, so both cut the same patch.
    """
    check_patch_fits(h, w, size, path)
    return int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))


def check_patch_fits(h: int, w: int, size: int, path: str | Path | None = None) -> None:
    """Raise ``ValueError`` naming the image (``path``) when ``h`` x ``w`` cannot hold a ``size`` patch."""
    if h < size or w < size:
        raise ValueError(f"image{_name(path)} is {h}x{w} (HxW), smaller than the {size}x{size} patch")


def random_crop(
    img: np.ndarray, size: int, rng: np.random.Generator, path: str | Path | None = None
) -> np.ndarray:
    """A random ``size`` x ``size`` patch of ``img``."""
    y, x = crop_origin(*img.shape[:2], size, rng, path)
    return img[y : y + size, x : x + size]


def paired_random_crop(
    gt: np.ndarray,
    lq: np.ndarray,
    gt_size: int,
    scale: int,
    rng: np.random.Generator,
    gt_path: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop an aligned pair: lq patch at (y, x), gt patch at (y * scale, x * scale)."""
    if gt_size % scale != 0:
        raise ValueError(f"gt_size {gt_size} is not a multiple of scale {scale}")
    lq_size = gt_size // scale
    h_lq, w_lq = lq.shape[:2]
    h_gt, w_gt = gt.shape[:2]
    if (h_gt, w_gt) != (h_lq * scale, w_lq * scale):
        raise ValueError(
            f"gt{_name(gt_path)} is {h_gt}x{w_gt} but lq is {h_lq}x{w_lq}; "
            f"with scale {scale} gt should be {h_lq * scale}x{w_lq * scale}"
        )
    if h_lq < lq_size or w_lq < lq_size:
        raise ValueError(
            f"lq image of{_name(gt_path)} is {h_lq}x{w_lq}, smaller than the {lq_size}x{lq_size} "
            f"patch (gt_size {gt_size} / scale {scale})"
        )
    y, x = crop_origin(h_lq, w_lq, lq_size, rng)
    lq_patch = lq[y : y + lq_size, x : x + lq_size]
    gt_patch = gt[y * scale : y * scale + gt_size, x * scale : x * scale + gt_size]
    return gt_patch, lq_patch


def augment(imgs: list[np.ndarray], hflip: bool, rot: bool, rng: np.random.Generator,
            prob: float = 0.5) -> list[np.ndarray]:
    """Apply one random draw of h-flip, v-flip and transpose to every image alike.

    As in BasicSR, ``rot`` enables the vertical flip and the transpose (together they give all
    90-degree rotations); each enabled one happens with probability ``prob`` (0.5 gives the 8
    dihedral variants equally often; a schedule from 0 up to 0.5 is an augmentation curriculum).
    Three random numbers are drawn on every call, so the generator advances the same way
    whatever the flags are.
    """
    do_h, do_v, do_t = flip_draws(hflip, rot, rng, prob)

    def apply(img: np.ndarray) -> np.ndarray:
        if do_h:
            img = img[:, ::-1]
        if do_v:
            img = img[::-1]
        if do_t:
            img = img.swapaxes(0, 1)
        return np.ascontiguousarray(img)

    return [apply(img) for img in imgs]


def flip_draws(hflip: bool, rot: bool, rng: np.random.Generator, prob: float = 0.5) -> tuple[bool, bool, bool]:
    """Whether :func:`augment` flips horizontally, flips vertically and transposes (applied in
    that order); three draws whatever the flags are. Shared with the cached sets' device flips."""
    draws = rng.random(3)
    return bool(hflip and draws[0] < prob), bool(rot and draws[1] < prob), bool(rot and draws[2] < prob)
