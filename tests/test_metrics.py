"""PSNR, SSIM, L1 and gradient-L1 metrics against hand and independent numpy/scipy references."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from utils.metrics.pixel_metrics import calculate_gradient_l1, calculate_l1
from utils.metrics.psnr_ssim import calculate_psnr, calculate_ssim
from utils.registry import METRIC_REGISTRY

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ALL_METRICS = (calculate_psnr, calculate_ssim, calculate_l1, calculate_gradient_l1)


def _y_numpy(rgb: np.ndarray) -> np.ndarray:
    """BT.601 studio-swing Y on [0, 255] from an (H, W, 3) RGB array on [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def _ssim_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two (H, W) arrays on [0, 255], Gaussian 11x11 sigma 1.5, valid region only."""
    g = cv2.getGaussianKernel(11, 1.5)
    window = g @ g.T
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(x):
        return ndimage.correlate(x, window, mode="constant")[5:-5, 5:-5]

    mu1, mu2 = filt(a), filt(b)
    s11 = filt(a * a) - mu1**2
    s22 = filt(b * b) - mu2**2
    s12 = filt(a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(m.mean())


# ---- PSNR -----------------------------------------------------------------------------------


def test_psnr_constant_difference_is_exact():
    a = torch.full((2, 3, 4, 4), 0.5)
    b = a.clone()
    b[0] += 0.1  # 25.5 levels: 20 log10(255 / 25.5) = 20 dB
    b[1] += 0.01  # 2.55 levels: 40 dB
    psnr = calculate_psnr(a, b, test_y_channel=False)
    assert psnr.dtype == torch.float64 and psnr.shape == (2,)
    assert psnr[0].item() == pytest.approx(20.0, abs=1e-5)
    assert psnr[1].item() == pytest.approx(40.0, abs=1e-4)
    # On Y (studio swing) an equal RGB shift d becomes d * 219/255.
    psnr_y = calculate_psnr(a, b)[0].item()
    assert psnr_y == pytest.approx(20 * math.log10(255 / (25.5 * 219 / 255)), abs=1e-5)


def test_psnr_identical_is_inf():
    a = torch.rand(1, 3, 5, 5)
    assert math.isinf(calculate_psnr(a, a.clone()).item())


@pytest.mark.parametrize("y_range", ["studio", "full"])
def test_psnr_y_channel_matches_numpy(y_range):
    rng = np.random.default_rng(3)
    x, y = rng.random((2, 9, 7, 3)), rng.random((2, 9, 7, 3))
    if y_range == "studio":
        yx, yy = _y_numpy(x), _y_numpy(y)
    else:
        w = np.array([0.299, 0.587, 0.114])
        yx, yy = (x @ w) * 255, (y @ w) * 255
    mse = ((yx - yy) ** 2).mean(axis=(1, 2))
    expected = 10 * np.log10(255.0**2 / mse)
    to_t = lambda arr: torch.from_numpy(arr).permute(0, 3, 1, 2).float()  # noqa: E731
    got = calculate_psnr(to_t(x), to_t(y), y_range=y_range).numpy()
    assert np.allclose(got, expected, atol=1e-4)


# ---- SSIM -----------------------------------------------------------------------------------


def test_ssim_identical_is_one():
    a = torch.rand(2, 3, 16, 20)
    assert torch.allclose(calculate_ssim(a, a.clone()), torch.ones(2, dtype=torch.float64), atol=1e-12)


def test_ssim_matches_scipy_reference_rgb_and_y():
    rng = np.random.default_rng(4)
    x = rng.random((2, 24, 19, 3))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    ty = torch.from_numpy(y).permute(0, 3, 1, 2).float()
    x32, y32 = tx.double().permute(0, 2, 3, 1).numpy(), ty.double().permute(0, 2, 3, 1).numpy()
    got = calculate_ssim(tx, ty, test_y_channel=False).numpy()
    for i in range(2):
        ref = np.mean([_ssim_numpy(x32[i, ..., c] * 255, y32[i, ..., c] * 255) for c in range(3)])
        assert got[i] == pytest.approx(ref, abs=1e-6)
        assert 0.05 < ref < 0.95  # a non-trivial value
    got_y = calculate_ssim(tx, ty, crop_border=3).numpy()
    for i in range(2):
        ref = _ssim_numpy(_y_numpy(x32[i])[3:-3, 3:-3], _y_numpy(y32[i])[3:-3, 3:-3])
        assert got_y[i] == pytest.approx(ref, abs=1e-6)


def test_ssim_constant_images_by_hand():
    # Flat images have zero variance, so SSIM is the luminance term alone.
    a, b = torch.full((1, 1, 12, 12), 0.5), torch.full((1, 1, 12, 12), 0.625)
    m1, m2 = 0.5 * 255, 0.625 * 255  # both exact in float32
    c1 = (0.01 * 255) ** 2
    expected = (2 * m1 * m2 + c1) / (m1**2 + m2**2 + c1)
    assert calculate_ssim(a, b, test_y_channel=False).item() == pytest.approx(expected, abs=1e-9)


def test_ssim_too_small_is_an_error():
    with pytest.raises(ValueError, match="11x11"):
        calculate_ssim(torch.rand(1, 3, 14, 14), torch.rand(1, 3, 14, 14), crop_border=2)


# ---- L1 / gradient L1 -----------------------------------------------------------------------


def test_l1_and_gradient_l1_values():
    a = torch.full((1, 3, 6, 6), 0.3)
    assert calculate_l1(a, a + 0.1, test_y_channel=False).item() == pytest.approx(0.1, abs=1e-7)
    assert calculate_l1(a, a + 0.1).item() == pytest.approx(0.1 * 219 / 255, abs=1e-7)
    assert calculate_gradient_l1(a, a + 0.1).item() == pytest.approx(0.0, abs=1e-12)
    # Ramp of 0.1 per pixel vs flat: Sobel x (÷8) is 0.1 inside, 0.05 on the edge columns.
    ramp = (torch.arange(5, dtype=torch.float32) * 0.1).expand(1, 1, 5, 5).clone()
    got = calculate_gradient_l1(ramp, torch.zeros_like(ramp), test_y_channel=False).item()
    assert got == pytest.approx(0.5 * np.mean([0.05, 0.1, 0.1, 0.1, 0.05]), abs=1e-7)


# ---- crop_border, dtypes, errors, registry ---------------------------------------------------


def test_crop_border_removes_the_edge():
    torch.manual_seed(5)
    a = torch.rand(1, 3, 20, 20)
    b = a.clone()
    b[..., :2, :] = 0.0
    b[..., :, -2:] = 1.0
    assert math.isinf(calculate_psnr(a, b, crop_border=2).item())
    assert calculate_psnr(a, b, crop_border=1).item() < 40
    assert calculate_l1(a, b, crop_border=2).item() == 0.0
    assert calculate_ssim(a, b, crop_border=2).item() == pytest.approx(1.0, abs=1e-12)
    # crop_border=c equals the metric of the explicitly cropped images.
    c = torch.rand(1, 3, 20, 20)
    assert calculate_psnr(a, c, crop_border=3).item() == pytest.approx(
        calculate_psnr(a[..., 3:-3, 3:-3], c[..., 3:-3, 3:-3]).item(), abs=1e-9
    )


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_dtypes_chw_and_many_channels(metric):
    torch.manual_seed(6)
    a, b = torch.rand(2, 4, 16, 16), torch.rand(2, 4, 16, 16)
    ref = metric(a, b, test_y_channel=False)
    assert ref.dtype == torch.float64 and ref.shape == (2,)
    assert torch.allclose(metric(a.double(), b.double(), test_y_channel=False), ref, rtol=1e-5)
    half = metric(a.half(), b.half(), test_y_channel=False)
    assert half.dtype == torch.float64 and torch.allclose(half, ref, rtol=1e-2)
    assert metric(a[1], b[1], test_y_channel=False).item() == pytest.approx(ref[1].item(), rel=1e-9)


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_bad_input_messages(metric):
    a = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\(1, 3, 16, 16\) vs \(1, 3, 16, 15\)"):
        metric(a, a[..., :15])
    with pytest.raises(TypeError, match="float"):
        metric((a * 255).to(torch.uint8), (a * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="crop_border=8"):
        metric(a, a, crop_border=8)
    with pytest.raises(ValueError, match="3 channels"):
        metric(torch.rand(1, 4, 16, 16), torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="y_range"):
        metric(a, a, y_range="hdr")


def test_registered_under_basicsr_names():
    for fn in ALL_METRICS:
        assert METRIC_REGISTRY.get(fn.__name__) is fn
    assert METRIC_REGISTRY.get("CALCULATE_PSNR") is calculate_psnr
    assert calculate_psnr.higher_is_better and not calculate_l1.higher_is_better


def _read_rgb(path: Path) -> torch.Tensor:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read {path}"
    return torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)


def test_set5_bicubic_baseline_is_in_published_range():
    hr = _read_rgb(SHARED_DATA / "Set5" / "HR" / "baby.png")
    lr = _read_rgb(SHARED_DATA / "Set5" / "LR_bicubic" / "X2" / "babyx2.png")
    sr = F.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    sr = sr.mul(255).round().div(255)
    psnr = calculate_psnr(sr, hr, crop_border=2).item()
    ssim = calculate_ssim(sr, hr, crop_border=2).item()
    # Published bicubic x2 on "baby" (MATLAB bicubic): about 37.1 dB / 0.95 SSIM on Y.
    assert 35.5 < psnr < 38.5
    assert 0.92 < ssim < 0.98
    assert calculate_psnr(sr, hr, crop_border=2, test_y_channel=False).item() < psnr
