"""PBRFusionNet: map shapes and ranges, gradients, freezing, view order, encoder weights, bad input."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from archs.edsr_arch import EDSR
from archs.pbr_fusion_arch import PBRFusionNet, stack_views
from utils.registry import ARCH_REGISTRY
from utils.weights import load_network

SMALL = {"fusion_dim": 32, "fusion_heads": 4, "fusion_depth": 1}
UNET = {"encoder": "unet", "unet_channels": [8, 16, 32, 64], **SMALL}  # stride 8
RESNET18 = {"encoder": "resnet18", **SMALL}  # stride 32
MAPS = {"albedo": 3, "roughness": 1, "metallic": 1, "normal": 3}


def _views(b: int = 1, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 9, size, size, generator=g)


def _count(params) -> int:
    return sum(p.numel() for p in params)


def _bn_stats(net: PBRFusionNet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.encoder.state_dict().items() if "running_" in k}


def test_registered() -> None:
    assert ARCH_REGISTRY.get("pbrfusionnet") is PBRFusionNet


@pytest.mark.parametrize("kwargs", [RESNET18, UNET], ids=["resnet18", "unet"])
@pytest.mark.parametrize("scale", [1, 2])
def test_maps_shapes_and_ranges(kwargs: dict, scale: int) -> None:
    torch.manual_seed(0)
    net = PBRFusionNet(scale=scale, **kwargs)
    out = net(_views(2))
    assert set(out) == set(MAPS)
    for name, ch in MAPS.items():
        assert out[name].shape == (2, ch, 64 * scale, 64 * scale), name
    for name in ("albedo", "roughness", "metallic"):
        assert out[name].min() > 0 and out[name].max() < 1, name
    torch.testing.assert_close(out["normal"].norm(dim=1), torch.ones(2, 64 * scale, 64 * scale), rtol=0, atol=1e-5)


def test_view_layouts_and_non_square_input() -> None:
    torch.manual_seed(0)
    net = PBRFusionNet(**UNET).eval()
    x = torch.rand(1, 9, 32, 48)  # a 4x6 token grid: the 16x16 position embedding is resized to it
    with torch.no_grad():
        stacked = net(x)
        split = net(x.view(1, 3, 3, 32, 48))  # (B, V, 3, H, W): view i is channels 3i..3i+2
    for name in MAPS:
        assert stacked[name].shape[-2:] == (32, 48)
        torch.testing.assert_close(stacked[name], split[name])


def test_gradients_reach_the_encoder() -> None:
    torch.manual_seed(0)
    net = PBRFusionNet(**RESNET18)
    out = net(_views())
    sum(o.mean() for o in out.values()).backward()
    for name in ("encoder.conv1.weight", "encoder.layer4.1.conv2.weight", "image_skip.0.weight", "pos_embed",
                 "view_embed", "fusion.layers.0.self_attn.in_proj_weight", "heads.normal.2.weight"):
        grad = net.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_freeze_backbone() -> None:
    torch.manual_seed(0)
    free, frozen = PBRFusionNet(**RESNET18), PBRFusionNet(**RESNET18, freeze_backbone=True)
    assert all(not p.requires_grad for p in frozen.encoder.parameters())
    encoder = _count(frozen.encoder.parameters())
    assert encoder == 11_176_512  # torchvision resnet18 without avgpool/fc: 11_689_512 - 513_000
    trainable = [p for p in frozen.parameters() if p.requires_grad]
    assert _count(trainable) == _count(free.parameters()) - encoder
    assert all(p.requires_grad for p in free.parameters())
    out = frozen(_views())
    sum(o.mean() for o in out.values()).backward()
    assert all(p.grad is None for p in frozen.encoder.parameters())
    assert all(p.grad is not None for p in trainable)


def test_freeze_bn_keeps_running_stats() -> None:
    torch.manual_seed(0)
    for kwargs in (RESNET18, UNET):
        frozen = PBRFusionNet(**kwargs, freeze_bn=True).train()
        free = PBRFusionNet(**kwargs).train()
        bns = [m for m in frozen.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and all(not m.training for m in bns) and frozen.training and frozen.fusion.training
        before_frozen, before_free = _bn_stats(frozen), _bn_stats(free)
        frozen(_views())
        free(_views())
        after_frozen, after_free = _bn_stats(frozen), _bn_stats(free)
        for key, value in before_frozen.items():
            torch.testing.assert_close(after_frozen[key], value, rtol=0, atol=0)
        assert any(not torch.equal(after_free[k], v) for k, v in before_free.items() if "running_mean" in k)
        frozen.eval().train()  # eval() and train() again: still frozen
        assert all(not m.training for m in bns)


def _permute_views(x: torch.Tensor, order: list[int]) -> torch.Tensor:
    return x.view(x.shape[0], 3, 3, *x.shape[-2:])[:, order].reshape(x.shape)


def test_view_order() -> None:
    """Mean merging without view embedding is invariant to the order of the views; the view
    embedding (default) and concat merging make the network order-aware, by design. The view
    embedding starts small (std 0.02, as ViT's); it is enlarged here as training would make it."""
    x, order = _views(), [2, 0, 1]
    torch.manual_seed(0)
    invariant = PBRFusionNet(**RESNET18, view_embedding=False).eval()
    with torch.no_grad():
        a, b = invariant(x), invariant(_permute_views(x, order))
    for name in MAPS:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    for kwargs in ({"view_embedding": True}, {"view_embedding": False, "view_merge": "concat"}):
        torch.manual_seed(0)
        aware = PBRFusionNet(**RESNET18, **kwargs).eval()
        with torch.no_grad():
            if aware.view_embed is not None:
                aware.view_embed.normal_(std=1.0)
            a, b = aware(x), aware(_permute_views(x, order))
        assert (a["albedo"] - b["albedo"]).abs().max() > 1e-3, kwargs


def test_weights_path_loads_a_torchvision_file(tmp_path) -> None:
    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        source.bn1.running_mean.uniform_()  # buffers too, not only the (random) weights
    path = tmp_path / "resnet18-random.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    net = PBRFusionNet(**RESNET18, pretrained=True, weights_path=str(path))
    torch.testing.assert_close(net.encoder.conv1.weight, source.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(net.encoder.layer4[1].conv2.weight, source.layer4[1].conv2.weight, rtol=0, atol=0)
    torch.testing.assert_close(net.encoder.bn1.running_mean, source.bn1.running_mean, rtol=0, atol=0)
    # a shorter trunk (stride 16, no layer4) takes what it needs from the same file
    short = PBRFusionNet(**RESNET18, encoder_stride=16, weights_path=str(path))
    assert not any(k.startswith("layer4") for k in short.encoder.state_dict())
    torch.testing.assert_close(short.encoder.layer3[0].conv1.weight, source.layer3[0].conv1.weight, rtol=0, atol=0)
    assert short(_views(1, 32))["albedo"].shape == (1, 3, 32, 32)
    # the file of another ResNet is refused with the shapes named
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match=r"is neither torchvision's resnet18 state dict nor the module's own"):
        PBRFusionNet(**RESNET18, weights_path=str(tmp_path / "r50.pth"))
    with pytest.raises(FileNotFoundError, match=r"weights_path '.*missing.pth' does not exist"):
        PBRFusionNet(**RESNET18, weights_path=str(tmp_path / "missing.pth"))


def test_pretrained_download(monkeypatch) -> None:
    """``pretrained: true`` without a file uses torchvision's weights API; offline it says how to
    supply the file. The download is replaced here, so the test never touches the network."""
    calls = []
    reference = torchvision.models.resnet18(weights=None).state_dict()

    def fake_get_state_dict(self, *args, **kwargs):
        calls.append(self.url)
        return reference

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", fake_get_state_dict)
    net = PBRFusionNet(**RESNET18, pretrained=True)
    assert calls == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    torch.testing.assert_close(net.encoder.conv1.weight, reference["conv1.weight"], rtol=0, atol=0)

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError) as info:
        PBRFusionNet(**RESNET18, pretrained=True)
    msg = str(info.value)
    assert "ImageNet weights for resnet18 could not be loaded (URLError" in msg
    assert "set `weights_path: /path/to/resnet18-f37072fd.pth` in the network's options" in msg
    assert "pretrained: false" in msg
    PBRFusionNet(**RESNET18)  # pretrained: false (the default) never downloads


def test_bad_input_messages() -> None:
    net = PBRFusionNet(**UNET)
    with pytest.raises(ValueError, match=r"expected 3 RGB views stacked on the channels \(9 channels\), "
                                         r"got 6 channels \(2 views\)"):
        net(torch.rand(1, 6, 64, 64))
    with pytest.raises(ValueError, match=r"expected input \(B, 3, 3, H, W\) \(3 RGB views\), got \(1, 2, 3, 64, 64\)"):
        net(torch.rand(1, 2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"expected input \(B, 9, H, W\) or \(B, 3, 3, H, W\), got \(9, 64, 64\)"):
        net(torch.rand(9, 64, 64))
    with pytest.raises(ValueError, match=r"the views are 60x64, but height and width must be multiples of 8"):
        net(torch.rand(1, 9, 60, 64))


def test_stack_views() -> None:
    views = [torch.full((2, 3, 8, 8), float(i)) for i in range(3)]
    stacked = stack_views(views)
    assert stacked.shape == (2, 9, 8, 8)
    assert [float(stacked[0, 3 * i, 0, 0]) for i in range(3)] == [0.0, 1.0, 2.0]
    assert stack_views([v[0] for v in views]).shape == (9, 8, 8)
    with pytest.raises(ValueError, match="expected 3 views, got 2"):
        stack_views(views[:2])
    with pytest.raises(ValueError, match=r"the views differ in size \(view 0: \(3, 8, 8\), view 1: \(3, 8, 8\), "
                                         r"view 2: \(3, 16, 8\)\)"):
        stack_views([torch.rand(3, 8, 8), torch.rand(3, 8, 8), torch.rand(3, 16, 8)])
    with pytest.raises(ValueError, match=r"view 1 has shape \(4, 8, 8\)"):
        stack_views([torch.rand(3, 8, 8), torch.rand(4, 8, 8), torch.rand(3, 8, 8)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fusion_dim": 30, "fusion_heads": 4}, "fusion_dim 30 is not divisible by fusion_heads 4"),
        ({"encoder": "resnet19"}, "unknown encoder 'resnet19'; valid: resnet18, resnet34, resnet50, resnet101, "
                                  "resnet152, unet"),
        ({"encoder": "resnet18", "encoder_stride": 64}, r"encoder_stride 64 is not supported with encoder "
                                                        r"resnet18; valid: 4, 8, 16, 32"),
        ({"encoder": "unet", "unet_channels": [8, 16, 32], "encoder_stride": 8},
         r"encoder_stride 8 is not supported with encoder unet and 3 unet_channels, whose deepest level is at "
         r"stride 4"),
        ({"encoder": "unet", "unet_channels": []}, r"unet_channels needs at least 2 positive entries"),
        ({"encoder": "unet", "unet_channels": [8, 16], "decoder_channels": [8, 8]},
         r"decoder_channels needs 1 positive entries \(one per skip level, log2\(encoder_stride 2\)\), got \[8, 8\]"),
        ({"encoder": "unet", "unet_channels": [8, 16], "pretrained": True}, "pretrained / weights_path need a ResNet"),
        ({"view_merge": "max"}, "unknown view_merge 'max'"),
        ({"fusion_depth": 0}, "fusion_depth must be ≥ 1, got 0"),
        ({"num_views": 0}, "num_views must be ≥ 1, got 0"),
        ({"scale": 5}, r"scale 5 is not supported; valid scales: \[1, 2, 3, 4, 8\]"),
    ],
)
def test_option_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        PBRFusionNet(**{**SMALL, **kwargs})
    assert str(info.value).startswith("PBRFusionNet")


def test_checkpoints(tmp_path) -> None:
    torch.manual_seed(0)
    net = PBRFusionNet(**UNET)
    report = load_network(PBRFusionNet(**UNET), net.state_dict(), strict=True)
    assert len(report.loaded) == len(net.state_dict())
    with pytest.raises(ValueError, match=r"not a PBRFusionNet checkpoint \(keys body.0.conv1.bias, .*belong to "
                                         r"another network"):
        load_network(net, EDSR(num_feat=8, num_block=1, scale=2).state_dict())
    with pytest.raises(ValueError, match=r"torchvision ResNet's .*give the file as the network's `weights_path`"):
        load_network(net, torchvision.models.resnet18(weights=None).state_dict(), strict=False)
    # another encoder's PBRFusionNet checkpoint: the strict load names the mismatches
    other = PBRFusionNet(**{**UNET, "unet_channels": [8, 16, 32, 32]})
    with pytest.raises(RuntimeError, match=r"strict load of state dict into PBRFusionNet failed: .*mismatched"):
        load_network(net, other.state_dict())
