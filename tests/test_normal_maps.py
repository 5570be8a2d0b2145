"""NormalAngularLoss and calculate_normal_angle against angles worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from losses.normal_loss import NormalAngularLoss
from utils.metrics.normal_metrics import calculate_normal_angle
from utils.registry import LOSS_REGISTRY, METRIC_REGISTRY


def _map(vectors: list[tuple[float, float, float]], encoded: bool = True) -> torch.Tensor:
    """A 1 x len(vectors) normal map (1, 3, 1, W), encoded n * 0.5 + 0.5 unless told otherwise."""
    t = torch.tensor(vectors, dtype=torch.float64).t().reshape(1, 3, 1, len(vectors))
    return t * 0.5 + 0.5 if encoded else t


UP = (0.0, 0.0, 1.0)


def _tilt(degrees: float) -> tuple[float, float, float]:
    r = math.radians(degrees)
    return (0.0, math.sin(r), math.cos(r))


def test_angles_by_hand():
    # (0, 0, 1) against: itself 0°, (1, 0, 0) 90°, (0, sin 30°, cos 30°) 30°, (0, 0, -1) 180°
    pred = _map([UP, UP, UP, UP])
    ref = _map([UP, (1.0, 0.0, 0.0), _tilt(30.0), (0.0, 0.0, -1.0)])
    assert calculate_normal_angle(pred, ref).item() == pytest.approx((0 + 90 + 30 + 180) / 4, abs=1e-5)
    assert calculate_normal_angle(pred, ref, statistic="median").item() == pytest.approx(30.0, abs=1e-5)
    # unnormalised vectors count by direction only: (0, 0, 5) is "up"
    raw = _map([(0.0, 0.0, 5.0), (2.0, 0.0, 0.0)], encoded=False)
    assert calculate_normal_angle(raw, _map([UP, UP], encoded=False), encoded=False).item() == pytest.approx(45.0)
    assert METRIC_REGISTRY.get("calculate_normal_angle") is calculate_normal_angle
    assert calculate_normal_angle.higher_is_better is False


def test_crop_border_and_batch():
    pred = _map([_tilt(60.0), UP, UP, _tilt(60.0)]).repeat(2, 1, 3, 1)  # (2, 3, 3, 4)
    ref = _map([UP, UP, UP, UP]).repeat(2, 1, 3, 1)
    pred[1] = ref[1]
    got = calculate_normal_angle(pred, ref, crop_border=1)  # keeps the middle row's two middle pixels
    assert got.shape == (2,) and got.dtype == torch.float64
    assert got.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert calculate_normal_angle(pred, ref).tolist() == pytest.approx([30.0, 0.0], abs=1e-5)  # 2 of 4 at 60°


def test_loss_values_by_hand():
    pred, ref = _map([UP, UP]), _map([_tilt(30.0), (1.0, 0.0, 0.0)])
    cosine = NormalAngularLoss()(pred, ref).item()
    assert cosine == pytest.approx(((1 - math.cos(math.radians(30))) + 1.0) / 2, abs=1e-6)  # 0.5670
    angle = NormalAngularLoss(mode="angle")(pred, ref).item()
    assert angle == pytest.approx((math.radians(30) + math.pi / 2) / 2, abs=1e-5)
    assert LOSS_REGISTRY.get("NormalAngularLoss") is NormalAngularLoss


@pytest.mark.parametrize("mode", ["cosine", "angle"])
def test_gradients_are_finite_where_the_maps_agree(mode):
    pred = _map([UP, _tilt(10.0)]).requires_grad_(True)
    NormalAngularLoss(mode=mode)(pred, _map([UP, UP])).backward()
    assert torch.isfinite(pred.grad).all()
    # the tilted pixel is pulled back: its y (encoded: channel 1) gradient is positive
    assert pred.grad[0, 1, 0, 1] > 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="mode must be 'cosine' or 'angle'"):
        NormalAngularLoss(mode="degrees")
    with pytest.raises(ValueError, match="normal maps have 3 channels, got 1 and 1"):
        NormalAngularLoss()(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="statistic must be 'mean' or 'median'"):
        calculate_normal_angle(_map([UP]), _map([UP]), statistic="max")
