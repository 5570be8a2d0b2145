"""SAMLoss, calculate_sam and TVLoss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from losses.spectral_loss import SAMLoss
from losses.tv_loss import TVLoss
from utils.metrics.spectral_metrics import calculate_sam
from utils.registry import LOSS_REGISTRY, METRIC_REGISTRY

# SAMLoss clamps the cosine to 1 - 1e-7, so equal directions give arccos(1 - 1e-7) (≈ 4.9e-4 rad in float32).
CLAMP_FLOOR = 5e-4


def pixels(*vectors: tuple[float, ...]) -> torch.Tensor:
    """A 1xCx1xP image whose P pixels are the given C-vectors."""
    return torch.tensor(vectors, dtype=torch.float64).t().reshape(1, len(vectors[0]), 1, len(vectors))


@pytest.mark.parametrize(
    "x, y, angle",
    [
        ((1.0, 0.0), (0.0, 1.0), math.pi / 2),
        ((1.0, 1.0), (1.0, 0.0), math.pi / 4),
        ((2.0, 4.0), (1.0, 2.0), 0.0),
        ((1.0, 0.0), (-1.0, 0.0), math.pi),
        ((1.0, 2.0, 2.0), (2.0, 1.0, 2.0), math.acos(8 / 9)),
    ],
)
def test_known_angles(x, y, angle):
    a, b = pixels(x), pixels(y)
    sam = calculate_sam(a, b)
    assert sam.shape == (1,) and sam.dtype == torch.float64
    assert sam.item() == pytest.approx(angle, abs=1e-12)
    assert SAMLoss()(a.float(), b.float()).item() == pytest.approx(angle, abs=CLAMP_FLOOR)


def test_mean_over_pixels_and_zero_vectors():
    a = pixels((1.0, 0.0), (1.0, 1.0), (3.0, 3.0), (0.0, 0.0), (0.0, 0.0))
    b = pixels((0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (0.0, 0.0), (0.0, 2.0))
    # both zero → 0; one zero → π/2
    expected = (math.pi / 2 + math.pi / 4 + 0.0 + 0.0 + math.pi / 2) / 5
    assert calculate_sam(a, b).item() == pytest.approx(expected, abs=1e-12)
    assert SAMLoss()(a, b).item() == pytest.approx(expected, abs=CLAMP_FLOOR)


def test_per_image_values():
    a = torch.cat([pixels((1.0, 0.0), (1.0, 0.0)), pixels((1.0, 1.0), (0.0, 1.0))])
    b = torch.cat([pixels((0.0, 1.0), (1.0, 0.0)), pixels((1.0, 0.0), (0.0, 5.0))])
    torch.testing.assert_close(calculate_sam(a, b), torch.tensor([math.pi / 4, math.pi / 8], dtype=torch.float64))


def test_metric_equals_arccos_formula_on_random_batch():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, 4, 5, 5, generator=g, dtype=torch.float64)
    b = torch.rand(2, 4, 5, 5, generator=g, dtype=torch.float64)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    torch.testing.assert_close(calculate_sam(a, b), torch.arccos(cos).mean(dim=(1, 2)), rtol=0, atol=1e-9)


def test_loss_equals_metric_mean_on_random_batch():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 5, 8, 8, generator=g), torch.rand(3, 5, 8, 8, generator=g)
    value = SAMLoss()(a, b)
    assert value.dim() == 0 and value.dtype == torch.float32
    assert value.item() == pytest.approx(calculate_sam(a, b).mean().item(), rel=1e-5)


def test_finite_gradient_when_pred_equals_target():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 4, 6, 6, generator=g)
    target[0, :, 0, 0] = 0.0  # a black pixel too
    pred = target.clone().requires_grad_()
    value = SAMLoss()(pred, target)
    value.backward()
    assert 0 <= value.item() < CLAMP_FLOOR
    assert torch.isfinite(pred.grad).all()


def test_gradient_turns_pred_towards_target():
    # angle = π/4 - atan2(p2, p1) for target (1, 1): d/dp1 = p2 / |p|² = 0.4, d/dp2 = -p1 / |p|² = -0.8 at (1, 0.5).
    pred = pixels((1.0, 0.5)).requires_grad_()
    SAMLoss()(pred, pixels((1.0, 1.0))).backward()
    torch.testing.assert_close(pred.grad.flatten(), torch.tensor([0.4, -0.8], dtype=torch.float64), atol=1e-6, rtol=0)


def test_sam_needs_two_channels():
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="SAMLoss.*2 channels"):
        SAMLoss()(x, x)
    with pytest.raises(ValueError, match="calculate_sam.*2 channels"):
        calculate_sam(x, x)
    with pytest.raises(ValueError, match="SAMLoss: eps"):
        SAMLoss(eps=0.0)


def test_calculate_sam_crop_border():
    a = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    b = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    a[:, 0] = 1.0  # every pixel (1, 0)
    b[:, 1] = 1.0  # border pixels (0, 1): orthogonal
    b[:, :, 1:3, 1:3] = torch.tensor([2.0, 0.0], dtype=torch.float64).view(1, 2, 1, 1)  # inner 2x2 parallel
    assert calculate_sam(a, b).item() == pytest.approx(12 * (math.pi / 2) / 16, abs=1e-12)
    assert calculate_sam(a, b, crop_border=1).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="crop_border"):
        calculate_sam(a, b, crop_border=2)


def test_tv_of_hand_made_image():
    x = torch.tensor([[[[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]]]])
    # vertical |3-1|, |3-2|, |3-4| → mean 4/3; horizontal |2-1|, |4-2|, 0, 0 → mean 3/4
    assert TVLoss()(x).item() == pytest.approx(4 / 3 + 3 / 4, rel=1e-6)
    # a second, constant channel halves both means
    two = torch.cat([x, torch.full_like(x, 7.0)], dim=1)
    assert TVLoss()(two).item() == pytest.approx((4 / 3 + 3 / 4) / 2, rel=1e-6)
    assert TVLoss()(torch.full((2, 3, 5, 5), 0.3)).item() == 0.0


def test_tv_inputs_and_errors():
    assert TVLoss.inputs == ("sr",)
    with pytest.raises(ValueError, match="TVLoss"):
        TVLoss()(torch.rand(1, 3, 1, 5))


def test_registered():
    assert LOSS_REGISTRY.get("SAMLoss") is SAMLoss
    assert LOSS_REGISTRY.get("TVLoss") is TVLoss
    assert METRIC_REGISTRY.get("calculate_sam") is calculate_sam
    assert calculate_sam.higher_is_better is False


def test_psnr_and_ssim_over_four_bands():
    from utils.metrics.psnr_ssim import calculate_psnr, calculate_ssim

    g = torch.Generator().manual_seed(4)
    gt = torch.rand(1, 4, 16, 16, generator=g, dtype=torch.float64)
    pred = gt.clone()
    pred[:, 3] += 0.1  # only the NIR band is off
    # MSE over all 4 bands = 0.01 / 4 on the [0, 1] scale
    expected = 10 * math.log10(1.0 / (0.01 / 4))
    assert float(calculate_psnr(pred, gt, test_y_channel=False)) == pytest.approx(expected, rel=1e-9)
    # SSIM is the mean of the per-band SSIMs: three perfect bands and one that is not
    nir = float(calculate_ssim(pred[:, 3:], gt[:, 3:], test_y_channel=False))
    assert float(calculate_ssim(pred, gt, test_y_channel=False)) == pytest.approx((3 + nir) / 4, rel=1e-9)
    assert nir < 1.0
