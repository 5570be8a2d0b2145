"""Discriminators: output shapes, hand-counted parameters, key names, spectral norm, errors."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from archs.patchgan_discriminator_arch import PatchGANDiscriminator
from archs.unet_discriminator_arch import UNetDiscriminatorSN
from archs.vgg_discriminator_arch import VGGStyleDiscriminator
from utils.registry import ARCH_REGISTRY


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def test_registered_with_input_sizes():
    for name, cls in (
        ("vggstylediscriminator", VGGStyleDiscriminator),
        ("UNetDiscriminatorSN", UNetDiscriminatorSN),
        ("patchgandiscriminator", PatchGANDiscriminator),
    ):
        assert ARCH_REGISTRY.get(name) is cls
        assert cls.input_sizes and not hasattr(cls, "valid_scales")


# ---- VGG-style -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [128, 192, 256])
def test_vgg_output_shape_for_each_input_size(size):
    net = VGGStyleDiscriminator(num_in_ch=3, num_feat=8, input_size=size)
    out = net(torch.rand(2, 3, size, size))
    assert out.shape == (2, 1)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_vgg_parameter_counts_by_hand():
    # num_feat 8, input 192: six stages of widths 8, 16, 32, 64, 64, 64, final map 3x3.
    # conv{i}_0 3x3 (bias only on conv0_0), conv{i}_1 4x4, BN has 2 params per channel.
    by_hand = (
        (3 * 8 * 9 + 8) + 8 * 8 * 16 + 2 * 8
        + (8 * 16 * 9 + 2 * 16) + (16 * 16 * 16 + 2 * 16)
        + (16 * 32 * 9 + 2 * 32) + (32 * 32 * 16 + 2 * 32)
        + (32 * 64 * 9 + 2 * 64) + (64 * 64 * 16 + 2 * 64)
        + 2 * ((64 * 64 * 9 + 2 * 64) + (64 * 64 * 16 + 2 * 64))
        + (64 * 3 * 3 * 100 + 100) + (100 + 1)
    )
    assert _count(VGGStyleDiscriminator(num_feat=8, input_size=192)) == by_hand == 375_033
    # ESRGAN's 128 discriminator (num_feat 64, five stages, final map 4x4).
    esrgan = (
        (3 * 64 * 9 + 64) + 64 * 64 * 16 + 128
        + (64 * 128 * 9 + 256) + (128 * 128 * 16 + 256)
        + (128 * 256 * 9 + 512) + (256 * 256 * 16 + 512)
        + (256 * 512 * 9 + 1024) + (512 * 512 * 16 + 1024)
        + (512 * 512 * 9 + 1024) + (512 * 512 * 16 + 1024)
        + (512 * 4 * 4 * 100 + 100) + 101
    )
    assert _count(VGGStyleDiscriminator()) == esrgan == 14_499_401


def test_vgg_basicsr_key_names():
    keys = set(VGGStyleDiscriminator(num_feat=8).state_dict())
    assert {"conv0_0.weight", "conv0_0.bias", "conv0_1.weight", "bn0_1.weight", "bn0_1.running_mean",
            "conv4_0.weight", "bn4_0.bias", "conv4_1.weight", "bn4_1.running_var",
            "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"} <= keys
    assert "conv0_1.bias" not in keys and "conv5_0.weight" not in keys
    keys256 = set(VGGStyleDiscriminator(num_feat=8, input_size=256).state_dict())
    assert {"conv5_0.weight", "bn5_0.weight", "conv5_1.weight", "bn5_1.weight"} <= keys256
    assert VGGStyleDiscriminator(num_feat=8, input_size=256).linear1.in_features == 64 * 4 * 4


def test_vgg_rejects_bad_sizes_with_clear_messages():
    with pytest.raises(ValueError, match=r"input_size 64 is not supported; valid sizes: \[128, 192, 256\]"):
        VGGStyleDiscriminator(input_size=64)
    net = VGGStyleDiscriminator(num_feat=8, input_size=128)
    with pytest.raises(ValueError, match=r"input must be 128x128 \(input_size\), got 96x128"):
        net(torch.rand(1, 3, 96, 128))


# ---- U-Net with spectral norm ----------------------------------------------------------------


def _unet_count(cin: int, nf: int) -> int:
    return (
        (cin * nf * 9 + nf)  # conv0
        + nf * 2 * nf * 16 + 2 * nf * 4 * nf * 16 + 4 * nf * 8 * nf * 16  # conv1..3, no bias
        + 8 * nf * 4 * nf * 9 + 4 * nf * 2 * nf * 9 + 2 * nf * nf * 9  # conv4..6
        + 2 * nf * nf * 9  # conv7, conv8
        + (nf * 9 + 1)  # conv9
    )


def test_unet_parameter_counts():
    assert _count(UNetDiscriminatorSN()) == _unet_count(3, 64) == 4_376_897  # Real-ESRGAN netD
    assert _count(UNetDiscriminatorSN(num_in_ch=4, num_feat=16)) == _unet_count(4, 16)
    # Skips add no parameters.
    assert _count(UNetDiscriminatorSN(num_feat=16, skip_connection=False)) == _unet_count(3, 16)


@pytest.mark.parametrize(("h", "w"), [(64, 64), (128, 128), (32, 48)])
def test_unet_per_pixel_output(h, w):
    net = UNetDiscriminatorSN(num_in_ch=3, num_feat=16)
    out = net(torch.rand(2, 3, h, w))
    assert out.shape == (2, 1, h, w)


def test_unet_spectral_norm_and_key_names():
    net = UNetDiscriminatorSN(num_feat=8)
    sd = net.state_dict()
    for i in range(1, 9):
        assert {f"conv{i}.weight_orig", f"conv{i}.weight_u", f"conv{i}.weight_v"} <= set(sd)
        assert hasattr(getattr(net, f"conv{i}"), "weight_orig")
    for name in ("conv0", "conv9"):
        assert {f"{name}.weight", f"{name}.bias"} <= set(sd)
        assert not hasattr(getattr(net, name), "weight_orig")
    # Power iteration in training mode drives the largest singular value of each weight to 1.
    torch.manual_seed(1)
    net = UNetDiscriminatorSN(num_feat=8).train()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        for _ in range(40):
            net(x)
    for i in range(1, 9):
        m = getattr(net, f"conv{i}")
        flat = m.weight_orig.reshape(m.weight_orig.shape[0], -1)
        assert abs(torch.linalg.matrix_norm(flat, ord=2).item() - 1.0) > 0.1  # not trivially 1
        # The effective weight is weight_orig / (u·W v) with the stored singular vectors.
        torch.testing.assert_close(m.weight, m.weight_orig / torch.dot(m.weight_u, flat @ m.weight_v))
        sigma = torch.linalg.matrix_norm(m.weight.reshape(m.weight.shape[0], -1), ord=2)
        assert abs(sigma.item() - 1.0) < 0.05, (i, sigma.item())


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def _unet_reference(net: UNetDiscriminatorSN, x: torch.Tensor, skip: bool) -> torch.Tensor:
    """Real-ESRGAN's forward written with F.conv2d on the effective (normalised) weights."""

    def conv(i: int, t: torch.Tensor) -> torch.Tensor:
        m = getattr(net, f"conv{i}")
        return F.conv2d(t, m.weight, m.bias, m.stride, m.padding)

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)

    x0 = _lrelu(conv(0, x))
    x1 = _lrelu(conv(1, x0))
    x2 = _lrelu(conv(2, x1))
    x3 = _lrelu(conv(3, x2))
    x4 = _lrelu(conv(4, up(x3))) + (x2 if skip else 0)
    x5 = _lrelu(conv(5, up(x4))) + (x1 if skip else 0)
    x6 = _lrelu(conv(6, up(x5))) + (x0 if skip else 0)
    return conv(9, _lrelu(conv(8, _lrelu(conv(7, x6)))))


@pytest.mark.parametrize("skip", [True, False])
def test_unet_matches_functional_reference(skip):
    torch.manual_seed(0)
    net = UNetDiscriminatorSN(num_feat=8, skip_connection=skip).eval()
    x = torch.rand(2, 3, 24, 32)
    with torch.no_grad():
        out = net(x)
        ref = _unet_reference(net, x, skip)
    torch.testing.assert_close(out, ref)


def test_unet_rejects_sizes_not_divisible_by_8():
    with pytest.raises(ValueError, match="must divide by 8, got 60x64"):
        UNetDiscriminatorSN(num_feat=8)(torch.rand(1, 3, 60, 64))


# ---- PatchGAN --------------------------------------------------------------------------------


def test_patchgan_parameter_counts_by_hand():
    # ndf 8, n_layers 2, 3 input channels:
    #   conv 3→8 k4 s2 (bias)            3·8·16 + 8  = 392
    #   conv 8→16 k4 s2                   8·16·16     = 2048 (+16 bias without BatchNorm)
    #   norm(16)                          BatchNorm 32 params, InstanceNorm none
    #   conv 16→32 k4 s1                  16·32·16    = 8192 (+32 bias without BatchNorm)
    #   norm(32)                          BatchNorm 64 params
    #   conv 32→1 k4 s1 (bias)            32·16 + 1   = 513
    by_hand = 392 + 2048 + 32 + 8192 + 64 + 513
    assert _count(PatchGANDiscriminator(3, ndf=8, n_layers=2, norm="batch")) == by_hand
    assert _count(PatchGANDiscriminator(3, ndf=8, n_layers=2, norm="batch")) == 11_241
    assert _count(PatchGANDiscriminator(3, ndf=8, n_layers=2, norm="instance")) == 11_193
    assert _count(PatchGANDiscriminator(3, ndf=8, n_layers=2, norm="none")) == 11_193
    # Spectral norm reparametrises, it adds no trainable parameters.
    assert _count(PatchGANDiscriminator(3, ndf=8, n_layers=2, use_spectral_norm=True)) == 11_241
    # pix2pix default with 3 channels: 3·64·16+64, 64·128·16+256, 128·256·16+512, 256·512·16+1024,
    # 512·16+1.
    pix2pix = 3136 + 131072 + 256 + 524288 + 512 + 2097152 + 1024 + 8193
    assert _count(PatchGANDiscriminator()) == pix2pix == 2_765_633
    # Widths are capped at 8·ndf: n_layers 5 has 4 convs of 8·ndf→8·ndf after reaching it.
    deep = PatchGANDiscriminator(8, ndf=4, n_layers=5, norm="none")
    widths = [m.out_channels for m in deep.model if isinstance(m, torch.nn.Conv2d)]
    assert widths == [4, 8, 16, 32, 32, 32, 1]


@pytest.mark.parametrize(("size", "n_layers", "side"), [(64, 3, 6), (128, 3, 14), (64, 2, 14), (256, 6, 2)])
def test_patchgan_output_shapes(size, n_layers, side):
    net = PatchGANDiscriminator(num_in_ch=8, ndf=4, n_layers=n_layers, norm="instance")
    out = net(torch.rand(2, 8, size, size))
    assert out.shape == (2, 1, side, side)
    assert net.output_size(size) == side


@pytest.mark.parametrize(("n_layers", "field"), [(3, 70), (4, 142)])
def test_patchgan_receptive_field(n_layers, field):
    # The region of input pixels with a non-zero gradient for one logit is its receptive field.
    torch.manual_seed(0)
    net = PatchGANDiscriminator(num_in_ch=1, ndf=4, n_layers=n_layers, norm="none").double()
    x = torch.rand(1, 1, 192, 192, dtype=torch.double, requires_grad=True)
    out = net(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    nz = x.grad[0, 0].abs() > 0
    rows = nz.any(1).nonzero()
    cols = nz.any(0).nonzero()
    assert rows.max() - rows.min() + 1 == field
    assert cols.max() - cols.min() + 1 == field


def test_patchgan_spectral_norm_on_every_conv():
    net = PatchGANDiscriminator(num_in_ch=8, ndf=8, n_layers=3, norm="none", use_spectral_norm=True)
    convs = [m for m in net.model if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    assert all(hasattr(m, "weight_orig") for m in convs)
    assert any(k.endswith("weight_orig") for k in net.state_dict())
    plain = PatchGANDiscriminator(num_in_ch=8, ndf=8, n_layers=3)
    assert not any(hasattr(m, "weight_orig") for m in plain.modules())
    assert list(plain.state_dict())[:2] == ["model.0.weight", "model.0.bias"]
    # BatchNorm follows the biasless middle convs.
    assert plain.model[2].bias is None and isinstance(plain.model[3], torch.nn.BatchNorm2d)


def test_patchgan_errors():
    with pytest.raises(ValueError, match=r"unknown norm 'layer'; valid: \['batch', 'instance', 'none'\]"):
        PatchGANDiscriminator(norm="layer")
    with pytest.raises(ValueError, match="n_layers must be ≥ 1, got 0"):
        PatchGANDiscriminator(n_layers=0)
    with pytest.raises(ValueError, match=r"input 16x16 is too small for n_layers=3; .* at least 24 pixels"):
        PatchGANDiscriminator(ndf=4)(torch.rand(1, 3, 16, 16))
