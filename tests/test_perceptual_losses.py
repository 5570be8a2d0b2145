"""PerceptualLoss (VGG features), LPIPSLoss and the backbone-weight loader, without any download."""

from __future__ import annotations

import re
import urllib.error
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from losses.lpips_loss import LPIPSLoss
from losses.perceptual_loss import IMAGENET_MEAN, IMAGENET_STD, PerceptualLoss, VGGFeatureExtractor, vgg_layer_names
from utils.options import signature_model
from utils.registry import LOSS_REGISTRY

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
VGG19_FILE = "vgg19-dcbb9e9d.pth"


@pytest.fixture(autouse=True)
def no_download(monkeypatch, tmp_path):
    """Any download attempt fails the test; the torch hub cache is an empty folder of this test."""

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))


@pytest.fixture(scope="module")
def vgg19_source(tmp_path_factory):
    """A seeded random torchvision vgg19 (its features, eval) and its full state dict saved as a .pth file."""
    torch.manual_seed(0)
    model = torchvision.models.vgg19(weights=None)
    path = tmp_path_factory.mktemp("weights") / VGG19_FILE
    torch.save(model.state_dict(), path)
    return model.features.eval(), path


@pytest.fixture(scope="module")
def alexnet_source(tmp_path_factory):
    """A seeded random torchvision alexnet (its features) and its full state dict as a .safetensors file."""
    torch.manual_seed(1)
    model = torchvision.models.alexnet(weights=None)
    path = tmp_path_factory.mktemp("weights") / "alexnet.safetensors"
    save_file(model.state_dict(), str(path))
    return model.features.eval(), path


def tv_features(features: nn.Sequential, x: torch.Tensor, indices: list[int]) -> dict[int, torch.Tensor]:
    """Outputs of torchvision's features at the given indices, cloned before the in-place ReLUs touch them."""
    out = {}
    with torch.no_grad():
        for i, layer in enumerate(features[: max(indices) + 1]):
            x = layer(x)
            if i in indices:
                out[i] = x.clone()
    return out


def image(seed: int, channels: int = 3, size: int = 32) -> torch.Tensor:
    return torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ layer names


CONVS_PER_BLOCK = {
    "vgg11": [1, 1, 2, 2, 2],
    "vgg13": [2, 2, 2, 2, 2],
    "vgg16": [2, 2, 3, 3, 3],
    "vgg19": [2, 2, 4, 4, 4],
}


@pytest.mark.parametrize("vgg_type", list(CONVS_PER_BLOCK))
def test_layer_names_follow_torchvision_layers(vgg_type):
    names = vgg_layer_names(vgg_type)
    with torch.device("meta"):
        layers = list(getattr(torchvision.models, vgg_type)().features)
    assert len(names) == len(layers)
    for name, layer in zip(names, layers):
        kind = {nn.Conv2d: "conv", nn.ReLU: "relu", nn.MaxPool2d: "pool"}[type(layer)]
        assert name.startswith(kind), (name, layer)
    expected = []
    for block, convs in enumerate(CONVS_PER_BLOCK[vgg_type], start=1):
        for i in range(1, convs + 1):
            expected += [f"conv{block}_{i}", f"relu{block}_{i}"]
        expected.append(f"pool{block}")
    assert names == expected


def test_known_layer_indices():
    vgg19 = vgg_layer_names("vgg19")
    assert vgg19.index("conv5_4") == 34 and vgg19.index("relu5_4") == 35 and vgg19.index("relu2_2") == 8
    assert vgg_layer_names("vgg16").index("conv5_3") == 28
    assert vgg_layer_names("vgg11")[:3] == ["conv1_1", "relu1_1", "pool1"]


def test_extractor_is_truncated_after_last_requested_layer():
    ext = VGGFeatureExtractor(["relu1_1", "conv3_2", "relu2_1"], pretrained=False)
    names = [n for n, _ in ext.features.named_children()]
    assert names == vgg_layer_names("vgg19")[: vgg_layer_names("vgg19").index("conv3_2") + 1]
    assert names[-1] == "conv3_2"
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in ext.modules())
    out = ext(image(0))
    assert set(out) == {"relu1_1", "conv3_2", "relu2_1"}


def test_conv_feature_is_taken_before_the_relu():
    torch.manual_seed(3)
    ext = VGGFeatureExtractor(["conv5_4", "relu5_4"], pretrained=False)
    out = ext(image(1))
    conv, relu = out["conv5_4"], out["relu5_4"]
    assert conv.min() < 0
    assert relu.min() >= 0
    torch.testing.assert_close(relu, conv.clamp(min=0), rtol=0, atol=0)


def test_frozen_and_always_eval():
    loss = PerceptualLoss(pretrained=False, layer_weights={"relu1_1": 1.0})
    loss.train()
    assert not any(m.training for m in loss.vgg.modules())
    assert not any(p.requires_grad for p in loss.parameters())


# ------------------------------------------------------------------ weights


def test_weights_path_torchvision_file_gives_source_features(vgg19_source):
    features, path = vgg19_source
    ext = VGGFeatureExtractor(["relu2_2", "conv5_4"], weights_path=str(path))
    x = image(2)
    ref = tv_features(features, (x - MEAN) / STD, [8, 34])
    out = ext(x)
    torch.testing.assert_close(out["relu2_2"], ref[8], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["conv5_4"], ref[34], rtol=1e-5, atol=1e-6)
    assert ref[34].min() < 0  # the conv output was kept, not the ReLU's


def test_hub_cache_file_is_used_without_download(vgg19_source, tmp_path):
    features, path = vgg19_source
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    (cache / VGG19_FILE).symlink_to(path)
    ext = VGGFeatureExtractor(["conv1_2"], pretrained=True)
    x = image(3)
    torch.testing.assert_close(ext(x)["conv1_2"], tv_features(features, (x - MEAN) / STD, [2])[2])


def test_module_own_state_dict_file_pth_and_safetensors(tmp_path):
    torch.manual_seed(4)
    src = VGGFeatureExtractor(["relu2_1"], vgg_type="vgg11", pretrained=False)
    torch.save(src.state_dict(), tmp_path / "own.pth")
    save_file(src.state_dict(), str(tmp_path / "own.safetensors"))
    x = image(4)
    for name in ("own.pth", "own.safetensors"):
        torch.manual_seed(5)  # another random init, so equality comes from the file
        ext = VGGFeatureExtractor(["relu2_1"], vgg_type="vgg11", weights_path=str(tmp_path / name))
        torch.testing.assert_close(ext(x)["relu2_1"], src(x)["relu2_1"], rtol=0, atol=0)


def test_mismatched_file_lists_missing_and_unexpected_keys(tmp_path):
    src = VGGFeatureExtractor(["conv2_1"], pretrained=False)
    state = src.state_dict()
    state["features.conv1_1.bias_typo"] = state.pop("features.conv1_1.bias")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="PerceptualLoss") as err:
        PerceptualLoss(layer_weights={"conv2_1": 1.0}, weights_path=str(tmp_path / "bad.pth"))
    msg = str(err.value)
    assert re.search(r"missing keys \[features\.conv1_1\.bias\]", msg), msg
    assert re.search(r"unexpected keys \[features\.conv1_1\.bias_typo\]", msg), msg


def test_wrong_shapes_are_reported(tmp_path):
    # Right keys, one tensor of the wrong shape (as a file of another arch would have).
    state = VGGFeatureExtractor(["conv2_1"], pretrained=False).state_dict()
    state["features.conv2_1.weight"] = torch.zeros(128, 32, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"wrong shapes.*features\.conv2_1\.weight"):
        VGGFeatureExtractor(["conv2_1"], weights_path=str(tmp_path / "shape.pth"))


def test_missing_weights_file_names_path_and_option(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as err:
        PerceptualLoss(weights_path=str(missing))
    assert "weights_path" in str(err.value)


def test_offline_message_names_url_and_options(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(torchvision.models.VGG19_Weights, "get_state_dict", offline)
    with pytest.raises(RuntimeError) as err:
        PerceptualLoss()
    msg = str(err.value)
    weights = torchvision.models.VGG19_Weights.IMAGENET1K_V1
    for part in (
        "PerceptualLoss",
        "ImageNet weights for vgg19 could not be downloaded",
        "no network here",
        weights.url,
        f"weights_path: /path/to/{VGG19_FILE}",
        str(Path(torch.hub.get_dir()) / "checkpoints"),
        "pretrained: false",
    ):
        assert part in msg, (part, msg)
    assert isinstance(err.value.__cause__, urllib.error.URLError)


def test_unreadable_cached_file_is_pointed_at():
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    (cache / VGG19_FILE).write_bytes(b"half a download")
    with pytest.raises(RuntimeError, match="may be an incomplete download"):
        VGGFeatureExtractor(["conv1_1"], pretrained=True)


# ------------------------------------------------------------------ loss values


@pytest.mark.parametrize("criterion", ["l1", "l2", "mse"])
@pytest.mark.parametrize("normalize", [False, True])
def test_loss_equals_hand_computation(vgg19_source, criterion, normalize):
    features, path = vgg19_source
    weights = {"relu2_2": 0.5, "conv4_4": 2.0}
    loss = PerceptualLoss(layer_weights=weights, criterion=criterion, normalize_weights=normalize,
                          weights_path=str(path))
    pred, target = image(5), image(6)
    names = vgg_layer_names("vgg19")
    idx = {k: names.index(k) for k in weights}
    fp = tv_features(features, (pred - MEAN) / STD, list(idx.values()))
    ft = tv_features(features, (target - MEAN) / STD, list(idx.values()))
    expected = 0.0
    for k, w in weights.items():
        diff = fp[idx[k]] - ft[idx[k]]
        expected += w * (diff.abs().mean() if criterion == "l1" else diff.pow(2).mean()).item()
    if normalize:
        expected /= 2.5
    value = loss(pred, target)
    assert value.dim() == 0
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_identical_images_give_zero():
    loss = PerceptualLoss(pretrained=False, layer_weights={"conv3_1": 1.0, "relu1_2": 1.0})
    x = image(7)
    assert loss(x, x.clone()).item() == 0.0


def test_input_norm_and_range_norm():
    torch.manual_seed(8)
    plain = VGGFeatureExtractor(["conv2_2"], use_input_norm=False, pretrained=False)
    normed = VGGFeatureExtractor(["conv2_2"], use_input_norm=True, pretrained=False)
    ranged = VGGFeatureExtractor(["conv2_2"], use_input_norm=True, range_norm=True, pretrained=False)
    normed.load_state_dict(plain.state_dict())
    ranged.load_state_dict(plain.state_dict())
    x = image(8)
    # ImageNet normalisation: normed(x) == plain((x - mean) / std)
    torch.testing.assert_close(normed(x)["conv2_2"], plain((x - MEAN) / STD)["conv2_2"], rtol=1e-5, atol=1e-5)
    # range_norm maps [-1, 1] to [0, 1] first
    torch.testing.assert_close(ranged(x * 2 - 1)["conv2_2"], normed(x)["conv2_2"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain(x)["conv2_2"], normed(x)["conv2_2"])


def test_bands_select_and_reorder_channels():
    torch.manual_seed(9)
    four = PerceptualLoss(layer_weights={"conv2_1": 1.0}, bands=[2, 1, 0], pretrained=False)
    three = PerceptualLoss(layer_weights={"conv2_1": 1.0}, pretrained=False)
    three.load_state_dict(four.state_dict())
    pred, target = image(10, channels=4), image(11, channels=4)
    expected = three(pred[:, [2, 1, 0]], target[:, [2, 1, 0]])
    assert four(pred, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert three(pred[:, :3], target[:, :3]).item() != pytest.approx(expected.item(), rel=1e-3)


@pytest.mark.parametrize("bands", [[0, 1], [0, 1, 2, 3], [0, 0, 1], [-1, 0, 1], [True, 0, 1], [0.0, 1, 2]])
def test_bad_bands_are_rejected(bands):
    with pytest.raises(ValueError, match=r"PerceptualLoss: bands"):
        PerceptualLoss(bands=bands, pretrained=False)


def test_band_count_errors_at_forward():
    loss = PerceptualLoss(layer_weights={"conv1_1": 1.0}, pretrained=False)
    x = image(12, channels=4)
    with pytest.raises(ValueError, match=r"4 channel.*set `bands`"):
        loss(x, x)
    loss = PerceptualLoss(layer_weights={"conv1_1": 1.0}, bands=[0, 1, 5], pretrained=False)
    with pytest.raises(ValueError, match=r"channel 5.*only 4"):
        loss(x, x)


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match=r"PerceptualLoss.*conv5_4.*valid names:.*conv5_3") as err:
        PerceptualLoss(vgg_type="vgg16", layer_weights={"conv5_4": 1.0}, pretrained=False)
    assert "relu5_3" in str(err.value) and "conv4_4" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"layer_weights": {}}, {"layer_weights": {"conv1_1": -1.0}}, {"layer_weights": {"conv1_1": 0.0}},
     {"criterion": "l3"}, {"vgg_type": "vgg18"}],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="PerceptualLoss"):
        PerceptualLoss(pretrained=False, **kwargs)


def test_gradients_reach_pred_only():
    loss = PerceptualLoss(layer_weights={"conv3_1": 1.0}, pretrained=False)
    pred = image(13).requires_grad_()
    target = image(14).requires_grad_()
    loss(pred, target).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert target.grad is None
    assert all(p.grad is None for p in loss.parameters())


def test_registry_and_option_signature():
    assert LOSS_REGISTRY.get("PerceptualLoss") is PerceptualLoss
    assert LOSS_REGISTRY.get("LPIPSLoss") is LPIPSLoss
    model = signature_model(PerceptualLoss)
    ok = model.model_validate({"layer_weights": {"conv5_4": 1}, "vgg_type": "vgg16", "bands": [0, 1, 2]})
    assert ok.layer_weights == {"conv5_4": 1.0} and ok.vgg_type == "vgg16"
    with pytest.raises(Exception, match="criterion"):
        model.model_validate({"criterion": "l3"})
    with pytest.raises(Exception, match="net"):
        signature_model(LPIPSLoss).model_validate({"net": "squeeze"})


# ------------------------------------------------------------------ LPIPS


def lpips_reference(features: nn.Sequential):
    """The lpips package's own model with torchvision alexnet weights copied in slice by slice."""
    import lpips

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        ref = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    with torch.no_grad():
        for k in range(1, 6):
            for idx, layer in getattr(ref.net, f"slice{k}").named_children():
                if isinstance(layer, nn.Conv2d):
                    layer.weight.copy_(features[int(idx)].weight)
                    layer.bias.copy_(features[int(idx)].bias)
    return ref


def test_lpips_weights_path_matches_package_reference(alexnet_source):
    features, path = alexnet_source
    loss = LPIPSLoss(weights_path=str(path))
    random = LPIPSLoss(pretrained=False)
    a, b = image(20, size=64), image(21, size=64)
    with torch.no_grad():
        expected = lpips_reference(features)(a * 2 - 1, b * 2 - 1).mean().item()
    value = loss(a, b)
    assert value.dim() == 0
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert random(a, b).item() != pytest.approx(expected, rel=1e-3)


def test_lpips_zero_positive_symmetric():
    loss = LPIPSLoss(pretrained=False)
    a, b = image(22, size=64), image(23, size=64)
    assert loss(a, a.clone()).item() == 0.0
    ab, ba = loss(a, b).item(), loss(b, a).item()
    assert ab > 0
    assert ab == pytest.approx(ba, rel=1e-5)


def test_lpips_range_norm_and_bands():
    torch.manual_seed(24)
    base = LPIPSLoss(pretrained=False)
    ranged = LPIPSLoss(pretrained=False, range_norm=True)
    banded = LPIPSLoss(pretrained=False, bands=[3, 0, 1])
    ranged.load_state_dict(base.state_dict())
    banded.load_state_dict(base.state_dict())
    a, b = image(25, channels=4, size=64), image(26, channels=4, size=64)
    expected = base(a[:, [3, 0, 1]], b[:, [3, 0, 1]]).item()
    assert banded(a, b).item() == pytest.approx(expected, rel=1e-6)
    assert ranged(a[:, [3, 0, 1]] * 2 - 1, b[:, [3, 0, 1]] * 2 - 1).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="set `bands`"):
        base(a, b)


def test_lpips_calibration_layers_come_from_the_package_files():
    import lpips

    loss = LPIPSLoss(pretrained=False)
    file = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    shipped = torch.load(file, map_location="cpu", weights_only=True)
    torch.testing.assert_close(loss.model.lin0.model[1].weight, shipped["lin0.model.1.weight"], rtol=0, atol=0)
    assert shipped["lin0.model.1.weight"].std() > 0


def test_lpips_eval_locked_frozen_and_grad_to_pred_only():
    loss = LPIPSLoss(pretrained=False)
    loss.train()
    assert not any(m.training for m in loss.modules())
    assert not any(p.requires_grad for p in loss.parameters())
    a, b = image(27, size=64).requires_grad_(), image(28, size=64).requires_grad_()
    first = loss(a, b)
    assert loss(a, b).item() == first.item()  # dropout off
    first.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0 and b.grad is None


def test_lpips_offline_message(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torchvision.models.AlexNet_Weights, "get_state_dict", offline)
    with pytest.raises(RuntimeError) as err:
        LPIPSLoss(net="alex")
    msg = str(err.value)
    assert "LPIPSLoss" in msg and "alexnet" in msg
    assert torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url in msg
    assert "weights_path: /path/to/alexnet-owt-7be5be79.pth" in msg


def test_lpips_vgg_backbone_keys_and_own_state_file(tmp_path):
    # lpips keeps layers 0..29 of torchvision's vgg16 features (up to relu5_3) under slice1..slice5.
    torch.manual_seed(29)
    src = LPIPSLoss(net="vgg", pretrained=False)
    keys = set(src.model.net.state_dict())
    assert {"slice1.0.weight", "slice2.5.weight", "slice5.28.bias"} <= keys and not any(".30." in k for k in keys)
    torch.save(src.model.net.state_dict(), tmp_path / "lpips_vgg_backbone.pth")
    torch.manual_seed(30)
    loaded = LPIPSLoss(net="vgg", weights_path=str(tmp_path / "lpips_vgg_backbone.pth"))
    a, b = image(31), image(32)
    assert loaded(a, b).item() == pytest.approx(src(a, b).item(), rel=1e-6)
