"""Feathered, equal-size, batched tiling (utils/tiling.py) against hand-computed references, and
the inference benchmark's CPU smoke run."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.tiling import DEFAULT_TILE_OVERLAP, blend_width, tile_forward

# Layout used by the hand-computed tests: tile 8, overlap 4 → blend 2, windows of 8 + 2*4 + 2 = 18
# LR pixels. A 26-pixel side needs ceil((26 - 18) / 8) + 1 = 2 windows: starts 0 and 8. Their
# overlap is [8, 18), its centre 13, so the blend band is LR [12, 14]; context [8, 12) of the right
# window and [14, 18) of the left one get weight 0.
TILE, OVERLAP, SIDE = 8, 4, 26
RADIUS = 5  # box-blur radius: more than the overlap, so the two windows disagree in the band


def box_blur(x: torch.Tensor, radius: int = RADIUS) -> torch.Tensor:
    """Mean over a (2r+1)^2 window with zero padding: a receptive field of radius ``radius``."""
    k = 2 * radius + 1
    weight = torch.full((x.shape[1], 1, k, k), 1.0 / k**2, dtype=x.dtype)
    return F.conv2d(x, weight, padding=radius, groups=x.shape[1])


def blur_up2(x: torch.Tensor) -> torch.Tensor:
    """Box blur, then nearest x2: an 'SR network' whose receptive field exceeds the overlap."""
    return F.interpolate(box_blur(x), scale_factor=2, mode="nearest")


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                         nn.PixelShuffle(2)).eval()


def test_layout_constants() -> None:
    assert blend_width(OVERLAP) == 2  # the hand computations below rely on it
    assert blend_width(0) == 0  # no overlap: a hard cut, as before
    assert DEFAULT_TILE_OVERLAP > 0


@torch.no_grad()
def test_feathered_band_is_the_hand_computed_blend_1d() -> None:
    lq = torch.rand(1, 2, 6, SIDE, generator=torch.Generator().manual_seed(1))  # 6 rows: one window row
    out = tile_forward(blur_up2, lq, scale=2, tile=TILE, tile_overlap=OVERLAP)
    left = blur_up2(lq[..., 0:18])  # HR columns 0..35
    right = blur_up2(lq[..., 8:26])  # HR columns 16..51
    # Band LR [12, 14] = HR [24, 28]; weight of the right window at HR column p is
    # (p + 0.5 - 24) / 4: 1/8, 3/8, 5/8, 7/8 for p = 24..27.
    for p, w_right in zip(range(24, 28), (1 / 8, 3 / 8, 5 / 8, 7 / 8)):
        expected = (1 - w_right) * left[..., p] + w_right * right[..., p - 16]
        torch.testing.assert_close(out[..., p], expected, rtol=0, atol=1e-6)
        # The two windows really disagree there, so a cut or a wrong weight would be caught.
        assert (left[..., p] - right[..., p - 16]).abs().max() > 1e-2
    # Outside the band one window alone, including the image borders (weight 1, no ramp).
    torch.testing.assert_close(out[..., :24], left[..., :24], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[..., 28:], right[..., 12:], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[..., 0], blur_up2(lq)[..., 0], rtol=0, atol=1e-6)


@torch.no_grad()
def test_feathered_corner_is_the_product_of_the_axis_weights() -> None:
    lq = torch.rand(1, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    out = tile_forward(box_blur, lq, scale=1, tile=TILE, tile_overlap=OVERLAP)
    tl, tr = box_blur(lq[..., 0:18, 0:18]), box_blur(lq[..., 0:18, 8:26])
    bl, br = box_blur(lq[..., 8:26, 0:18]), box_blur(lq[..., 8:26, 8:26])
    # scale 1: band LR [12, 14], weight of the later window (p + 0.5 - 12) / 2 → 1/4 at 12, 3/4 at 13.
    y, x = 12, 13
    wy, wx = 1 / 4, 3 / 4  # bottom-row weight at row 12, right-column weight at column 13
    expected = ((1 - wy) * (1 - wx) * tl[..., y, x] + (1 - wy) * wx * tr[..., y, x - 8]
                + wy * (1 - wx) * bl[..., y - 8, x] + wy * wx * br[..., y - 8, x - 8])
    torch.testing.assert_close(out[..., y, x], expected, rtol=0, atol=1e-6)
    assert (tl[..., y, x] - br[..., y - 8, x - 8]).abs().max() > 1e-3


def _recording(fn, shapes: list, starts: list | None = None):
    def wrapped(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        if starts is not None:  # channel 0 holds the row index, channel 1 the column index
            starts.extend((int(x[i, 0, 0, 0]), int(x[i, 1, 0, 0])) for i in range(x.shape[0]))
        return fn(x)

    return wrapped


def _coords(h: int, w: int) -> torch.Tensor:
    ys = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w)
    xs = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w)
    return torch.stack((ys, xs, torch.zeros(h, w)))[None]


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap", "window", "ys", "xs"),
    [
        # 18-px windows; side 40: ceil(22/8) + 1 = 4 windows, starts round(i * 22 / 3) = 0, 7, 15, 22
        (40, 26, 8, 4, (18, 18), [0, 7, 15, 22], [0, 8]),
        # side 20 with 13-px windows (8 + 2*2 + 1): 2 windows at 0 and 7; side 14: at 0 and 1
        (20, 14, 8, 2, (13, 13), [0, 7], [0, 1]),
        # a side shorter than the window (12 + 2*3 + 2 = 20) is not cut: one window of the full height;
        # side 40: ceil(20/12) + 1 = 3 windows at 0, 10, 20
        (9, 40, 12, 3, (9, 20), [0], [0, 10, 20]),
    ],
)
@torch.no_grad()
def test_tiles_have_equal_sizes_and_even_starts(h, w, tile, overlap, window, ys, xs) -> None:
    shapes: list = []
    starts: list = []
    lq = _coords(h, w)
    out = tile_forward(_recording(lambda t: t, shapes, starts), lq, 1, tile, overlap)
    assert set(shapes) == {(1, 3, *window)}  # every tile the same size, so tiles can be stacked
    assert starts == [(y, x) for y in ys for x in xs]
    torch.testing.assert_close(out, lq, rtol=1e-6, atol=1e-6)  # identity stays identity after blending


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("tile_batch", [1, 2, 3, 5, 100])
@torch.no_grad()
def test_tile_batch_calls_and_result(n: int, tile_batch: int) -> None:
    net = _conv_net()
    lq = torch.rand(n, 3, 40, 26, generator=torch.Generator().manual_seed(4))
    tiles = 4 * 2  # the 40 x 26 layout of the test above
    ref_shapes: list = []
    ref = tile_forward(_recording(net, ref_shapes), lq, 2, 8, 4, tile_batch=1)
    assert len(ref_shapes) == tiles
    shapes: list = []
    out = tile_forward(_recording(net, shapes), lq, 2, 8, 4, tile_batch=tile_batch)
    assert len(shapes) == math.ceil(tiles / tile_batch)
    sizes = [min(tile_batch, tiles - i * tile_batch) for i in range(len(shapes))]
    assert [s[0] for s in shapes] == [k * n for k in sizes]  # k tiles of all n images per call
    assert all(s[1:] == (3, 18, 18) for s in shapes)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # receptive radius 2 <= overlap 4: tiled equals whole, batched or not
    torch.testing.assert_close(out, net(lq), rtol=0, atol=1e-5)


@torch.no_grad()
def test_low_precision_output_is_summed_in_float32() -> None:
    lq = torch.rand(1, 2, 6, SIDE, generator=torch.Generator().manual_seed(5))

    def fn(x: torch.Tensor) -> torch.Tensor:
        return blur_up2(x).to(torch.bfloat16)

    out = tile_forward(fn, lq, scale=2, tile=TILE, tile_overlap=OVERLAP)
    assert out.dtype == torch.bfloat16  # the dtype of fn's output, as before
    left, right = fn(lq[..., 0:18]).float(), fn(lq[..., 8:26]).float()
    band = torch.tensor([1 / 8, 3 / 8, 5 / 8, 7 / 8])
    blend32 = (1 - band) * left[..., 24:28] + band * right[..., 8:12]
    # Summed in float32 and rounded to bf16 once, at the end:
    assert torch.equal(out[..., 24:28], blend32.to(torch.bfloat16))
    # Summing in bf16 (rounding after each product and each sum) lands elsewhere for some pixels,
    # so the equality above can fail.
    bf = torch.bfloat16
    blend16 = ((1 - band).to(bf) * left[..., 24:28].to(bf)).to(bf) + (band.to(bf) * right[..., 8:12].to(bf)).to(bf)
    assert not torch.equal(blend16.to(bf), blend32.to(bf))


def test_tile_batch_and_overlap_errors() -> None:
    lq = torch.rand(1, 3, 30, 30)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="tile_batch"):
            tile_forward(lambda x: x, lq, 1, 8, 4, tile_batch=bad)
    with pytest.raises(ValueError, match="tile_overlap"):
        tile_forward(lambda x: x, lq, 1, 8, True)
    with pytest.raises(ValueError, match=r"2 stacked 18x18 tile\(s\) of 1 image\(s\).*expected \(N, C, 36, 36\)"):
        tile_forward(lambda x: x, lq, 2, 8, 4, tile_batch=2)


# ---- scripts/benchmark_inference.py ---------------------------------------------------------


def test_benchmark_inference_cpu_smoke(tmp_path) -> None:
    from scripts import benchmark_inference

    path = tmp_path / "bench.jsonl"
    rc = benchmark_inference.main(["--sizes", "32x32", "--nets", "edsr-m", "--tile", "16", "--tile-overlap", "4",
                                   "--tile-batch", "3", "--device", "cpu", "--no-compile", "--iters", "1",
                                   "--warmup", "1", "--json", str(path)])
    assert rc == 0
    (line,) = path.read_text().splitlines()
    result = json.loads(line)
    for key in ("net", "input", "scale", "tile", "tile_overlap", "tiles", "plain_mp_per_s", "fast_mp_per_s",
                "speedup", "psnr_fast_vs_plain", "valid", "plain", "fast"):
        assert key in result, key
    assert result["net"] == "edsr-m" and result["input"] == "32x32" and result["scale"] == 2
    assert result["tiles"] == 4  # 26-px windows (16 + 2*4 + 2) on a 32-px side: 2 x 2
    assert result["fast"]["tile_batch"] == 3 and result["fast"]["precision"] == "fp16"
    assert result["fast"]["channels_last"] is True and result["plain"]["precision"] == "fp32"
    assert result["psnr_fast_vs_plain"] >= 50 and result["valid"] is True
    assert result["plain_mp_per_s"] > 0 and result["fast_mp_per_s"] > 0
    assert result["speedup"] == pytest.approx(result["fast_mp_per_s"] / result["plain_mp_per_s"])


# ---- validation (models/validation.py) -------------------------------------------------------


def test_validation_inference_uses_val_tile_batch() -> None:
    import contextlib
    from types import SimpleNamespace

    from pydantic import ValidationError

    from models.validation import ValidationMixin
    from utils.options import ValOptions

    assert ValOptions().tile_overlap == DEFAULT_TILE_OVERLAP and ValOptions().tile_batch == 1
    with pytest.raises(ValidationError):
        ValOptions(tile_batch=0)

    class Runner(ValidationMixin):  # the parts of a runner that inference() reads
        memory_format = torch.contiguous_format
        opt = SimpleNamespace(val=ValOptions(tile=8, tile_overlap=4, tile_batch=3), scale=2)

        def autocast(self):
            return contextlib.nullcontext()

    net = _conv_net()
    shapes: list = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shapes.append(tuple(x.shape))
            return net(x)

    lq = torch.rand(1, 3, 40, 26, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        out = Runner().inference(lq, Recorder())
        torch.testing.assert_close(out, net(lq), rtol=0, atol=1e-5)  # radius 2 <= overlap 4
    assert [s[0] for s in shapes] == [3, 3, 2]  # 8 tiles, 3 per forward pass
