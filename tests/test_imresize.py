"""MATLAB-compatible bicubic: the Set5 benchmark LR images and hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data.image_io import read_image
from data.imresize import contributions, cubic, imresize, imresize_tensor, output_length

SET5 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "Set5"
NAMES = ["baby", "bird", "butterfly", "head", "woman"]


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.int32)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matches_set5_reference_lr(scale: int) -> None:
    for name in NAMES:
        hr = read_image(SET5 / "HR" / f"{name}.png")
        ref = _to_u8(read_image(SET5 / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png"))
        h, w = ref.shape[:2]
        # The reference LR was made from HR mod-cropped to a multiple of the scale.
        assert hr.shape[0] // scale == h and hr.shape[1] // scale == w
        hr = hr[: h * scale, : w * scale]

        ours = _to_u8(imresize(hr, 1.0 / scale))
        assert ours.shape == ref.shape
        diff = np.abs(ours - ref)
        assert diff.max() <= 2, f"{name} x{scale}: max diff {diff.max()}"
        assert (diff > 1).mean() < 1e-3, f"{name} x{scale}: {(diff > 1).mean():.5f} off by >1"

        t = torch.from_numpy(hr.transpose(2, 0, 1).copy())[None]
        ours_t = _to_u8(imresize_tensor(t, 1.0 / scale)[0].numpy().transpose(1, 2, 0))
        diff_t = np.abs(ours_t - ref)
        assert diff_t.max() <= 2 and (diff_t > 1).mean() < 1e-3


def test_cubic_kernel_values() -> None:
    # Keys kernel, a = -0.5, evaluated by hand.
    x = np.array([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5])
    expect = np.array([1.0, 0.8671875, 0.2265625, 0.0, -0.0703125, -0.0234375, 0.0, 0.0])
    np.testing.assert_allclose(cubic(x), expect, atol=1e-12)
    np.testing.assert_allclose(cubic(-x), expect, atol=1e-12)


def test_constant_image_stays_constant() -> None:
    img = np.full((23, 17, 3), 0.37, dtype=np.float32)
    for scale in (0.5, 1 / 3, 0.25, 0.7, 2.0, 3.0, 1.5):
        out = imresize(img, scale)
        assert out.shape == (output_length(23, scale), output_length(17, scale), 3)
        np.testing.assert_allclose(out, 0.37, atol=1e-6)


@pytest.mark.parametrize("factor", [2, 3])
def test_ramp_interior_is_linear(factor: int) -> None:
    # Output pixel x (0-based) is centred on input coordinate factor * x + (factor - 1) / 2;
    # a symmetric normalised kernel reproduces a linear ramp exactly away from the borders.
    n = 60
    ramp = np.tile(np.arange(n, dtype=np.float64)[None, :], (4, 1))
    out = imresize(ramp, 1.0 / factor)
    assert out.shape[1] == n // factor
    x = np.arange(n // factor)
    interior = slice(3, n // factor - 3)
    np.testing.assert_allclose(out[0, interior], (factor * x + (factor - 1) / 2)[interior], atol=1e-10)


def test_upscale_x2_uses_hand_computed_weights() -> None:
    # For x2 upscaling, even 1-based output pixel 2m samples u = m + 0.25, so its neighbours
    # m-1, m, m+1, m+2 sit at distances 1.25, 0.25, 0.75, 1.75 → weights from cubic().
    rng = np.random.default_rng(0)
    sig = rng.random(20)
    out = imresize(sig[None, :], 2.0)[0]
    w = np.array([-0.0703125, 0.8671875, 0.2265625, -0.0234375])
    for m in range(2, 18):  # 1-based m, neighbours stay inside the signal
        expect = w @ sig[m - 2 : m + 2]  # 0-based m-2 .. m+1 are 1-based m-1 .. m+2
        assert out[2 * m - 1] == pytest.approx(expect, abs=1e-12)


def test_symmetric_padding_at_border() -> None:
    # x2 upscale, first output pixel: u = 0.75; taps at 1-based -1, 0, 1, 2 (distances 1.75,
    # 0.75, -0.25, -1.25) mirror to 2, 1, 1, 2, since MATLAB pads ... 2 1 | 1 2 ... (edge repeated).
    idx, w = contributions(10, 20, 2.0, True)
    taps = dict.fromkeys(range(10), 0.0)
    for i, wi in zip(idx[0], w[0]):
        taps[int(i)] += wi
    assert taps[0] == pytest.approx(0.2265625 + 0.8671875)
    assert taps[1] == pytest.approx(-0.0234375 - 0.0703125)
    assert sum(abs(v) for k, v in taps.items() if k > 1) == 0


def test_tensor_version_matches_numpy_and_keeps_layout() -> None:
    rng = np.random.default_rng(1)
    img = rng.random((2, 3, 21, 30)).astype(np.float64)
    for scale in (0.25, 1 / 3, 2.0):
        t_out = imresize_tensor(torch.from_numpy(img), scale)
        for b in range(2):
            ref = imresize(img[b].transpose(1, 2, 0), scale).transpose(2, 0, 1)
            np.testing.assert_allclose(t_out[b].numpy(), ref, atol=1e-10)
        chw = imresize_tensor(torch.from_numpy(img[0]), scale)
        np.testing.assert_allclose(chw.numpy(), t_out[0].numpy(), atol=1e-12)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(TypeError, match="float"):
        imresize(np.zeros((4, 4), dtype=np.uint8), 0.5)
    with pytest.raises(ValueError, match="scale"):
        imresize(np.zeros((4, 4), dtype=np.float32), 0)
    with pytest.raises(TypeError, match="float"):
        imresize_tensor(torch.zeros(1, 4, 4, dtype=torch.uint8), 0.5)
