"""Bicubic resizing that reproduces MATLAB's ``imresize`` (the standard way SR benchmarks make LR).

MATLAB details reproduced: cubic kernel with a = -0.5; when shrinking, the kernel is stretched
by 1/scale (antialiasing); output pixel x (1-based) samples input coordinate
u = x / scale + 0.5 * (1 - 1 / scale); weights are normalised per output pixel; out-of-range
taps are mirrored with the edge pixel repeated (symmetric padding); the output length is
ceil(in_len * scale); rows are resized before columns.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

# A guard against 255 * (1/3) = 85.00000000000001 turning into 86 output pixels.
_SIZE_EPS = 1e-9


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def output_length(in_len: int, scale: float) -> int:
    """MATLAB's output size for a given scale: ceil(in_len * scale)."""
    return max(1, math.ceil(in_len * scale - _SIZE_EPS))


@lru_cache(maxsize=256)
def contributions(
    in_len: int, out_len: int, scale: float, antialiasing: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel, the 0-based input indices and weights that make it.

    Returns ``(indices, weights)``, both of shape (out_len, taps); cached per arguments.
    """
    kernel_width = 4.0
    if scale < 1 and antialiasing:
        kernel_width /= scale
        kernel = lambda d: scale * cubic(scale * d)  # noqa: E731
    else:
        kernel = cubic

    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = kernel(u[:, None] - idx)
    weights /= weights.sum(axis=1, keepdims=True)

    # Symmetric padding: index sequence 1..n, n..1 repeated (1-based), then 0-based.
    period = 2 * in_len
    m = np.mod(idx.astype(np.int64) - 1, period)
    idx0 = np.where(m < in_len, m, period - 1 - m)

    keep = np.any(weights != 0, axis=0)
    idx0, weights = idx0[:, keep], weights[:, keep]
    idx0.setflags(write=False)
    weights.setflags(write=False)
    return idx0, weights


def _check_scale(scale: float) -> float:
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"imresize: scale must be a positive number, got {scale}")
    return scale


def _resize_axis_np(x: np.ndarray, axis: int, scale: float, antialiasing: bool) -> np.ndarray:
    in_len = x.shape[axis]
    idx, w = contributions(in_len, output_length(in_len, scale), scale, antialiasing)
    x = np.moveaxis(x, axis, 0)
    out = np.zeros((idx.shape[0],) + x.shape[1:], dtype=np.float64)
    bshape = (-1,) + (1,) * (x.ndim - 1)
    # One gather per tap keeps memory at the size of the output, not output x taps.
    for p in range(idx.shape[1]):
        out += w[:, p].reshape(bshape) * x[idx[:, p]]
    return np.moveaxis(out, 0, axis)


def imresize(img: np.ndarray, scale: float, antialiasing: bool = True) -> np.ndarray:
    """Resize a float HW or HWC image by ``scale`` the way MATLAB's ``imresize`` does.

    Computes in float64 and returns the input's float dtype. Values are not clipped (bicubic
    overshoots slightly at edges), matching MATLAB for float input.
    """
    img = np.asarray(img)
    if not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"imresize expects a float image (e.g. read_image's [0, 1] float32), got {img.dtype}")
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize expects an HW or HWC array, got shape {img.shape}")
    scale = _check_scale(scale)
    out = _resize_axis_np(img.astype(np.float64), 0, scale, antialiasing)
    out = _resize_axis_np(out, 1, scale, antialiasing)
    return out.astype(img.dtype)


def _resize_axis_torch(t: torch.Tensor, dim: int, scale: float, antialiasing: bool) -> torch.Tensor:
    in_len = t.shape[dim]
    idx_np, w_np = contributions(in_len, output_length(in_len, scale), scale, antialiasing)
    idx = torch.from_numpy(np.ascontiguousarray(idx_np)).to(t.device)
    w = torch.from_numpy(np.ascontiguousarray(w_np)).to(t.device, t.dtype)
    bshape = [1] * t.ndim
    bshape[dim] = -1
    out = None
    for p in range(idx.shape[1]):
        term = t.index_select(dim, idx[:, p]) * w[:, p].reshape(bshape)
        out = term if out is None else out + term
    return out


def imresize_tensor(t: torch.Tensor, scale: float, antialiasing: bool = True) -> torch.Tensor:
    """Torch version of :func:`imresize` for CHW or NCHW float tensors (resizes H and W).

    Computes in the tensor's own dtype and on its device; shares the cached weights.
    """
    if not torch.is_floating_point(t):
        raise TypeError(f"imresize_tensor expects a float tensor, got {t.dtype}")
    if t.ndim not in (3, 4):
        raise ValueError(f"imresize_tensor expects CHW or NCHW, got shape {tuple(t.shape)}")
    scale = _check_scale(scale)
    out = _resize_axis_torch(t, t.ndim - 2, scale, antialiasing)
    return _resize_axis_torch(out, t.ndim - 1, scale, antialiasing)


def resize_matrix(in_len: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """The (out_len, in_len) float64 matrix ``R`` with ``R @ x`` = :func:`imresize` of ``x``
    along its first axis: the contributions as a dense matrix (a mirrored tap adds to its edge
    pixel). Resizing a batch of patches is then two matrix products (``R @ X @ R.T``), two
    kernels on a GPU instead of one gather and multiply-add per tap."""
    scale = _check_scale(scale)
    idx, w = contributions(in_len, output_length(in_len, scale), scale, antialiasing)
    matrix = np.zeros((idx.shape[0], in_len), dtype=np.float64)
    np.add.at(matrix, (np.arange(idx.shape[0])[:, None], idx), w)
    return matrix
