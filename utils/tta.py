"""Test-time augmentation over the eight symmetries of the square (dihedral group D4)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _check_k(k: int) -> None:
    if not 0 <= k < 8:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k!r}")


def dihedral(x: Tensor, k: int) -> Tensor:
    """Transform ``k`` (0..7) of the last two axes: k % 4 counter-clockwise quarter turns,
    preceded by a horizontal flip when k >= 4. k = 0 is the identity."""
    _check_k(k)
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


def dihedral_inverse(x: Tensor, k: int) -> Tensor:
    """Undo ``dihedral(x, k)``: dihedral_inverse(dihedral(x, k), k) == x."""
    _check_k(k)
    x = torch.rot90(x, -(k % 4), dims=(-2, -1))
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return x


def tta_forward(fn: Callable[[Tensor], Tensor], lq: Tensor) -> Tensor:
    """Average of ``dihedral_inverse(fn(dihedral(lq, k)), k)`` over the 8 transforms.

    Works for non-square inputs (rotated inputs are W x H; the inverse turns the output back).
    """
    total: Tensor | None = None
    for k in range(8):
        out = dihedral_inverse(fn(dihedral(lq, k)), k)
        total = out.clone() if total is None else total.add_(out)
    return total / 8
