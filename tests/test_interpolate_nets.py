"""Network interpolation (seed 001): exact blends, and refusals that name what does not match."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from archs.rrdbnet_arch import RRDBNet
from scripts.interpolate_nets import MismatchError, interpolate
from tests.conftest import ROOT
from utils.weights import save_network


def _net(seed: int, **kw) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, num_grow_ch=4, scale=4, **kw)


def test_blend_is_exact_per_tensor():
    a = {"w": torch.tensor([0.0, 1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([10.0, -1.0, 2.0]), "n": torch.tensor(7)}
    out = interpolate(a, b, 0.8)
    assert torch.allclose(out["w"], torch.tensor([8.0, -0.6, 2.0]))
    assert int(out["n"]) == 7  # integer tensors come from b
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"]) and torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    f16 = torch.float16
    half = interpolate({"w": torch.tensor([1.0], dtype=f16)}, {"w": torch.tensor([2.0], dtype=f16)}, 0.5)
    assert half["w"].dtype == torch.float16 and float(half["w"]) == 1.5


def test_mismatches_are_refused():
    a = {"x": torch.zeros(2), "y": torch.zeros(3), "only_a": torch.zeros(1)}
    b = {"x": torch.zeros(2), "y": torch.zeros(4), "only_b": torch.zeros(1)}
    with pytest.raises(MismatchError) as err:
        interpolate(a, b, 0.5)
    text = str(err.value)
    assert "keys only in a: only_a" in text and "keys only in b: only_b" in text and "y: (3,) vs (4,)" in text
    with pytest.raises(ValueError, match="alpha must be in"):
        interpolate(b, b, 1.5)


def test_command_line_on_real_files(tmp_path):
    psnr, gan = _net(0), _net(1)
    save_network(psnr, tmp_path / "psnr.pth")  # a BasicSR-style {'params': ...} file
    save_network(gan, tmp_path / "gan.safetensors", metadata={"arch": "RRDBNet"})
    cmd = [sys.executable, "scripts/interpolate_nets.py", "--a", str(tmp_path / "psnr.pth"),
           "--b", str(tmp_path / "gan.safetensors"), "--alpha", "0.8", "-o", str(tmp_path / "interp")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = load_file(tmp_path / "interp.safetensors")
    a, b = psnr.state_dict(), gan.state_dict()
    for key in a:
        assert torch.allclose(out[key], 0.2 * a[key] + 0.8 * b[key], atol=1e-6), key
    with safe_open(str(tmp_path / "interp.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["arch"] == "RRDBNet" and "0.8 * gan.safetensors" in meta["interpolated"]
    # the blended weights load into the architecture and run
    net = _net(2)
    net.load_state_dict(out)
    assert torch.isfinite(net(torch.rand(1, 3, 8, 8))).all()


def test_command_line_refuses_different_architectures(tmp_path):
    save_file({k: v.contiguous() for k, v in _net(0).state_dict().items()}, str(tmp_path / "a.safetensors"))
    bigger = RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=16, num_block=1, num_grow_ch=4, scale=4)
    save_file({k: v.contiguous() for k, v in bigger.state_dict().items()}, str(tmp_path / "b.safetensors"))
    cmd = [sys.executable, "scripts/interpolate_nets.py", "--a", str(tmp_path / "a.safetensors"),
           "--b", str(tmp_path / "b.safetensors"), "--alpha", "0.5", "-o", str(tmp_path / "out.safetensors")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "shapes differ" in proc.stderr and "body.0.rdb1.conv5.bias: (8,) vs (16,)" in proc.stderr
    assert not (tmp_path / "out.safetensors").exists()
