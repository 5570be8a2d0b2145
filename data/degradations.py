"""Random degradations of the LR training patch: JPEG compression and coarse dropout.

Pure functions on HWC numpy arrays; randomness comes only from the generator passed in. Every
call draws the same number of random numbers whether or not an operation fires, so the
generator's stream (and with it every sample after) does not depend on what happened.
Values keep the array's dtype and scale (uint8 0-255, uint16 0-65535, float 0-1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
from pydantic import ConfigDict, with_config
from typing_extensions import NotRequired, TypedDict


# Option-file shapes of the two dataset options (checked at option-load time, unknown keys
# included); :func:`check_jpeg` / :func:`check_dropout` check the ranges.
@with_config(ConfigDict(extra="forbid"))
class JpegOptions(TypedDict):
    """``lq_jpeg``: with probability ``prob``, JPEG quality drawn uniformly from ``quality``."""

    prob: float
    quality: tuple[int, int]


@with_config(ConfigDict(extra="forbid"))
class DropoutOptions(TypedDict):
    """``lq_dropout``: with probability ``prob``, ``holes`` [min, max] square holes of side
    ``size`` [min, max] lq pixels filled with ``fill`` (on the [0, 1] scale)."""

    prob: float
    holes: tuple[int, int]
    size: tuple[int, int]
    fill: NotRequired[float]


# ---------------------------------------------------------------- option checks


def _check_keys(opts: Mapping[str, Any], option: str, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    if not isinstance(opts, Mapping):
        raise ValueError(f"{option} must be a mapping with keys {', '.join(required)}, got {opts!r}")
    unknown = sorted(set(opts) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"{option}: unknown key(s) {', '.join(map(str, unknown))} "
                         f"(known: {', '.join(required + optional)})")
    missing = [k for k in required if k not in opts]
    if missing:
        raise ValueError(f"{option}: missing key(s) {', '.join(missing)}")


def _prob(value: Any, option: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{option}.prob must be a number in [0, 1], got {value!r}")
    return float(value)


def _int_range(value: Any, option: str, low: int, high: int | None = None) -> tuple[int, int]:
    """A ``[lo, hi]`` pair of whole numbers with ``low <= lo <= hi`` (``<= high`` if given)."""
    bound = f"{low} <= lo <= hi" + (f" <= {high}" if high is not None else "")
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(not isinstance(v, bool) and isinstance(v, (int, float)) and int(v) == v for v in value))
    if ok:
        lo, hi = int(value[0]), int(value[1])
        ok = low <= lo <= hi and (high is None or hi <= high)
    if not ok:
        raise ValueError(f"{option} must be [lo, hi] whole numbers with {bound}, got {value!r}")
    return lo, hi


def check_jpeg(opts: Mapping[str, Any] | None, channels: int, option: str = "lq_jpeg") -> dict[str, Any] | None:
    """The ``lq_jpeg`` option as ``{'prob': float, 'quality': (lo, hi)}``; ValueError naming it."""
    if opts is None:
        return None
    _check_keys(opts, option, ("prob", "quality"), ())
    if channels not in (1, 3):
        raise ValueError(f"{option}: JPEG holds 1 or 3 channels, but the dataset's channels is {channels}")
    return {"prob": _prob(opts["prob"], option), "quality": _int_range(opts["quality"], f"{option}.quality", 1, 100)}


def check_dropout(opts: Mapping[str, Any] | None, option: str = "lq_dropout") -> dict[str, Any] | None:
    """The ``lq_dropout`` option as ``{'prob', 'holes': (lo, hi), 'size': (lo, hi), 'fill'}``."""
    if opts is None:
        return None
    _check_keys(opts, option, ("prob", "holes", "size"), ("fill",))
    fill = opts.get("fill", 0.0)
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not 0.0 <= fill <= 1.0:
        raise ValueError(f"{option}.fill must be a number in [0, 1] (the image's value scale), got {fill!r}")
    return {"prob": _prob(opts["prob"], option), "holes": _int_range(opts["holes"], f"{option}.holes", 0),
            "size": _int_range(opts["size"], f"{option}.size", 1), "fill": float(fill)}


# ---------------------------------------------------------------- operations


def _uniform_int(u: float, lo: int, hi: int) -> int:
    """The integer in [lo, hi] that a uniform draw ``u`` in [0, 1) picks."""
    return min(lo + int(u * (hi - lo + 1)), hi)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(x * 255 / 65535)
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _from_uint8(img: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return img
    if dtype == np.uint16:
        return img.astype(np.uint16) * np.uint16(257)  # 255 → 65535
    return (img.astype(np.float32) / np.float32(255.0)).astype(dtype)


def jpeg_compress(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG-encode and decode an HW or HWC (1 or 3 channel, RGB) image at ``quality`` (1-100).

    uint8 goes through as it is. uint16 and float images are quantised to 8 bits for the codec
    (float clipped to [0, 1]) and come back on their own scale and dtype, so they hold at most
    256 levels afterwards, like any JPEG.
    """
    if img.ndim == 3 and img.shape[2] not in (1, 3) or img.ndim not in (2, 3):
        raise ValueError(f"jpeg_compress: JPEG holds 1 or 3 channels, got an image of shape {img.shape}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"jpeg_compress: quality must be in [1, 100], got {quality}")
    u8 = _to_uint8(img)
    colour = u8.ndim == 3 and u8.shape[2] == 3
    # OpenCV encodes BGR: reverse so its luma weights land on the right channels
    src = u8[:, :, ::-1] if colour else u8.reshape(u8.shape[:2])
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(src), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("jpeg_compress: OpenCV could not encode the image")
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    out = out[:, :, ::-1] if colour else out.reshape(img.shape)
    return _from_uint8(np.ascontiguousarray(out), img.dtype)


def fill_value(dtype: np.dtype, fill: float) -> float | int:
    """``fill`` (on the [0, 1] scale) in the scale of ``dtype``."""
    if dtype == np.uint8:
        return int(round(fill * 255))
    if dtype == np.uint16:
        return int(round(fill * 65535))
    return fill


def dropout_holes(shape: tuple[int, ...], draws: np.ndarray, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """``(y, x, height, width)`` of one hole per row ``(u_size, u_y, u_x)`` of ``draws``.

    Side ``lo + floor(u_size * (hi - lo + 1))`` (cut to the image), corner
    ``floor(u_y * (H - side_y + 1))``, ``floor(u_x * (W - side_x + 1))``.
    """
    h, w = shape[:2]
    holes = []
    for u_size, u_y, u_x in draws:
        side = _uniform_int(u_size, *size)
        sy, sx = min(side, h), min(side, w)
        holes.append((_uniform_int(u_y, 0, h - sy), _uniform_int(u_x, 0, w - sx), sy, sx))
    return holes


def coarse_dropout(
    img: np.ndarray,
    holes: int,
    rng: np.random.Generator,
    size: tuple[int, int] = (1, 8),
    fill: float = 0.0,
    max_holes: int | None = None,
) -> np.ndarray:
    """Fill ``holes`` random squares (side in ``size`` [min, max], all channels) with ``fill``.

    ``fill`` is on the [0, 1] scale (255 * fill for uint8, 65535 * fill for uint16). Draws
    ``rng.random((max_holes, 3))`` (``max_holes`` defaults to ``holes``) whatever ``holes`` is
    and uses the first ``holes`` rows (see :func:`dropout_holes`). Returns a new array when
    anything is filled, ``img`` itself otherwise.
    """
    max_holes = holes if max_holes is None else max_holes
    if not 0 <= holes <= max_holes:
        raise ValueError(f"coarse_dropout: need 0 <= holes <= max_holes, got {holes}, {max_holes}")
    draws = rng.random((max_holes, 3))
    if holes == 0:
        return img
    out = np.array(img, copy=True)
    value = fill_value(img.dtype, fill)
    for y, x, sy, sx in dropout_holes(img.shape, draws[:holes], size):
        out[y : y + sy, x : x + sx] = value
    return out


def plan_lq_degradations(
    shape: tuple[int, ...],
    rng: np.random.Generator,
    jpeg: Mapping[str, Any] | None = None,
    dropout: Mapping[str, Any] | None = None,
) -> tuple[int | None, list[tuple[int, int, int, int]]]:
    """What :func:`random_lq_degradations` does to an lq patch of ``shape``, drawn but not done:
    ``(jpeg quality or None, dropout holes)``. The cached sets (data.cached_batches) apply the
    holes on the device from the same draws.

    Draws, in order: JPEG ``rng.random(2)`` (fire, quality); dropout ``rng.random(2)`` (fire,
    hole count) then ``rng.random((holes_max, 3))`` (geometry), whether or not they fire.
    """
    quality = None
    holes: list[tuple[int, int, int, int]] = []
    if jpeg is not None:
        fire, u_quality = rng.random(2)
        if fire < jpeg["prob"]:
            quality = _uniform_int(u_quality, *jpeg["quality"])
    if dropout is not None:
        fire, u_count = rng.random(2)
        lo, hi = dropout["holes"]
        count = _uniform_int(u_count, lo, hi) if fire < dropout["prob"] else 0
        draws = rng.random((hi, 3))
        holes = dropout_holes(shape, draws[:count], dropout["size"])
    return quality, holes


def random_lq_degradations(
    lq: np.ndarray,
    rng: np.random.Generator,
    jpeg: Mapping[str, Any] | None = None,
    dropout: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """JPEG (``jpeg``) then coarse dropout (``dropout``) of the lq patch, each with its ``prob``.

    ``jpeg`` / ``dropout`` are dicts as :func:`check_jpeg` / :func:`check_dropout` return, or
    None (then nothing is drawn for them); the draws are :func:`plan_lq_degradations`'.
    """
    quality, holes = plan_lq_degradations(lq.shape, rng, jpeg, dropout)
    if quality is not None:
        lq = jpeg_compress(lq, quality)
    if holes:
        lq = np.array(lq, copy=True)
        value = fill_value(lq.dtype, dropout.get("fill", 0.0))
        for y, x, sy, sx in holes:
            lq[y : y + sy, x : x + sx] = value
    return lq
