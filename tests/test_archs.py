"""Every registered arch: forward/backward; EDSR, RRDBNet, SRResNet: counts, keys, references.

Arch classes may declare ``test_kwargs: dict`` (small widths/depths merged into the constructor
kwargs here) and ``test_size: int`` (LR side for generators, default 16). Generators declare
``valid_scales``; discriminators ``input_sizes`` (only the smallest is fed here). Multi-view map
generators (PBRFusionNet: stacked views in, a dict of maps out) declare ``map_scales`` instead of
``valid_scales`` (which marks single-image generators, e.g. for the ONNX export) and
``test_input_channels``, the channels of their test input; every output map is checked.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import cv2
import numpy as np
import pytest
import spandrel
import torch
import torch.nn.functional as F

from archs.edsr_arch import EDSR
from archs.rrdbnet_arch import RRDBNet
from archs.srresnet_arch import SRResNet
from utils.registry import ARCH_REGISTRY
from utils.weights import load_network

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ANIME_6B = SHARED / "weights" / "realesrgan" / "RealESRGAN_x4plus_anime_6B.safetensors"
BABY_LR = SHARED / "data" / "Set5" / "LR_bicubic" / "X4" / "babyx4.png"
BABY_HR = SHARED / "data" / "Set5" / "HR" / "baby.png"


def _cases() -> list:
    cases = []
    for name, cls in ARCH_REGISTRY.items():
        if hasattr(cls, "valid_scales"):
            cases += [pytest.param(cls, "scale", s, id=f"{name}-x{s}") for s in cls.valid_scales]
        elif hasattr(cls, "map_scales"):
            cases += [pytest.param(cls, "maps", s, id=f"{name}-x{s}") for s in cls.map_scales]
        elif hasattr(cls, "input_sizes"):
            cases.append(pytest.param(cls, "size", min(cls.input_sizes), id=f"{name}-{min(cls.input_sizes)}"))
        else:
            cases.append(pytest.param(cls, None, None, id=f"{name}-undeclared"))
    return cases


GENERATORS = [cls for _, cls in ARCH_REGISTRY.items() if hasattr(cls, "valid_scales")]


def _default(cls: type, key: str, kwargs: dict):
    return kwargs.get(key, inspect.signature(cls).parameters[key].default)


def _forward_backward(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
    out = net(x)
    outs = list(out.values()) if isinstance(out, dict) else [out]
    assert all(torch.isfinite(o).all() for o in outs)
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    for pname, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    return out


@pytest.mark.parametrize(("cls", "kind", "value"), _cases())
def test_forward_backward(cls: type, kind: str | None, value: int) -> None:
    assert kind is not None, f"{cls.__name__} declares none of valid_scales, map_scales, input_sizes"
    torch.manual_seed(0)
    kwargs = dict(getattr(cls, "test_kwargs", {}))
    if kind == "scale":
        kwargs["scale"] = value
        size = getattr(cls, "test_size", 16)
        net = cls(**kwargs)
        x = torch.rand(2, _default(cls, "num_in_ch", kwargs), size, size)
        out = _forward_backward(net, x)
        assert out.shape == (2, _default(cls, "num_out_ch", kwargs), size * value, size * value)
    elif kind == "maps":
        kwargs["scale"] = value
        size = getattr(cls, "test_size", 16)
        out = _forward_backward(cls(**kwargs), torch.rand(2, cls.test_input_channels, size, size))
        assert out and all(o.shape[0] == 2 and o.shape[-2:] == (size * value, size * value) for o in out.values())
    else:
        net = cls(**kwargs)
        out = _forward_backward(net, torch.rand(2, _default(cls, "num_in_ch", kwargs), value, value))
        assert out.shape[0] == 2


@pytest.mark.parametrize("cls", GENERATORS, ids=lambda c: c.__name__)
def test_generators_take_four_bands(cls: type) -> None:
    torch.manual_seed(0)
    scale = min(cls.valid_scales)
    kwargs = {**getattr(cls, "test_kwargs", {}), "num_in_ch": 4, "num_out_ch": 4, "scale": scale}
    size = getattr(cls, "test_size", 16)
    out = _forward_backward(cls(**kwargs), torch.rand(2, 4, size, size))
    assert out.shape == (2, 4, size * scale, size * scale)


# --------------------------------------------------------------------------- parameter counts


def _conv(i: int, o: int, k: int = 3) -> int:
    return i * o * k * k + o


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"num_feat": 64, "num_block": 16, "scale": 2}, 1_369_859),
        ({"num_feat": 64, "num_block": 16, "scale": 4}, 1_517_571),
        ({"num_feat": 256, "num_block": 32, "scale": 2, "res_scale": 0.1}, 40_729_603),
    ],
)
def test_edsr_parameter_count(kwargs: dict, expected: int) -> None:
    nf, nb, scale = kwargs["num_feat"], kwargs["num_block"], kwargs["scale"]
    by_hand = _conv(3, nf) + 2 * nb * _conv(nf, nf) + _conv(nf, nf) + (scale // 2) * _conv(nf, 4 * nf)
    by_hand += _conv(nf, 3)
    assert by_hand == expected
    with torch.device("meta"):
        assert _count(EDSR(**kwargs)) == expected


def test_rrdbnet_parameter_count() -> None:
    nf, gc = 64, 32
    rdb = sum(_conv(nf + j * gc, gc) for j in range(4)) + _conv(nf + 4 * gc, nf)
    by_hand = _conv(3, nf) + 23 * 3 * rdb + 4 * _conv(nf, nf) + _conv(nf, 3)
    assert by_hand == 16_697_987
    with torch.device("meta"):
        assert _count(RRDBNet(num_block=23, scale=4)) == 16_697_987
        # pixel-unshuffle only widens conv_first
        assert _count(RRDBNet(scale=2)) == 16_697_987 + 3 * 3 * 64 * 9
        assert _count(RRDBNet(scale=1)) == 16_697_987 + 15 * 3 * 64 * 9


def test_srresnet_parameter_count() -> None:
    nc = 64
    block = 2 * _conv(nc, nc) + 2 * 2 * nc + 1  # two convs, two BNs, one shared PReLU
    by_hand = _conv(3, nc, 9) + 1 + 16 * block + _conv(nc, nc) + 2 * nc
    by_hand += 2 * (_conv(nc, 4 * nc) + 1) + _conv(nc, 3, 9)
    assert by_hand == 1_549_462
    assert _count(SRResNet()) == by_hand


# --------------------------------------------------------------------------- key names


def test_edsr_keys_are_basicsr_names() -> None:
    keys = list(EDSR(num_feat=8, num_block=2, scale=4).state_dict())
    expected = ["conv_first.weight", "conv_first.bias"]
    for n in range(2):
        expected += [f"body.{n}.conv{c}.{p}" for c in (1, 2) for p in ("weight", "bias")]
    expected += ["conv_after_body.weight", "conv_after_body.bias"]
    expected += ["upsample.0.weight", "upsample.0.bias", "upsample.2.weight", "upsample.2.bias"]
    expected += ["conv_last.weight", "conv_last.bias"]
    assert keys == expected
    x3 = EDSR(num_feat=8, num_block=1, scale=3).state_dict()
    assert x3["upsample.0.weight"].shape == (72, 8, 3, 3) and "upsample.2.weight" not in x3


def test_rrdbnet_keys_are_realesrgan_names() -> None:
    sd = RRDBNet(num_feat=8, num_block=2, num_grow_ch=4).state_dict()
    expected = {"conv_first", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"}
    expected |= {f"body.{n}.rdb{r}.conv{c}" for n in range(2) for r in (1, 2, 3) for c in range(1, 6)}
    assert set(sd) == {f"{m}.{p}" for m in expected for p in ("weight", "bias")}
    assert sd["body.1.rdb3.conv5.weight"].shape == (8, 8 + 4 * 4, 3, 3)
    for scale, in_ch in ((2, 12), (1, 48)):
        net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=scale)
        assert net.state_dict()["conv_first.weight"].shape[1] == in_ch


# --------------------------------------------------------------------------- EDSR behaviour


def _edsr_reference(
    sd: dict, x: torch.Tensor, mean: torch.Tensor, img_range: float, res_scale: float, nb: int
) -> torch.Tensor:
    """EDSR forward written with functional ops on the raw state dict."""

    def conv(t, name):
        return F.conv2d(t, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)

    feat = conv((x - mean) * img_range, "conv_first")
    res = feat
    for n in range(nb):
        res = res + res_scale * conv(F.relu(conv(res, f"body.{n}.conv1")), f"body.{n}.conv2")
    feat = feat + conv(res, "conv_after_body")
    feat = F.pixel_shuffle(conv(feat, "upsample.0"), 2)
    return conv(feat, "conv_last") / img_range + mean


def test_edsr_matches_functional_reference() -> None:
    torch.manual_seed(0)
    net = EDSR(num_feat=8, num_block=3, scale=2, res_scale=0.5, img_range=255.0).eval()
    x = torch.rand(1, 3, 10, 12)
    mean = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = _edsr_reference(net.state_dict(), x, mean, 255.0, 0.5, 3)
        torch.testing.assert_close(net(x), ref, rtol=1e-5, atol=1e-5)


def test_edsr_mean_and_residual_output() -> None:
    net = EDSR(num_in_ch=4, num_out_ch=4, num_feat=8, num_block=1, scale=2, residual_output=True)
    assert "mean_in" not in net.state_dict()  # non-persistent: BasicSR checkpoints load strictly
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        x = torch.rand(1, 4, 5, 6)
        out = net(x)
    # With zero weights a residual net returns nearest(x) exactly: the mean is not added back.
    expected = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(out, expected)
    net.residual_output = False  # the same weights as a plain EDSR return the mean (0 past RGB)
    with torch.no_grad():
        mean = torch.tensor([0.4488, 0.4371, 0.4040, 0.0]).view(1, 4, 1, 1)
        torch.testing.assert_close(net(x), mean.expand(1, 4, 10, 12))


def test_edsr_errors() -> None:
    with pytest.raises(ValueError, match="residual_output needs num_in_ch == num_out_ch"):
        EDSR(num_in_ch=4, num_out_ch=3, residual_output=True)
    with pytest.raises(ValueError, match="rgb_mean has 2 values"):
        EDSR(rgb_mean=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"scale 5 is not supported; valid scales: \[2, 3, 4\]"):
        EDSR(scale=5)


# --------------------------------------------------------------------------- SRResNet / RRDBNet


@pytest.mark.parametrize("block_type", ["standard", "res", "rcab", "rrdb"])
def test_srresnet_block_types(block_type: str) -> None:
    torch.manual_seed(0)
    net = SRResNet(num_in_ch=4, num_out_ch=4, scale=2, n_channels=16, n_blocks=2, block_type=block_type)
    out = _forward_backward(net, torch.rand(2, 4, 12, 12))
    assert out.shape == (2, 4, 24, 24)
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in net.body.modules())
    assert has_bn == (block_type == "standard")


def test_srresnet_unknown_block_type() -> None:
    with pytest.raises(ValueError, match="unknown block_type 'lka'; valid: standard, res, rcab, rrdb"):
        SRResNet(block_type="lka")


@pytest.mark.parametrize("scale", [1, 2])
def test_rrdbnet_pads_odd_sizes(scale: int) -> None:
    net = RRDBNet(scale=scale, num_feat=8, num_block=1, num_grow_ch=4).eval()
    x = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (1, 3, 7 * scale, 9 * scale)
        # The valid (unpadded) region agrees with a run on an already padded input.
        pad = (0, 3, 0, 1) if scale == 1 else (0, 1, 0, 1)  # up to multiples of 4 / 2
        padded = F.pad(x, pad, mode="reflect")
        torch.testing.assert_close(out, net(padded)[..., : 7 * scale, : 9 * scale])


def _baby_crop(size: int) -> torch.Tensor:
    img = cv2.imread(str(BABY_LR), cv2.IMREAD_COLOR)[40 : 40 + size, 40 : 40 + size, ::-1]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0


def test_realesrgan_anime_strict_load_and_forward() -> None:
    net = RRDBNet(num_feat=64, num_block=6, num_grow_ch=32, scale=4).eval()
    report = load_network(net, ANIME_6B, strict=True)
    assert len(report.loaded) == len(net.state_dict()) == 192
    assert not (report.missing or report.unexpected or report.mismatched)
    assert net.conv_first.weight.dtype == torch.float32  # fp16 file cast to the net's dtype
    lq = _baby_crop(24)
    with torch.no_grad():
        out = net(lq)
    assert out.shape == (1, 3, 96, 96) and torch.isfinite(out).all()
    bicubic = F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False)
    hr = cv2.imread(str(BABY_HR), cv2.IMREAD_COLOR)[160 : 160 + 96, 160 : 160 + 96, ::-1]
    hr = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1)[None].float() / 255.0

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(-10 * torch.log10(((a.clamp(0, 1) - b) ** 2).mean()))

    assert abs(float(out.mean() - bicubic.mean())) < 0.02
    # The anime GAN model lands near the real HR crop (measured 21.5 dB; random weights: 2.6 dB).
    assert psnr(out, hr) > 19.0
    # spandrel's independent RRDBNet on the same file gives the same output.
    ref = spandrel.ModelLoader().load_from_file(str(ANIME_6B)).model.float().eval()
    with torch.no_grad():
        torch.testing.assert_close(out, ref(lq), rtol=0, atol=1e-5)
