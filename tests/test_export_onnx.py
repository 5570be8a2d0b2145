"""scripts/export_onnx.py: every generator exports with dynamic H/W and matches PyTorch in onnxruntime.

Weights are saved as a trained run saves them (safetensors with the network metadata), exported
through ``main``, then run by onnxruntime on crops of a real image at sizes other than the traced
one (and other than the parity-check crop); fp16, ``--static``, metadata_props, hand-computed
outputs and the failure paths have their own tests. Networks are small: each export takes a few
seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from data.image_io import read_image
from scripts import export_onnx
from utils.registry import ARCH_REGISTRY
from utils.weights import network_metadata, save_network

CASES = [  # one value each, (arch, constructor kwargs): the module fixture exports each once
    pytest.param(("EDSR", {"num_feat": 8, "num_block": 2, "scale": 2}), id="EDSR-x2"),
    # x2 rather than x4: the same trunk behind pixel-unshuffle, whose odd sizes go through the padding
    # the export adds (an RRDBNet export takes the longest, so one case covers both); growth 4, not 32.
    pytest.param(("RRDBNet", {"num_feat": 8, "num_block": 1, "num_grow_ch": 4, "scale": 2}), id="RRDBNet-x2"),
    pytest.param(("SRResNet", {"n_channels": 8, "n_blocks": 2, "scale": 4}), id="SRResNet-x4"),
    pytest.param(
        ("ParagonSR2", {"variant": "s", "num_feat": 16, "num_groups": 1, "num_blocks": 2, "scale": 2}),
        id="ParagonSR2-S-x2",
    ),
]
FP32_ATOL = 1e-5  # measured: ≤ 3e-7 for these networks
FP16_ATOL = 1e-2  # measured: ≤ 1e-3 for these networks


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps log lines at the terminal width; keep messages on one line for matching."""
    monkeypatch.setenv("COLUMNS", "500")


def _save(tmp_path: Path, name: str, kwargs: dict, seed: int = 0, net: torch.nn.Module | None = None) -> tuple:
    """A network of ``name`` saved like a trained run does (EMA copy, metadata describing it)."""
    torch.manual_seed(seed)
    net = net if net is not None else ARCH_REGISTRY.get(name)(**kwargs).eval()
    path = tmp_path / f"{name.lower()}_x{kwargs.get('scale', 1)}.safetensors"
    save_network(net, path, network_metadata({"type": name, **kwargs}, iteration=100, copy="ema"))
    return net, path


def _real_crops(h: int, w: int, n: int = 2) -> torch.Tensor:
    """``n`` different h x w crops of the shipped real image as one N x 3 x h x w batch."""
    img = read_image(export_onnx.DEFAULT_CHECK_IMAGE)
    crops = [img[17 * i : 17 * i + h, 31 * i + 40 : 31 * i + 40 + w] for i in range(n)]
    return torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy())


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _err(capsys: pytest.CaptureFixture) -> str:
    return " ".join(capsys.readouterr().err.split())


@pytest.fixture(scope="module", params=CASES)
def exported(request, tmp_path_factory) -> tuple:
    name, kwargs = request.param
    tmp_path = tmp_path_factory.mktemp(name)
    net, weights = _save(tmp_path, name, kwargs)
    out = tmp_path / "net.onnx"
    assert export_onnx.main(["--model", str(weights), "-o", str(out)]) == 0
    return name, kwargs, net, out


def test_every_generator_has_a_case() -> None:
    generators = {n for n, cls in ARCH_REGISTRY.items() if hasattr(cls, "valid_scales")}
    assert {p.values[0][0] for p in CASES} == generators


# ---------------------------------------------------------------- fp32, dynamic


def test_dynamic_parity_on_other_sizes(exported: tuple) -> None:
    name, kwargs, net, path = exported
    model = onnx.load(str(path))
    assert _dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    scale = kwargs["scale"]
    # Neither the traced 32x48 nor the 63x65 check crop; odd sides, a batch of two.
    for h, w in ((37, 29), (20, 26)):
        x = _real_crops(h, w)
        out = _ort(path, x.numpy())
        with torch.inference_mode():
            ref = net(x).numpy()
        assert out.shape == (2, 3, h * scale, w * scale)
        np.testing.assert_allclose(out, ref, rtol=0, atol=FP32_ATOL)


def test_metadata_props_describe_the_network(exported: tuple) -> None:
    name, kwargs, _, path = exported
    meta = export_onnx.read_onnx_metadata(path)
    assert meta["arch"] == name and meta["precision"] == "fp32"
    assert meta["scale"] == str(kwargs["scale"]) and meta["num_in_ch"] == "3" and meta["num_out_ch"] == "3"
    assert json.loads(meta["upforge_arch"]) == {"type": name, **kwargs}
    assert meta["input"] == "NCHW RGB 0..1"
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain == ""] == [export_onnx.DEFAULT_OPSET]
    assert model.ir_version == 8  # the oldest IR version of opset 18, so older runtimes load it
    # Only the checked file is left, no staging file.
    assert sorted(p.name for p in path.parent.iterdir() if p.suffix != ".safetensors") == ["net.onnx"]


# ---------------------------------------------------------------- fp16, static


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(("EDSR", {"num_feat": 8, "num_block": 1, "scale": 2}), id="EDSR-x2"),
        # S options: the float32 RMSNorm and base path inside a float16 graph.
        pytest.param(("ParagonSR2", {"variant": "s", "num_feat": 16, "num_groups": 1, "num_blocks": 1, "scale": 4}),
                     id="ParagonSR2-S-x4"),
    ],
)
def test_fp16_parity(tmp_path: Path, case: tuple) -> None:
    name, kwargs = case
    net, weights = _save(tmp_path, name, kwargs, seed=1)
    assert export_onnx.main(["--model", str(weights), "-o", str(tmp_path), "--fp16"]) == 0
    path = tmp_path / f"{weights.stem}_fp16.onnx"  # -o a folder: named after the weights
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert export_onnx.read_onnx_metadata(path)["precision"] == "fp16"
    x = _real_crops(23, 31)
    out = _ort(path, x.numpy().astype(np.float16))
    with torch.inference_mode():
        ref = net(x).numpy()
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), ref, rtol=0, atol=FP16_ATOL)


def test_static_fixes_the_dims(tmp_path: Path) -> None:
    net, weights = _save(tmp_path, "EDSR", {"num_feat": 8, "num_block": 1, "scale": 2}, seed=2)
    out = tmp_path / "static.onnx"
    assert export_onnx.main(["--model", str(weights), "-o", str(out), "--static", "24", "20"]) == 0
    model = onnx.load(str(out))
    assert _dims(model.graph.input[0]) == [1, 3, 24, 20]
    assert _dims(model.graph.output[0]) == [1, 3, 48, 40]
    x = _real_crops(24, 20, n=1)
    with torch.inference_mode():
        np.testing.assert_allclose(_ort(out, x.numpy()), net(x).numpy(), rtol=0, atol=FP32_ATOL)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        _ort(out, _real_crops(20, 24, n=1).numpy())


# ---------------------------------------------------------------- hand-computed outputs


def test_edsr_with_zero_weights_outputs_the_mean(tmp_path: Path) -> None:
    """All convs zero: EDSR's output is its rgb_mean buffer, whatever the input."""
    kwargs = {"num_feat": 8, "num_block": 1, "scale": 3, "rgb_mean": [0.25, 0.5, 0.75]}
    net = ARCH_REGISTRY.get("EDSR")(**kwargs).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    _, weights = _save(tmp_path, "EDSR", kwargs, net=net)
    out = tmp_path / "zero.onnx"
    assert export_onnx.main(["--model", str(weights), "-o", str(out)]) == 0
    y = _ort(out, _real_crops(7, 9, n=1).numpy())
    expected = np.broadcast_to(np.array([0.25, 0.5, 0.75], np.float32).reshape(1, 3, 1, 1), (1, 3, 21, 27))
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6)


def test_paragonsr2_base_keeps_a_flat_image_flat(tmp_path: Path) -> None:
    """Detail head zeroed: the output is the fixed Magic Kernel Sharp upsample, whose sharpen and
    blur taps each sum to 1 with replicated borders, so a flat grey stays that grey."""
    kwargs = {"variant": "nano", "scale": 3}
    net = ARCH_REGISTRY.get("ParagonSR2")(**kwargs).eval()
    with torch.no_grad():
        net.conv_out.weight.zero_()
        net.conv_out.bias.zero_()
    _, weights = _save(tmp_path, "ParagonSR2", kwargs, net=net)
    out = tmp_path / "flat.onnx"
    assert export_onnx.main(["--model", str(weights), "-o", str(out)]) == 0
    y = _ort(out, np.full((1, 3, 5, 11), 0.3, np.float32))
    np.testing.assert_allclose(y, np.full((1, 3, 15, 33), 0.3, np.float32), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- failures


def test_parity_failure_exits_nonzero_and_leaves_no_file(tmp_path: Path, capsys) -> None:
    _, weights = _save(tmp_path, "EDSR", {"num_feat": 8, "num_block": 1, "scale": 2})
    out = tmp_path / "strict.onnx"
    # float16 rounding (about 1e-4 here) can never meet a 1e-7 bound.
    assert export_onnx.main(["--model", str(weights), "-o", str(out), "--fp16", "--tolerance", "1e-7"]) == 1
    err = _err(capsys)
    assert "parity check failed: max |onnx − torch| =" in err and "above the tolerance 1e-07 (fp16)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [weights.name]


def test_missing_weights(tmp_path: Path, capsys) -> None:
    assert export_onnx.main(["--model", str(tmp_path / "none.safetensors"), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "weights file not found" in _err(capsys)
    assert not (tmp_path / "x.onnx").exists()


def test_unknown_arch_and_discriminator(tmp_path: Path, capsys) -> None:
    _, weights = _save(tmp_path, "EDSR", {"num_feat": 8, "num_block": 1, "scale": 2})
    assert export_onnx.main(["--model", str(weights), "-o", str(tmp_path / "x.onnx"), "--arch", "EDSRR"]) == 1
    assert "no entry named 'EDSRR'. Did you mean 'EDSR'?" in _err(capsys)
    # A discriminator's weights (metadata names it) are refused before anything is built.
    disc = ARCH_REGISTRY.get("VGGStyleDiscriminator")(num_feat=8)
    _, d_weights = _save(tmp_path, "VGGStyleDiscriminator", {"num_feat": 8}, net=disc)
    assert export_onnx.main(["--model", str(d_weights), "-o", str(tmp_path / "d.onnx")]) == 1
    err = _err(capsys)
    assert "VGGStyleDiscriminator is not an image-to-image generator" in err
    assert "generators: EDSR, ParagonSR2, RRDBNet, SRResNet" in err
    assert not list(tmp_path.glob("*.onnx"))


def test_missing_onnxruntime(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    _, weights = _save(tmp_path, "EDSR", {"num_feat": 8, "num_block": 1, "scale": 2})
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if absent
    assert export_onnx.main(["--model", str(weights), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "needs onnxruntime, which is not installed: pip install onnx onnxruntime onnxscript" in _err(capsys)


def test_missing_check_image(tmp_path: Path, capsys) -> None:
    _, weights = _save(tmp_path, "EDSR", {"num_feat": 8, "num_block": 1, "scale": 2})
    args = ["--model", str(weights), "-o", str(tmp_path / "x.onnx"), "--check-image", str(tmp_path / "no.png")]
    assert export_onnx.main(args) == 1
    assert "check image not found" in _err(capsys)
