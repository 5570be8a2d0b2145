"""ParagonSR2: parameter counts, the frozen base path against a NumPy reference, ICNR,
LayerScale, detail gain, presets, errors and N-band training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from archs.paragonsr2_arch import ParagonSR2
from utils.registry import ARCH_REGISTRY

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _trainable(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def _conv(cin: int, cout: int, kh: int, kw: int, groups: int = 1) -> int:
    return cout * (cin // groups) * kh * kw + cout


def _spec_count(nf, groups, blocks, exp, k, norm, se, scale, cin=3, cout=3) -> int:
    """Trainable parameters from the shapes in specs/paragonsr2.md, written out layer by layer."""
    g = max(1, int(nf * 0.125))
    h = int(nf * exp)
    mixer = _conv(g, g, 3, 3, g) + _conv(g, g, 1, k, g) + _conv(g, g, k, 1, g)
    ffn = _conv(nf, h, 1, 1) + _conv(h, h, 3, 3, h) + _conv(h, h, 1, 1) + _conv(h, nf, 1, 1)
    if se:
        ffn += _conv(h, h // 4, 1, 1) + _conv(h // 4, h, 1, 1)
    block = mixer + ffn + 2 * nf + (nf if norm else 0)  # two LayerScales, RMSNorm weight
    return (
        _conv(cin, nf, 3, 3)
        + groups * blocks * block
        + _conv(nf, nf, 3, 3)  # conv_fuse
        + _conv(nf, nf * scale * scale, 3, 3)  # ICNR upsampler
        + _conv(nf, cout, 3, 3)  # conv_out
    )


# ---- parameter counts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected", "shapes"),
    [
        ({"variant": "nano"}, 7_965, (12, 1, 1, 1.2, 7, False, False)),
        ({"variant": "s"}, 403_059, (48, 3, 4, 2.0, 11, True, True)),
        ({"variant": "s", "fast_body": True}, 155_979, (48, 1, 2, 2.0, 11, True, True)),
    ],
)
def test_parameter_counts_x2(kwargs, expected, shapes):
    net = ParagonSR2(scale=2, **kwargs)
    assert _trainable(net) == expected
    assert _spec_count(*shapes, scale=2) == expected
    # Every parameter is trainable; the frozen filters are buffers.
    assert sum(p.numel() for p in net.parameters()) == expected


def test_parameter_counts_other_scales_and_bands():
    for scale in (3, 4, 8):
        net = ParagonSR2(scale=scale, variant="nano")
        assert _trainable(net) == _spec_count(12, 1, 1, 1.2, 7, False, False, scale=scale)
    net = ParagonSR2(num_in_ch=4, num_out_ch=4, scale=2, variant="nano")
    assert _trainable(net) == _spec_count(12, 1, 1, 1.2, 7, False, False, scale=2, cin=4, cout=4)


def test_frozen_filters_hold_no_trainable_parameters():
    a = ParagonSR2(scale=2, variant="nano", upsampler_alpha=0.0)
    b = ParagonSR2(scale=2, variant="nano", upsampler_alpha=0.9)
    assert _trainable(a) == _trainable(b)
    assert list(a.base.parameters()) == []
    buffers = dict(a.base.named_buffers())
    assert set(buffers) >= {"sharpen", "blur"}
    assert not any(t.requires_grad for t in buffers.values())
    assert not any(k.startswith("base.") for k in a.state_dict())
    torch.testing.assert_close(buffers["sharpen"], torch.tensor([-1.0, 0, 9, 16, 9, 0, -1]) / 32)
    torch.testing.assert_close(buffers["blur"], torch.tensor([1.0, 4, 6, 4, 1]) / 16)


def test_registered_and_signature_keys():
    assert ARCH_REGISTRY.get("paragonsr2") is ParagonSR2
    assert ParagonSR2.valid_scales == (2, 3, 4, 8)


# ---- base path -------------------------------------------------------------------------------


def _filter_rows_ref(img: np.ndarray, taps: list[float]) -> np.ndarray:
    """Correlate each row of a (C, H, W) array with ``taps``, edge pixels repeated."""
    r = len(taps) // 2
    c, h, w = img.shape
    padded = np.pad(img, ((0, 0), (0, 0), (r, r)), mode="edge")
    out = np.zeros_like(img)
    for ch in range(c):
        for y in range(h):
            for x in range(w):
                out[ch, y, x] = sum(taps[t] * padded[ch, y, x + t] for t in range(len(taps)))
    return out


def _separable_ref(img: np.ndarray, taps: list[float]) -> np.ndarray:
    rows = _filter_rows_ref(img, taps)
    return _filter_rows_ref(rows.transpose(0, 2, 1), taps).transpose(0, 2, 1)


def _base_ref(img: np.ndarray, scale: int, alpha: float) -> np.ndarray:
    sharp = _separable_ref(img, [t / 32 for t in (-1, 0, 9, 16, 9, 0, -1)])
    pre = img + alpha * (sharp - img)
    up = np.repeat(np.repeat(pre, scale, axis=1), scale, axis=2)
    return _separable_ref(up, [t / 16 for t in (1, 4, 6, 4, 1)])


def _zero_detail(net: ParagonSR2) -> ParagonSR2:
    with torch.no_grad():
        net.conv_out.weight.zero_()
        net.conv_out.bias.zero_()
    return net


@pytest.mark.parametrize(("scale", "alpha"), [(2, 0.4), (3, 0.5), (4, 1.0)])
def test_base_path_matches_numpy_reference(scale, alpha):
    rng = np.random.default_rng(scale)
    img = rng.random((3, 5, 6))
    net = _zero_detail(ParagonSR2(scale=scale, variant="nano", upsampler_alpha=alpha)).eval()
    with torch.no_grad():
        out = net(torch.from_numpy(img).float()[None])[0].double().numpy()
    ref = _base_ref(img, scale, alpha)
    assert out.shape == (3, 5 * scale, 6 * scale)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_base_path_hand_values_on_a_step_edge():
    # Row 0,0,0,1 (H = 1), alpha 1, scale 2, worked by hand with edge replication.
    # Pre-sharpen, padded row 0,0,0 | 0,0,0,1 | 1,1,1, taps (-1,0,9,16,9,0,-1)/32:
    #   w0: -1/32   w1: -1/32   w2: (9-1)/32 = 8/32   w3: (16+9-1)/32 = 24/32
    # Nearest x2: (-1,-1,-1,-1,8,8,24,24)/32; blur (1,4,6,4,1)/16 with two edge pixels each side,
    # in units of 1/512:  -16, -16, -1-4-6-4+8 = -7, -1-4-6+32+8 = 29, -1-4+48+32+24 = 99,
    #   -1+32+48+96+24 = 199, 8+32+144+96+24 = 304, 8+96+144+96+24 = 368.
    img = torch.tensor([[[[0.0, 0.0, 0.0, 1.0]]]])
    net = ParagonSR2(num_in_ch=1, num_out_ch=1, scale=2, variant="nano", upsampler_alpha=1.0)
    with torch.no_grad():
        out = _zero_detail(net)(img)[0, 0]
    row = torch.tensor([-16.0, -16, -7, 29, 99, 199, 304, 368]) / 512
    torch.testing.assert_close(out, row.expand(2, 8), atol=1e-6, rtol=0)


def test_base_keeps_constant_images_and_clamps_alpha():
    x = torch.full((1, 3, 4, 5), 0.37)
    net = _zero_detail(ParagonSR2(scale=3, variant="s", num_feat=8, num_groups=1, num_blocks=1))
    with torch.no_grad():
        torch.testing.assert_close(net(x), torch.full((1, 3, 12, 15), 0.37))
    img = torch.rand(1, 3, 6, 6)
    hi = _zero_detail(ParagonSR2(scale=2, variant="nano", upsampler_alpha=1.7))
    one = _zero_detail(ParagonSR2(scale=2, variant="nano", upsampler_alpha=1.0))
    lo = _zero_detail(ParagonSR2(scale=2, variant="nano", upsampler_alpha=-0.5))
    with torch.no_grad():
        torch.testing.assert_close(hi(img), one(img))
        plain = torch.from_numpy(_base_ref(img[0].double().numpy(), 2, 0.0)).float()[None]
        torch.testing.assert_close(lo(img), plain, atol=1e-5, rtol=0)


def test_base_path_stays_float32_under_bf16_autocast():
    net = ParagonSR2(scale=2, variant="nano")
    img = torch.rand(1, 3, 6, 7)
    ref = torch.from_numpy(_base_ref(img[0].double().numpy(), 2, 0.4)).float()[None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        base = net.base(img)
        out = net(img)
    assert base.dtype == torch.float32 and out.dtype == torch.float32
    torch.testing.assert_close(base, ref, atol=1e-6, rtol=0)


def test_base_channel_mapping_when_band_counts_differ():
    img = torch.rand(1, 3, 5, 5)
    grey = img[:, :1]
    to_rgb = _zero_detail(ParagonSR2(num_in_ch=1, num_out_ch=3, scale=2, variant="nano"))
    to_grey = _zero_detail(ParagonSR2(num_in_ch=3, num_out_ch=1, scale=2, variant="nano"))
    same1 = _zero_detail(ParagonSR2(num_in_ch=1, num_out_ch=1, scale=2, variant="nano"))
    with torch.no_grad():
        torch.testing.assert_close(to_rgb(grey), same1(grey).repeat(1, 3, 1, 1))
        torch.testing.assert_close(to_grey(img), same1(img.mean(1, keepdim=True)))
    # 4 → 3: the first three bands pass through, the fourth is left to the detail path.
    rgbn = torch.rand(1, 4, 5, 5)
    four_to_three = _zero_detail(ParagonSR2(num_in_ch=4, num_out_ch=3, scale=2, variant="nano"))
    three = _zero_detail(ParagonSR2(scale=2, variant="nano"))
    with torch.no_grad():
        torch.testing.assert_close(four_to_three(rgbn), three(rgbn[:, :3]))


# ---- detail path initialisation --------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 8])
def test_icnr_upsampler_starts_nearest_like(scale):
    torch.manual_seed(0)
    net = ParagonSR2(scale=scale, variant="nano")
    conv = net.upsampler[0]
    assert torch.count_nonzero(conv.bias) == 0
    # Every s×s sub-pixel block gets the same kernel, so the output is nearest-like for any
    # LR features, not only for smooth ones.
    lr = torch.rand(1, 12, 4, 3)
    with torch.no_grad():
        hr = net.upsampler(lr)
        base = F.conv2d(lr, conv.weight[:: scale * scale], padding=1)
    assert hr.shape == (1, 12, 4 * scale, 3 * scale)
    blocks = hr.unfold(2, scale, scale).unfold(3, scale, scale)  # (1, C, 4, 3, s, s)
    torch.testing.assert_close(blocks, blocks[..., :1, :1].expand_as(blocks), rtol=0, atol=0)
    torch.testing.assert_close(hr, F.interpolate(base, scale_factor=scale, mode="nearest"))
    # Not trivially constant: different LR pixels give different blocks.
    assert blocks[..., 0, 0].std() > 0


def test_layerscale_starts_at_1e_minus_5_and_gates_the_block():
    net = ParagonSR2(scale=2, variant="s", num_feat=16, num_groups=2, num_blocks=2, use_norm=False)
    gammas = [p for n, p in net.named_parameters() if n.endswith(("ls1.gamma", "ls2.gamma"))]
    assert len(gammas) == 2 * 2 * 2
    for g in gammas:
        assert g.shape == (16,)
        torch.testing.assert_close(g, torch.full((16,), 1e-5))
    block = net.body[0].blocks[0]
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        # Without normalisation the block adds exactly LS1(mixer) + LS2(FFN) to x.
        mixed = x + 1e-5 * block.token_mixer(x)
        expected = mixed + 1e-5 * block.ffn(mixed)
        torch.testing.assert_close(block(x), expected)
        for g in (block.ls1.gamma, block.ls2.gamma):
            g.zero_()
        torch.testing.assert_close(block(x), x, rtol=0, atol=0)


def test_rms_norm_over_channels():
    net = ParagonSR2(scale=2, variant="s", num_feat=16, num_groups=1, num_blocks=1)
    norm = net.body[0].blocks[0].norm
    x = torch.randn(2, 16, 3, 3)
    expected = x / torch.sqrt((x**2).mean(1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), expected)


def test_detail_gain_scales_conv_out_and_the_detail():
    x = torch.rand(1, 3, 8, 8)
    torch.manual_seed(3)
    ref = ParagonSR2(scale=2, variant="nano", detail_gain=1.0)
    torch.manual_seed(3)
    net = ParagonSR2(scale=2, variant="nano")  # Nano preset: detail_gain 0.05
    torch.testing.assert_close(net.conv_out.weight, 0.05 * ref.conv_out.weight)
    torch.testing.assert_close(net.conv_out.bias, 0.05 * ref.conv_out.bias)
    sd_ref, sd = ref.state_dict(), net.state_dict()
    for key in sd:
        if not key.startswith("conv_out."):
            torch.testing.assert_close(sd[key], sd_ref[key], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_detail(x), 0.05 * ref.forward_detail(x))
        # The base dominates at the start: the output stays near the fixed upsample.
        assert (net(x) - net.base(x)).abs().max() < 0.05 * (ref(x) - ref.base(x)).abs().max() + 1e-6


# ---- options ---------------------------------------------------------------------------------


def test_variant_presets_overrides_and_fast_body():
    nano = ParagonSR2(variant="NaNo")
    assert nano.config == {
        "num_feat": 12, "num_groups": 1, "num_blocks": 1, "ffn_expansion": 1.2,
        "band_kernel_size": 7, "upsampler_alpha": 0.4, "detail_gain": 0.05,
        "use_norm": False, "use_channel_mod": False,
    }
    s = ParagonSR2(variant="s", num_feat=24, use_norm=False, fast_body=True)
    assert s.config["num_feat"] == 24 and s.config["use_norm"] is False
    assert (s.config["num_groups"], s.config["num_blocks"]) == (1, 2)
    assert s.config["band_kernel_size"] == 11 and s.config["use_channel_mod"] is True
    assert len(s.body) == 1 and len(s.body[0].blocks) == 2
    assert ParagonSR2().variant == "s"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": 5}, r"scale 5 is not supported; valid scales: \[2, 3, 4, 8\]"),
        ({"variant": "xl"}, r"unknown variant 'xl'; valid variants: \['nano', 's'\]"),
        ({"band_kernel_size": 8}, "band_kernel_size must be a positive odd number, got 8"),
        ({"num_feat": 2}, "num_feat must be ≥ 4, got 2"),
        ({"num_blocks": 0}, "num_blocks must be ≥ 1, got 0"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ParagonSR2(**kwargs)


# ---- N-band forward / backward ---------------------------------------------------------------


def test_forward_backward_on_real_4band_imagery():
    scenes = np.load(DATA / "multispectral_s2_eolearn" / "REFERENCE_SCENES_RGBN_B04B03B02B08.npy")
    lr = torch.from_numpy(np.ascontiguousarray(scenes[:2, 10:26, 20:36].transpose(0, 3, 1, 2)))
    torch.manual_seed(0)
    net = ParagonSR2(num_in_ch=4, num_out_ch=4, scale=4, variant="s", num_feat=16, num_groups=1,
                     num_blocks=2)
    out = net(lr)
    assert out.shape == (2, 4, 64, 64)
    with torch.no_grad():
        # Same band count in and out: the base path is the plain per-band upsample.
        base = torch.from_numpy(_base_ref(lr[0].double().numpy(), 4, 0.5)).float()
        torch.testing.assert_close(net.base(lr)[0], base, atol=1e-5, rtol=0)
    loss = F.l1_loss(out, F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # Gradient reaches the first layer through the whole detail path.
    assert net.conv_in.weight.grad.abs().sum() > 0
    assert net.conv_out.weight.grad.abs().sum() > 0
