"""Image complexity statistics, used to compare and filter training sets.

All functions take an HWC float RGB image in [0, 1] (numpy, as ``data.image_io.read_image``
returns). ``Y`` is full-range BT.601 luma, Y = 0.299 R + 0.587 G + 0.114 B, in [0, 1].

Statistics
----------
texture_variance
    Mean over all pixels of the local variance of Y in a 7x7 box window,
    var = E_w[Y^2] - E_w[Y]^2 (population variance, clipped at 0). Windows at the image border
    are completed by mirroring without repeating the edge pixel (OpenCV BORDER_REFLECT_101).
    Range [0, 0.25]; uniform RGB noise gives about 0.036.
edge_density
    Fraction of pixels whose Sobel gradient magnitude of Y, sqrt(gx^2 + gy^2), is strictly
    greater than ``threshold`` (default 0.05). The Sobel kernels are scaled by 1/8
    (gx kernel [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] / 8, gy its transpose), with edge-pixel
    replication at the border, so a linear ramp of slope s per pixel has magnitude s and a step
    edge of height h gives magnitude h/2 on the two pixels either side of it (a unit step: 0.5).
    The default threshold thus counts steps of more than 0.1 (about 26 of 255 levels).
colour_variation
    Mean over pixels of the population standard deviation of (R, G, B) across the three
    channels: sqrt(((R-m)^2 + (G-m)^2 + (B-m)^2) / 3) with m = (R+G+B)/3. This is the distance of
    the pixel from the grey axis divided by sqrt(3): 0 for any grey, sqrt(2)/3 ≈ 0.4714 (its
    maximum) for pure primaries and secondaries (red, yellow, ...). It measures how coloured an
    image is, not how its colour changes.

Complexity score
----------------
    score = (min(texture_variance / 0.01, 1) + min(edge_density / 0.4, 1)
             + min(colour_variation / 0.12, 1)) / 3

in [0, 1] (REFERENCE_SCALES holds the three constants). A texture reference of 0.01 is a
local standard deviation of 0.1; the references sit in the upper part of the photo range (37%,
12% and 12% of the DIV2K crops reach them), so most photos are not saturated and the score
still ranks them. Measured on the 100 DIV2K
validation 256x256 crops (whole crops): medians texture 0.0066, edges 0.22, colour 0.052;
score mean 0.57, median 0.63, 10th/90th percentiles 0.28/0.87, 78% of crops in [0.3, 0.9].
A flat image scores 0 (a flat grey one exactly 0); uniform RGB noise (texture ≈ 0.036,
edges ≈ 0.84, colour ≈ 0.21) saturates every term and scores 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from data.image_io import read_image, to_float

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
TEXTURE_WINDOW = 7
EDGE_THRESHOLD = 0.05
STAT_NAMES = ("texture_variance", "edge_density", "colour_variation")
# The documented rule: each statistic divided by its reference and saturated at 1.
REFERENCE_SCALES = {"texture_variance": 0.01, "edge_density": 0.4, "colour_variation": 0.12}


def _check_rgb(img: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name} expects an HWC RGB image (3 channels), got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"{name} expects a float image in [0, 1], got dtype {img.dtype}")
    return img


def luma(img: np.ndarray) -> np.ndarray:
    """Full-range BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B of an HWC RGB image, as float64 HxW."""
    img = _check_rgb(img, "luma")
    return img.astype(np.float64) @ np.array(LUMA_WEIGHTS)


def local_variance(y: np.ndarray, window: int = TEXTURE_WINDOW) -> np.ndarray:
    """Per-pixel variance of ``y`` (HxW) in a ``window`` x ``window`` box, reflect-101 border."""
    # Variance is shift-invariant: subtracting the global mean first keeps E[y^2] - E[y]^2
    # from cancelling large numbers, and makes a constant image exactly 0.
    y = np.asarray(y, dtype=np.float64)
    y = y - y.mean()
    size = (window, window)
    mean = cv2.blur(y, size, borderType=cv2.BORDER_REFLECT_101)
    mean_sq = cv2.blur(y * y, size, borderType=cv2.BORDER_REFLECT_101)
    return np.clip(mean_sq - mean * mean, 0.0, None)


def texture_variance(img: np.ndarray) -> float:
    """Mean 7x7 local variance of Y (see the module docstring)."""
    return float(local_variance(luma(img)).mean())


def gradient_magnitude(y: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of ``y`` (HxW), kernels scaled by 1/8, replicated border."""
    y = np.asarray(y, dtype=np.float64)
    gx = cv2.Sobel(y, cv2.CV_64F, 1, 0, ksize=3, scale=1.0 / 8.0, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(y, cv2.CV_64F, 0, 1, ksize=3, scale=1.0 / 8.0, borderType=cv2.BORDER_REPLICATE)
    return np.hypot(gx, gy)


def edge_density(img: np.ndarray, threshold: float = EDGE_THRESHOLD) -> float:
    """Fraction of pixels whose Y gradient magnitude is > ``threshold`` (see the module docstring)."""
    return float((gradient_magnitude(luma(img)) > threshold).mean())


def colour_variation(img: np.ndarray) -> float:
    """Mean over pixels of the standard deviation of (R, G, B) across channels (ddof 0)."""
    img = _check_rgb(img, "colour_variation")
    return float(img.astype(np.float64).std(axis=2).mean())


def image_statistics(img: np.ndarray) -> dict[str, float]:
    """The three statistics of one image, keyed by STAT_NAMES."""
    return {
        "texture_variance": texture_variance(img),
        "edge_density": edge_density(img),
        "colour_variation": colour_variation(img),
    }


def complexity_score(stats: dict[str, float]) -> float:
    """Mean of min(stat / REFERENCE_SCALES[stat], 1) over the three statistics; in [0, 1]."""
    missing = [k for k in STAT_NAMES if k not in stats]
    if missing:
        raise KeyError(f"complexity_score: missing statistics {missing}; expected {list(STAT_NAMES)}")
    terms = [min(max(float(stats[k]), 0.0) / REFERENCE_SCALES[k], 1.0) for k in STAT_NAMES]
    return sum(terms) / len(terms)


def _random_crop(img: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    """A crop x crop window at a random position; a side shorter than ``crop`` is taken whole."""
    h, w = img.shape[:2]
    ch, cw = min(crop, h), min(crop, w)
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return img[top : top + ch, left : left + cw]


def first_three_bands(img: np.ndarray) -> np.ndarray:
    """The image the statistics describe: RGB as it is, gray repeated, RGBA without alpha, and
    for N-band data (e.g. R, G, B, NIR) the first three bands."""
    if img.shape[2] >= 3:
        return np.ascontiguousarray(img[:, :, :3])
    return np.repeat(img[:, :, :1], 3, axis=2)


def sample_statistics(
    paths: Sequence[str | Path], crop: int, n: int, seed: int, max_images: int | None = None,
    read: Callable[[str | Path], np.ndarray] | None = None,
) -> dict[str, float]:
    """Mean statistics over ``n`` random ``crop``-sized crops of the given image files.

    Each crop picks an image uniformly at random (with replacement) and a uniform position in
    it, from ``np.random.default_rng(seed)``; images smaller than ``crop`` contribute the whole
    image. Every picked image is decoded once and all its crops are cut from that copy, so the
    cost is dominated by decoding the distinct images; ``max_images`` (if set) first draws that
    many distinct files to sample from, which bounds start-up time on sets of large images.

    ``read`` decodes one path (default: the file on disk); a dataset passes its own reader, so
    paths that are LMDB keys or stack items work too.

    Returns the mean of each statistic over the crops, plus ``"complexity"``: the mean of the
    per-crop complexity scores (not the score of the mean statistics).
    """
    paths = list(paths)
    if not paths:
        raise ValueError("sample_statistics: no image paths given")
    if crop < 1 or n < 1:
        raise ValueError(f"sample_statistics: crop and n must be >= 1, got crop={crop}, n={n}")
    rng = np.random.default_rng(seed)
    if max_images is not None and max_images < len(paths):
        chosen = rng.choice(len(paths), size=max_images, replace=False)
        paths = [paths[i] for i in sorted(chosen)]
    picks = rng.integers(0, len(paths), size=n)

    totals = dict.fromkeys((*STAT_NAMES, "complexity"), 0.0)
    for index in np.unique(picks):
        # Crop from the stored integer image and convert only the crops to float: decoding a
        # large image is unavoidable, converting all of it is not.
        raw = read(paths[index]) if read is not None else read_image(paths[index], keep_channels=True, as_float=False)
        img = first_three_bands(raw)
        for _ in range(int((picks == index).sum())):
            stats = image_statistics(to_float(_random_crop(img, crop, rng)))
            for key, value in stats.items():
                totals[key] += value
            totals["complexity"] += complexity_score(stats)
    return {key: value / n for key, value in totals.items()}
