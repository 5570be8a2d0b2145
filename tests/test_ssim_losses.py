"""SSIMLoss / MSSSIMLoss on real images, against the project's SSIM metric and a float64 MS-SSIM."""

from __future__ import annotations

import inspect

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED
from pytorch_msssim import ms_ssim

from data.image_io import img2tensor, read_image
from losses.ssim_loss import DEFAULT_MS_WEIGHTS, MSSSIMLoss, SSIMLoss, gaussian_window, ms_ssim_min_side
from utils.color import rgb_to_y
from utils.metrics.psnr_ssim import calculate_ssim
from utils.registry import LOSS_REGISTRY

SET5 = SHARED / "data" / "Set5"
DIV2K = SHARED / "data" / "DIV2K_valid_256crop" / "HR"

# The loss computes in float32, calculate_ssim in float64 with the same formula. The largest gap
# measured on Set5 (bicubic x2, blur and noise pairs; RGB and Y) is 1.1e-6 (baby): float32
# rounding in the blurred E[x^2] - E[x]^2 terms. With pytorch-msssim's own default window (built
# with float32 exp) it was up to 8.6e-6 even on float64 inputs, which is why the loss builds its
# window in float64 (losses.ssim_loss.gaussian_window); on float64 data that agrees to 1e-14.
# 2e-6 still catches any change of settings: crop_border=1 moves SSIM by 2.5e-5, win_size 9 by
# 4.7e-4, sigma 1.6 by 1.6e-3, K2 = 0.031 by 7.4e-4.
SSIM_TOL = 2e-6


def _load(path) -> torch.Tensor:
    return img2tensor(read_image(path))[None]


def _bicubic_pair(name: str, size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """(bicubic x2 upscaling of Set5's LR image, HR image), centre ``size`` crops, 1x3xHxW float32.

    The crop keeps the float64 reference metric fast; the pair stays a real SR output.
    """
    hr = read_image(SET5 / "HR" / f"{name}.png")
    lr = read_image(SET5 / "LR_bicubic" / "X2" / f"{name}x2.png")
    up = cv2.resize(lr, (hr.shape[1], hr.shape[0]), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    top, left = (hr.shape[0] - size) // 2, (hr.shape[1] - size) // 2
    crop = (slice(top, top + size), slice(left, left + size))
    return img2tensor(up[crop])[None], img2tensor(hr[crop])[None]


def _noisy(img: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (img + sigma * torch.randn(img.shape, generator=g)).clamp(0, 1)


def _blurred(img: torch.Tensor, sigma: float) -> torch.Tensor:
    arr = img[0].permute(1, 2, 0).numpy()
    return torch.from_numpy(cv2.GaussianBlur(arr, (0, 0), sigma)).permute(2, 0, 1)[None]


# ---- SSIM against the project's metric ---------------------------------------------------------
# calculate_ssim uses the same Gaussian 11x11 / sigma 1.5 window, 'valid' filtering, C1/C2 from
# K = (0.01, 0.03) on its [0, 255] scale (= data_range 1 on [0, 1]) and averages per-channel means,
# so 1 - SSIMLoss equals it with crop_border=0 and test_y_channel=False (RGB), or
# test_y_channel=True with the same y_range when y_only=True. The inputs are not rounded.


@pytest.mark.parametrize("name", ["baby", "bird", "butterfly", "head", "woman"])
def test_ssim_loss_equals_one_minus_project_ssim_on_set5_bicubic(name):
    sr, gt = _bicubic_pair(name)
    loss = SSIMLoss()(sr, gt)
    metric = calculate_ssim(sr, gt, crop_border=0, test_y_channel=False)
    assert 0.005 < loss.item() < 0.5  # a real, non-trivial difference
    assert loss.item() == pytest.approx(1.0 - metric.item(), abs=SSIM_TOL)
    # The default metric settings (Y channel) give another value: the comparison can tell them apart.
    assert abs(loss.item() - (1.0 - calculate_ssim(sr, gt).item())) > 10 * SSIM_TOL


def test_ssim_loss_batch_equals_mean_of_project_ssim_over_degradations():
    gt = _load(SET5 / "HR" / "head.png")
    degraded = torch.cat([_blurred(gt, 1.2), _noisy(gt, 0.05)])
    batch_gt = gt.expand_as(degraded)
    metric = calculate_ssim(degraded, batch_gt, crop_border=0, test_y_channel=False)
    assert metric[0].item() != pytest.approx(metric[1].item(), abs=1e-3)
    assert SSIMLoss()(degraded, batch_gt).item() == pytest.approx(1.0 - metric.mean().item(), abs=SSIM_TOL)


@pytest.mark.parametrize("y_range", ["studio", "full"])
def test_y_only_matches_ssim_on_y_images_and_the_y_metric(y_range):
    sr, gt = _bicubic_pair("butterfly")
    rgb = SSIMLoss()(sr, gt).item()
    y = SSIMLoss(y_only=True, y_range=y_range)(sr, gt).item()
    on_y_images = SSIMLoss()(rgb_to_y(sr, y_range), rgb_to_y(gt, y_range)).item()
    metric = calculate_ssim(sr, gt, crop_border=0, test_y_channel=True, y_range=y_range).item()
    assert abs(y - rgb) > 1e-3
    assert y == pytest.approx(on_y_images, abs=1e-7)
    assert y == pytest.approx(1.0 - metric, abs=SSIM_TOL)
    ms_y = MSSSIMLoss(y_only=True, y_range=y_range)(sr, gt).item()
    assert ms_y == pytest.approx(MSSSIMLoss()(rgb_to_y(sr, y_range), rgb_to_y(gt, y_range)).item(), abs=1e-7)
    assert abs(ms_y - MSSSIMLoss()(sr, gt).item()) > 1e-4


def test_identical_images_give_zero_loss():
    gt = _load(DIV2K / "0801.png")
    assert SSIMLoss()(gt, gt.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert MSSSIMLoss()(gt, gt.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert SSIMLoss(y_only=True)(gt, gt.clone()).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("loss_cls", [SSIMLoss, MSSSIMLoss])
def test_gradients_are_finite_nonzero_and_descend(loss_cls):
    gt = _load(DIV2K / "0805.png")
    sr = _noisy(gt, 0.05).requires_grad_(True)
    loss_fn = loss_cls()
    loss = loss_fn(sr, gt)
    loss.backward()
    grad = sr.grad
    assert torch.isfinite(grad).all()
    assert grad.abs().sum().item() > 0
    # A small step against the gradient must lower the loss (the gradient points the right way).
    with torch.no_grad():
        stepped = sr - 0.01 * grad / grad.abs().max()
        assert loss_fn(stepped, gt).item() < loss.item()


def test_half_inputs_and_autocast_still_compute_in_float32():
    sr, gt = _bicubic_pair("bird")
    reference = SSIMLoss()(sr, gt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = SSIMLoss()(sr, gt)
        ms_under_autocast = MSSSIMLoss()(sr, gt)
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(reference.item(), abs=1e-7)
    assert ms_under_autocast.item() == pytest.approx(MSSSIMLoss()(sr, gt).item(), abs=1e-7)
    half = SSIMLoss()(sr.half(), gt.half())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(reference.item(), abs=2e-3)  # only the fp16 input rounding differs


# ---- MS-SSIM ------------------------------------------------------------------------------------


def _reference_ms_ssim(x: torch.Tensor, y: torch.Tensor, weights) -> float:
    """Textbook MS-SSIM (Wang et al. 2003) in float64 for even-sided images: per-scale contrast-
    structure terms, luminance only at the coarsest scale, 2x2 average pooling between scales."""
    x, y = x.double(), y.double()
    r = torch.arange(-5, 6, dtype=torch.float64)
    g = torch.exp(-(r**2) / (2 * 1.5**2))
    g = g / g.sum()
    c = x.shape[1]
    gh, gv = g.view(1, 1, 1, 11).expand(c, 1, 1, 11), g.view(1, 1, 11, 1).expand(c, 1, 11, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, 'valid' region
        return F.conv2d(F.conv2d(t, gh, groups=c), gv, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    value = torch.ones(x.shape[0], c, dtype=torch.float64)
    for level, w in enumerate(weights):
        mu_x, mu_y = blur(x), blur(y)
        var_x = blur(x * x) - mu_x**2
        var_y = blur(y * y) - mu_y**2
        cov = blur(x * y) - mu_x * mu_y
        cs = ((2 * cov + c2) / (var_x + var_y + c2)).mean(dim=(2, 3))
        if level == len(weights) - 1:
            lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
            term = (lum * (2 * cov + c2) / (var_x + var_y + c2)).mean(dim=(2, 3))
        else:
            term = cs
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        value = value * term.clamp(min=0) ** w
    return value.mean().item()


def test_ms_ssim_matches_float64_reference_and_is_monotone_in_noise():
    gt = _load(DIV2K / "0810.png")
    assert gt.shape[-2:] == (256, 256)
    losses = []
    for sigma in (0.02, 0.05, 0.1):
        sr = _noisy(gt, sigma, seed=1)
        value = 1.0 - MSSSIMLoss()(sr, gt).item()
        assert 0.0 < value < 1.0
        assert value == pytest.approx(_reference_ms_ssim(sr, gt, DEFAULT_MS_WEIGHTS), abs=1e-5)
        losses.append(1.0 - value)
    assert losses[0] < losses[1] < losses[2]
    assert losses[2] - losses[0] > 0.01


def test_fewer_scales_lower_the_minimum_and_match_ms_ssim():
    weights = [0.2, 0.3, 0.5]
    assert ms_ssim_min_side(11, 5) == 161
    assert ms_ssim_min_side(11, 3) == 41
    assert MSSSIMLoss(weights=weights).min_side == 41
    gt = _load(DIV2K / "0820.png")
    sr = _blurred(gt, 1.0)
    # 96x96: too small for pytorch-msssim's fixed 5-scale assert, fine for 3 scales.
    small = MSSSIMLoss(weights=weights)(sr[..., :96, :96], gt[..., :96, :96]).item()
    assert small == pytest.approx(1.0 - _reference_ms_ssim(sr[..., :96, :96], gt[..., :96, :96], weights), abs=1e-5)
    # The few-scale path equals pytorch-msssim where both run, odd sides (padded pooling) included.
    bird_gt = _load(SET5 / "HR" / "bird.png")[..., :283, :287]
    bird_sr = _noisy(bird_gt, 0.04)
    loss = MSSSIMLoss(weights=weights)
    win = gaussian_window(11, 1.5, 3)
    own = loss._few_scale_ms_ssim(bird_sr, bird_gt, win).item()
    assert own == pytest.approx(ms_ssim(bird_sr, bird_gt, data_range=1.0, win=win, weights=weights).item(), abs=1e-7)
    assert loss(bird_sr, bird_gt).item() == pytest.approx(1.0 - own, abs=1e-6)


def test_small_patch_error_names_minimum_and_options():
    gt = _load(DIV2K / "0830.png")
    sr = _noisy(gt, 0.03)
    with pytest.raises(ValueError) as info:
        MSSSIMLoss()(sr[..., :128, :200], gt[..., :128, :200])
    message = str(info.value)
    for part in ("161", "128x200", "gt_size", "weights", "win_size", "at most 4 scale"):
        assert part in message
    # The boundary: 160 px fails, 161 px works (pytorch-msssim needs side > 160).
    with pytest.raises(ValueError, match="161"):
        MSSSIMLoss()(sr[..., :160, :160], gt[..., :160, :160])
    assert 0.0 < MSSSIMLoss()(sr[..., :161, :161], gt[..., :161, :161]).item() < 1.0
    with pytest.raises(ValueError, match="at least 41 pixels"):
        MSSSIMLoss(weights=[0.2, 0.3, 0.5])(sr[..., :40, :64], gt[..., :40, :64])
    with pytest.raises(ValueError, match="win_size=11"):
        SSIMLoss()(sr[..., :10, :64], gt[..., :10, :64])


# ---- interface ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_cls", [SSIMLoss, MSSSIMLoss])
def test_declared_inputs_registry_and_signature(loss_cls):
    assert loss_cls.inputs == ("sr", "gt")
    assert LOSS_REGISTRY.get(loss_cls.__name__) is loss_cls
    assert list(inspect.signature(loss_cls.forward).parameters) == ["self", "sr", "gt"]


def test_bad_options_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        SSIMLoss(win_size=10)
    with pytest.raises(ValueError, match="win_sigma"):
        MSSSIMLoss(win_sigma=0)
    with pytest.raises(ValueError, match="weights"):
        MSSSIMLoss(weights=[])
    with pytest.raises(ValueError, match="'studio', 'full'"):
        SSIMLoss(y_range="pc")
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="differ in shape"):
        SSIMLoss()(x, x[..., :30])
    with pytest.raises(ValueError, match="NCHW"):
        SSIMLoss()(x[0], x[0])
    with pytest.raises(ValueError, match="RGB"):
        SSIMLoss(y_only=True)(x[:, :1], x[:, :1])
    assert np.isfinite(SSIMLoss(win_size=7)(x, x.flip(-1)).item())
