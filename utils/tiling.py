"""Overlapped, feathered, batched tiled inference, so large images fit in memory.

Layout along each axis (LR pixels): windows of one size ``S = tile + 2 * tile_overlap + blend``
(or the whole side when that is shorter) are spread evenly from edge to edge, as few as keep
each window's stride at most ``tile``. Where two windows overlap, the ``tile_overlap`` pixels next
to each window's inner edge are context only (weight 0: a network sees zero padding there, so
those outputs are wrong), and a ``blend``-pixel band in the middle of the overlap cross-fades
linearly from one window to the other. Sides that touch the image border get no ramp (weight 1),
so the border is treated exactly as in a whole-image pass.

Why both a discarded margin and a blend band (docs/inference.md has the measurements): a plain
cut at the middle of the overlap is exact for a network whose receptive field fits in the margin,
but real SR networks have receptive fields far wider than any affordable margin; their error at
a window edge decays with the distance from it, and a cut puts the largest remaining error of two
different windows side by side (a visible seam). Cross-fading over a band behind a clean margin
averages the two windows' small errors instead and leaves no step. Keeping the full
``tile_overlap`` as a zero-weight margin preserves the old guarantee: if the receptive-field radius
is at most ``tile_overlap`` the result equals ``fn(lq)`` up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["DEFAULT_TILE_OVERLAP", "tile_forward"]

# Chosen by measurement (scripts/measure_tile_overlap.py; tables in docs/inference.md). With the
# Real-ESRGAN anime 6B RRDBNet, the smallest overlap at which Set5/Set14 tiled at 64 and 128 LR px
# is at most 1 level off a whole-image pass (> 99 dB); with every seam at the minimum overlap
# (DIV2K crops) it stays above 72 dB and within 4 levels, where 16 gave 51.7 dB and 43 levels.
DEFAULT_TILE_OVERLAP = 32

# Width of the cross-fade band as a fraction of ``tile_overlap``. At equal window size, splitting
# the overlap into context and band barely moves PSNR up to about this ratio and costs beyond it
# (docs/inference.md); the band is there to remove the step at the seam.
BLEND_RATIO = 0.5


def blend_width(tile_overlap: int, ratio: float = BLEND_RATIO) -> int:
    """LR pixels of the cross-fade band used with ``tile_overlap`` pixels of discarded context
    (``ratio * tile_overlap`` rounded half up: 1 → 1, 3 → 2, 5 → 3)."""
    return math.floor(ratio * tile_overlap + 0.5)


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of equal windows covering ``[0, size)`` with steps of at most ``stride``.

    Evenly spread rather than "step by ``stride``, then shift the last one in": the same number of
    windows, but every seam gets the surplus overlap as extra context, not just the last one.
    """
    if window >= size:
        return [0]
    count = math.ceil((size - window) / stride) + 1
    return [round(i * (size - window) / (count - 1)) for i in range(count)]


def _layout(h: int, w: int, tile: int, tile_overlap: int, blend: int) -> tuple[tuple[int, int], list[int], list[int]]:
    """Window size (LR) and the window starts along y and x for an ``h`` x ``w`` image."""
    wy, wx = (min(tile + 2 * tile_overlap + blend, side) for side in (h, w))
    return (wy, wx), _starts(h, wy, tile), _starts(w, wx, tile)


def _ramp(length: int, scale: int, start: int, seam: float, blend: int, device: torch.device) -> Tensor:
    """Weight of the window *after* a seam at HR pixels ``start .. start+length-1``.

    ``seam`` is the LR centre of the overlap; the weight rises linearly from 0 to 1 across the
    ``blend``-pixel band centred there (a hard step at the centre when ``blend`` is 0). Sampled at HR
    pixel centres, so the fade is as smooth as the output resolution allows.
    """
    centres = torch.arange(start, start + length, device=device, dtype=torch.float64) + 0.5
    if blend == 0:
        return (centres >= seam * scale).to(torch.float32)
    low = (seam - blend / 2) * scale
    return ((centres - low) / (blend * scale)).clamp_(0, 1).to(torch.float32)


def _axis_weights(starts: list[int], window: int, scale: int, blend: int, device: torch.device) -> list[Tensor]:
    """Per-window 1-D HR weights along one axis: fade-in after the previous window, fade-out before
    the next one, 1 elsewhere (image borders included)."""
    weights = []
    for i, start in enumerate(starts):
        w = torch.ones(window * scale, device=device)
        if i > 0:  # seam with the previous window: the centre of their overlap
            seam = (start + starts[i - 1] + window) / 2
            w *= _ramp(window * scale, scale, start * scale, seam, blend, device)
        if i + 1 < len(starts):
            seam = (starts[i + 1] + start + window) / 2
            w *= 1 - _ramp(window * scale, scale, start * scale, seam, blend, device)
        weights.append(w)
    return weights


def _check_args(lq: Tensor, scale: int, tile_overlap: int, tile_batch: int) -> None:
    if lq.dim() != 4:
        raise ValueError(f"tile_forward expects an NCHW tensor, got shape {tuple(lq.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"tile_forward: scale must be a positive int, got {scale!r}")
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int) or tile_overlap < 0:
        raise ValueError(f"tile_forward: tile_overlap must be an int >= 0, got {tile_overlap!r}")
    if isinstance(tile_batch, bool) or not isinstance(tile_batch, int) or tile_batch < 1:
        raise ValueError(f"tile_forward: tile_batch must be an int >= 1, got {tile_batch!r}")


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _run_batch(fn: Callable[[Tensor], Tensor], lq: Tensor, boxes: list[tuple[int, int]], wh: tuple[int, int],
               scale: int) -> Tensor:
    """``fn`` on the windows at ``boxes`` (top, left) stacked along N: window-major, then image."""
    wy, wx = wh
    crops = [lq[:, :, y : y + wy, x : x + wx] for y, x in boxes]
    res = fn(crops[0] if len(crops) == 1 else torch.cat(crops, 0))
    expected = (len(boxes) * lq.shape[0], wy * scale, wx * scale)
    if res.dim() != 4 or (res.shape[0], res.shape[2], res.shape[3]) != expected:
        raise ValueError(
            f"tile_forward: fn turned {len(boxes)} stacked {wy}x{wx} tile(s) of {lq.shape[0]} image(s) into shape "
            f"{tuple(res.shape)}; with scale={scale} expected (N, C, {expected[1]}, {expected[2]}) with "
            f"N={expected[0]}"
        )
    return res


def _blend_windows(fn: Callable[[Tensor], Tensor], lq: Tensor, scale: int, window: tuple[int, int],
                   starts: tuple[list[int], list[int]], tile_batch: int, blend: int) -> Tensor:
    """Run every window through ``fn`` (``tile_batch`` at a time) and return sum(w * out) / sum(w)."""
    (wy, wx), (ys, xs) = window, starts
    n, _, h, w = lq.shape
    cells = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
    out = weight_sum = wts_y = wts_x = None
    for chunk in _chunks(cells, tile_batch):
        res = _run_batch(fn, lq, [(ys[iy], xs[ix]) for iy, ix in chunk], window, scale)
        if out is None:  # float32 sums whatever fn returns: fp16/bf16 would lose the blend's precision
            out = torch.zeros((n, res.shape[1], h * scale, w * scale), dtype=torch.float32, device=res.device)
            weight_sum = torch.zeros((h * scale, w * scale), dtype=torch.float32, device=res.device)
            wts_y = _axis_weights(ys, wy, scale, blend, res.device)
            wts_x = _axis_weights(xs, wx, scale, blend, res.device)
            out_dtype = res.dtype
        for j, (iy, ix) in enumerate(chunk):
            w2d = wts_y[iy][:, None] * wts_x[ix][None, :]
            rows = slice(ys[iy] * scale, (ys[iy] + wy) * scale)
            cols = slice(xs[ix] * scale, (xs[ix] + wx) * scale)
            out[:, :, rows, cols].addcmul_(res[j * n : (j + 1) * n].float(), w2d)
            weight_sum[rows, cols] += w2d
    out /= weight_sum
    return out if out_dtype == torch.float32 else out.to(out_dtype)


def _tile_forward(fn: Callable[[Tensor], Tensor], lq: Tensor, scale: int, tile: int, tile_overlap: int,
                  tile_batch: int, blend: int) -> Tensor:
    """:func:`tile_forward` with an explicit blend width (LR pixels); for measurements."""
    _check_args(lq, scale, tile_overlap, tile_batch)
    if blend < 0:
        raise ValueError(f"tile_forward: blend must be >= 0, got {blend!r}")
    if tile <= 0:
        return fn(lq)
    window, ys, xs = _layout(lq.shape[-2], lq.shape[-1], tile, tile_overlap, blend)
    if len(ys) == len(xs) == 1:  # one window is the whole image
        return fn(lq)
    return _blend_windows(fn, lq, scale, window, (ys, xs), tile_batch, blend)


def tile_forward(
    fn: Callable[[Tensor], Tensor],
    lq: Tensor,
    scale: int,
    tile: int,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    tile_batch: int = 1,
) -> Tensor:
    """Run ``fn`` on overlapping equal-size tiles of the NCHW input ``lq`` and blend the results.

    Args:
        fn: the network (or any function) mapping an (N, C, h, w) batch to (N, C', h*scale, w*scale).
        lq: the NCHW input; N may be above 1 (every tile is cut from all N images).
        scale: the upscaling factor of ``fn``.
        tile: LR stride between tiles; ``<= 0``, or a window covering the whole image, means a
            single ``fn(lq)`` call. Each window ``fn`` sees is ``tile + 2*tile_overlap + blend`` LR
            pixels per side (``blend = blend_width(tile_overlap)``), or the whole side when shorter;
            all windows have the same size, so they can be stacked.
        tile_overlap: LR pixels of context at each inner window edge that get weight 0. When the
            network's receptive-field radius is at most this, the output equals ``fn(lq)`` up to
            float rounding.
        tile_batch: windows per ``fn`` call, stacked along N (a call gets ``tile_batch * N``
            images; the last call may get fewer).

    The output has ``fn``'s channel count, dtype and device; it is summed in float32 (one output
    buffer and one H x W weight map) as ``sum(w * tile) / sum(w)``.
    """
    return _tile_forward(fn, lq, scale, tile, tile_overlap, tile_batch, blend_width(tile_overlap))
