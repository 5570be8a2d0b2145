"""Overlapped tiled inference, so large images fit in memory."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def tile_forward(
    fn: Callable[[Tensor], Tensor], lq: Tensor, scale: int, tile: int, tile_overlap: int = 16
) -> Tensor:
    """Run ``fn`` on overlapping tiles of the NCHW input ``lq`` and stitch the results.

    The input is cut into a grid of ``tile`` x ``tile`` LR tiles (the last row/column may be
    smaller). Each tile is passed to ``fn`` grown by ``tile_overlap`` LR pixels on every side
    (clamped at the image border); only the tile's own ``tile*scale`` region of the result is
    kept. When the network's receptive-field radius is at most ``tile_overlap`` the output
    equals ``fn(lq)`` up to float rounding. ``tile <= 0`` or a tile covering the whole image
    means a single ``fn(lq)`` call. Tiles run one at a time; the output is allocated once, with
    the channel count, dtype and device of ``fn``'s output.
    """
    if lq.dim() != 4:
        raise ValueError(f"tile_forward expects an NCHW tensor, got shape {tuple(lq.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"tile_forward: scale must be a positive int, got {scale!r}")
    if tile_overlap < 0:
        raise ValueError(f"tile_forward: tile_overlap must be >= 0, got {tile_overlap!r}")
    n, _, h, w = lq.shape
    if tile <= 0 or (tile >= h and tile >= w):
        return fn(lq)

    out: Tensor | None = None
    for y0 in range(0, h, tile):
        y1 = min(y0 + tile, h)
        ey0, ey1 = max(y0 - tile_overlap, 0), min(y1 + tile_overlap, h)
        for x0 in range(0, w, tile):
            x1 = min(x0 + tile, w)
            ex0, ex1 = max(x0 - tile_overlap, 0), min(x1 + tile_overlap, w)
            res = fn(lq[:, :, ey0:ey1, ex0:ex1])
            expected = (n, (ey1 - ey0) * scale, (ex1 - ex0) * scale)
            if res.dim() != 4 or (res.shape[0], res.shape[2], res.shape[3]) != expected:
                raise ValueError(
                    f"tile_forward: fn turned a {ey1 - ey0}x{ex1 - ex0} tile into shape "
                    f"{tuple(res.shape)}; with scale={scale} expected (N, C, "
                    f"{expected[1]}, {expected[2]})"
                )
            if out is None:
                out = torch.empty((n, res.shape[1], h * scale, w * scale), dtype=res.dtype, device=res.device)
            oy, ox = (y0 - ey0) * scale, (x0 - ex0) * scale
            out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = res[
                :, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
            ]
    return out
