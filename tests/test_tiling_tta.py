"""Overlapped tiled inference and 8-way dihedral test-time augmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.tiling import tile_forward
from utils.tta import dihedral, dihedral_inverse, tta_forward


def _small_net(out_ch: int = 3) -> nn.Module:
    """Three 3x3 convs (receptive radius 3) and a x2 PixelShuffle; random, not equivariant."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, out_ch * 4, 3, padding=1),
        nn.PixelShuffle(2),
    ).eval()


# ---- tiling ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "w", "tile"),
    [(24, 16, 8), (23, 17, 8), (20, 30, 7), (9, 40, 12), (16, 16, 5)],
)
@torch.no_grad()
def test_tiled_equals_untiled_when_overlap_covers_receptive_field(h, w, tile):
    net = _small_net()
    lq = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    full = net(lq)
    tiled = tile_forward(net, lq, scale=2, tile=tile, tile_overlap=4)
    assert tiled.shape == full.shape == (2, 3, 2 * h, 2 * w)
    assert torch.allclose(tiled, full, atol=1e-5)
    # Overlap 3 is exactly the receptive radius: still exact.
    assert torch.allclose(tile_forward(net, lq, 2, tile, tile_overlap=3), full, atol=1e-5)
    # Without overlap the tile seams show (so the comparison above can fail).
    seams = tile_forward(net, lq, scale=2, tile=tile, tile_overlap=0)
    assert (seams - full).abs().max().item() > 1e-3


@torch.no_grad()
def test_tiles_are_one_size_and_bounded():
    net = _small_net()
    lq = torch.rand(1, 3, 20, 14)
    sizes: list[tuple[int, int]] = []

    def fn(x):
        sizes.append(tuple(x.shape[-2:]))
        return net(x)

    tile_forward(fn, lq, scale=2, tile=8, tile_overlap=2)
    # Windows of 8 + 2*2 + 1 (blend) = 13 px, one at a time by default: rows start at 0 and 7,
    # columns at 0 and 1 (the 14-px side still needs two windows of 13).
    assert sizes == [(13, 13)] * 4


@torch.no_grad()
def test_output_channels_come_from_fn():
    net = _small_net(out_ch=1)
    lq = torch.rand(1, 3, 15, 21)
    out = tile_forward(net, lq, scale=2, tile=6, tile_overlap=4)
    assert out.shape == (1, 1, 30, 42)
    assert torch.allclose(out, net(lq), atol=1e-5)


def test_no_tiling_calls_fn_once():
    lq = torch.rand(1, 3, 10, 12)
    calls = []

    def fn(x):
        calls.append(x)
        return x.repeat_interleave(3, -1).repeat_interleave(3, -2)

    for tile in (0, -1, 12, 100):
        calls.clear()
        out = tile_forward(fn, lq, scale=3, tile=tile)
        assert len(calls) == 1 and calls[0] is lq
        assert out.shape == (1, 3, 30, 36)


def test_tiling_errors_are_clear():
    lq = torch.rand(1, 3, 10, 10)
    with pytest.raises(ValueError, match=r"scale=2 expected \(N, C, 18, 18\)"):  # 9-px windows
        tile_forward(lambda x: x, lq, scale=2, tile=4, tile_overlap=2)
    with pytest.raises(ValueError, match="tile_overlap"):
        tile_forward(lambda x: x, lq, scale=1, tile=4, tile_overlap=-1)
    with pytest.raises(ValueError, match="NCHW"):
        tile_forward(lambda x: x, lq[0], scale=1, tile=4)


# ---- dihedral helpers -----------------------------------------------------------------------


def test_dihedral_transforms_by_hand():
    x = torch.tensor([[1, 2, 3], [4, 5, 6]])
    # k=1: a counter-clockwise quarter turn; k=4: mirror left-right; k=5: mirror then turn.
    assert torch.equal(dihedral(x, 0), x)
    assert torch.equal(dihedral(x, 1), torch.tensor([[3, 6], [2, 5], [1, 4]]))
    assert torch.equal(dihedral(x, 2), torch.tensor([[6, 5, 4], [3, 2, 1]]))
    assert torch.equal(dihedral(x, 4), torch.tensor([[3, 2, 1], [6, 5, 4]]))
    assert torch.equal(dihedral(x, 5), torch.tensor([[1, 4], [2, 5], [3, 6]]))  # the transpose
    outs = {tuple(dihedral(torch.arange(9).view(3, 3), k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8  # all eight symmetries are distinct


def test_dihedral_inverse_round_trips_non_square():
    x = torch.rand(2, 3, 4, 7)
    for k in range(8):
        assert torch.equal(dihedral_inverse(dihedral(x, k), k), x)
        assert torch.equal(dihedral(dihedral_inverse(x, k), k), x)
    with pytest.raises(ValueError, match="0..7"):
        dihedral(x, 8)


# ---- TTA ------------------------------------------------------------------------------------


def test_tta_of_equivariant_op_is_the_op():
    x = torch.rand(2, 3, 5, 9)

    def nearest(t):
        return F.interpolate(t, scale_factor=3, mode="nearest")

    out = tta_forward(nearest, x)
    assert out.shape == (2, 3, 15, 27)
    assert torch.allclose(out, nearest(x), atol=1e-7)


def test_tta_of_non_equivariant_op_is_the_explicit_average():
    torch.manual_seed(7)
    weight = torch.rand(2, 3, 3, 3)  # random, asymmetric kernel

    def fn(t):
        return F.conv2d(t, weight, padding=1)

    x = torch.rand(1, 3, 6, 10)
    flip_w = lambda t: t.flip(-1)  # noqa: E731
    rot = lambda t, n: torch.rot90(t, n, (-2, -1))  # noqa: E731
    pairs = [
        (lambda t: t, lambda t: t),
        (lambda t: rot(t, 1), lambda t: rot(t, 3)),
        (lambda t: rot(t, 2), lambda t: rot(t, 2)),
        (lambda t: rot(t, 3), lambda t: rot(t, 1)),
        (flip_w, flip_w),
        (lambda t: t.transpose(-1, -2), lambda t: t.transpose(-1, -2)),
        (lambda t: t.flip(-2), lambda t: t.flip(-2)),
        (lambda t: t.flip(-1).flip(-2).transpose(-1, -2), lambda t: t.transpose(-1, -2).flip(-2).flip(-1)),
    ]
    expected = sum(inv(fn(fwd(x))) for fwd, inv in pairs) / 8
    out = tta_forward(fn, x)
    assert out.shape == (1, 2, 6, 10)
    assert torch.allclose(out, expected, atol=1e-6)
    assert (out - fn(x)).abs().max().item() > 1e-2  # the op really is not equivariant


@torch.no_grad()
def test_tta_with_upscaling_net_non_square():
    net = _small_net()
    x = torch.rand(1, 3, 7, 12)
    out = tta_forward(net, x)
    manual = sum(dihedral_inverse(net(dihedral(x, k)), k) for k in range(8)) / 8
    assert out.shape == (1, 3, 14, 24)
    assert torch.allclose(out, manual, atol=1e-6)
