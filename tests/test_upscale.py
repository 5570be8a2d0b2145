"""scripts/upscale.py against plain reference forward passes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from archs.edsr_arch import EDSR
from archs.rrdbnet_arch import RRDBNet
from utils.tiling import DEFAULT_TILE_OVERLAP, blend_width
from utils.weights import save_network

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ANIME_6B = SHARED / "weights" / "realesrgan" / "RealESRGAN_x4plus_anime_6B.safetensors"
SET5_X4 = SHARED / "data" / "Set5" / "LR_bicubic" / "X4"
BABY_LR = SET5_X4 / "babyx4.png"


def _load_script():
    spec = importlib.util.spec_from_file_location("upscale_script", ROOT / "scripts" / "upscale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


upscale_script = _load_script()


def _crop(path: Path, y: int, x: int, size: int, bits: int = 8) -> np.ndarray:
    """A crop of the real Set5 LR image (BGR uint8/uint16), written to ``path``."""
    img = cv2.imread(str(BABY_LR), cv2.IMREAD_COLOR)[y : y + size, x : x + size]
    if bits == 16:
        img = img.astype(np.uint16) * 257
    cv2.imwrite(str(path), img)
    return img


def _tensor(bgr: np.ndarray) -> torch.Tensor:
    peak = 65535.0 if bgr.dtype == np.uint16 else 255.0
    rgb = np.ascontiguousarray(bgr[:, :, ::-1]).astype(np.float32) / peak
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


def _quantise(out: torch.Tensor) -> np.ndarray:
    img = out[0].clamp(0, 1).permute(1, 2, 0).numpy()[:, :, ::-1]
    return np.round(img.astype(np.float64) * 255).astype(np.uint8)


def test_realesrgan_matches_reference_forward(tmp_path: Path) -> None:
    bgr = _crop(tmp_path / "baby_crop.png", 32, 40, 64)
    written = upscale_script.upscale(tmp_path / "baby_crop.png", tmp_path / "out", ANIME_6B, device="cpu")
    assert written == [tmp_path / "out" / "baby_crop.png"]
    got = cv2.imread(str(written[0]), cv2.IMREAD_UNCHANGED)

    net = RRDBNet(num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=6, num_grow_ch=32).eval()
    net.load_state_dict({k: v.float() for k, v in load_file(str(ANIME_6B)).items()}, strict=True)
    with torch.no_grad():
        ref = _quantise(net(_tensor(bgr)))
    assert got.dtype == np.uint8 and got.shape == (256, 256, 3)
    np.testing.assert_array_equal(got, ref)


def test_tiled_equals_untiled(tmp_path: Path, small_edsr) -> None:
    weights, net = small_edsr
    bgr = _crop(tmp_path / "in.png", 10, 20, 56)
    lq = _tensor(bgr)
    model, kwargs = upscale_script.build_model(weights)
    assert kwargs == {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 1, "scale": 2}
    whole = upscale_script.run_model(model, lq, 2)
    with torch.no_grad():
        torch.testing.assert_close(whole, net(lq), rtol=0, atol=1e-6)
    # Receptive field radius of this EDSR is 6 LR pixels; overlap 8 covers it.
    tiled = upscale_script.run_model(model, lq, 2, tile=20, tile_overlap=8)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)
    # Too little overlap must show: the test would catch a tiler that ignores the overlap.
    assert (upscale_script.run_model(model, lq, 2, tile=20, tile_overlap=1) - whole).abs().max() > 1e-4

    a = upscale_script.upscale(tmp_path / "in.png", tmp_path / "a.png", weights, device="cpu")[0]
    b = upscale_script.upscale(tmp_path / "in.png", tmp_path / "b.png", weights, tile=20, tile_overlap=8)[0]
    img_a, img_b = cv2.imread(str(a)), cv2.imread(str(b))
    assert np.abs(img_a.astype(int) - img_b.astype(int)).max() <= 1
    assert (img_a == img_b).mean() > 0.999


def test_tta_is_mean_of_dihedral_outputs(small_edsr) -> None:
    weights, net = small_edsr
    model, _ = upscale_script.build_model(weights)
    lq = torch.rand(1, 3, 12, 10)
    outs = []
    with torch.no_grad():
        for flip in (False, True):
            for k in range(4):
                x = torch.flip(lq, (-1,)) if flip else lq
                y = torch.rot90(net(torch.rot90(x, k, (-2, -1))), -k, (-2, -1))
                outs.append(torch.flip(y, (-1,)) if flip else y)
    torch.testing.assert_close(upscale_script.run_model(model, lq, 2, tta=True), torch.stack(outs).mean(0))


def test_folder_input(tmp_path: Path, small_edsr) -> None:
    weights, net = small_edsr
    src = tmp_path / "in"
    src.mkdir()
    crops = {"a": _crop(src / "a.png", 0, 0, 24), "b": _crop(src / "b.bmp", 50, 60, 20)}
    (src / "notes.txt").write_text("not an image")
    written = upscale_script.upscale(src, tmp_path / "out", weights, device="cpu")
    assert sorted(p.name for p in written) == ["a.png", "b.png"]
    for stem, bgr in crops.items():
        got = cv2.imread(str(tmp_path / "out" / f"{stem}.png"))
        with torch.no_grad():
            np.testing.assert_array_equal(got, _quantise(net(_tensor(bgr))))


def test_sixteen_bit_in_sixteen_bit_out(tmp_path: Path, small_edsr) -> None:
    weights, net = small_edsr
    bgr = _crop(tmp_path / "deep.png", 5, 5, 16, bits=16)
    out = upscale_script.upscale(tmp_path / "deep.png", tmp_path / "deep_x2.png", weights)[0]
    got = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint16 and got.shape == (32, 32, 3)
    with torch.no_grad():
        ref = net(_tensor(bgr))[0].clamp(0, 1).permute(1, 2, 0).numpy()[:, :, ::-1]
    assert np.abs(got.astype(np.float64) - np.round(ref * 65535)).max() <= 1


def test_half_runs_bf16_on_cpu(tmp_path: Path, small_edsr) -> None:
    weights, _ = small_edsr
    _crop(tmp_path / "in.png", 0, 0, 24)
    full = upscale_script.upscale(tmp_path / "in.png", tmp_path / "full.png", weights)[0]
    half = upscale_script.upscale(tmp_path / "in.png", tmp_path / "half.png", weights, half=True)[0]
    diff = np.abs(cv2.imread(str(full)).astype(int) - cv2.imread(str(half)).astype(int))
    assert 0 < diff.max() <= 6  # bf16 differs, but only a little


def test_cli_tile_batch_bf16_channels_last(tmp_path: Path, small_edsr) -> None:
    weights, net = small_edsr
    bgr = _crop(tmp_path / "in.png", 10, 20, 56)
    with torch.no_grad():
        ref = _quantise(net(_tensor(bgr))).astype(int)  # fp32, whole image, plain layout
    # 56 px with windows of 20 + 2*8 + 4 = 40: 2 x 2 tiles, so --tile-batch 3 runs batches of 3 and 1.
    base = ["-i", str(tmp_path / "in.png"), "--model", str(weights), "--device", "cpu", "--tile", "20",
            "--tile-overlap", "8", "--tile-batch", "3", "--channels-last"]
    assert upscale_script.main([*base, "-o", str(tmp_path / "fp32.png")]) == 0
    fp32 = cv2.imread(str(tmp_path / "fp32.png")).astype(int)
    # The receptive radius (6 LR px) is inside the overlap: tiles, batches and NHWC change only the
    # float rounding, which can move a pixel across a rounding boundary by one level at most.
    assert np.abs(fp32 - ref).max() <= 1 and (fp32 == ref).mean() > 0.999
    assert upscale_script.main([*base, "--precision", "bf16", "-o", str(tmp_path / "bf16.png")]) == 0
    diff = np.abs(cv2.imread(str(tmp_path / "bf16.png")).astype(int) - ref)
    # bf16 keeps 8 significant bits: the input alone is rounded by up to 2^-9 relative (~0.5 level
    # at the top of the range), then every weight and activation; test_half_runs_bf16_on_cpu puts this
    # network's whole-image bf16 error at <= 6 levels. Tiling in bf16 must not add to it (the blend is
    # summed in float32), and most pixels stay within a level.
    assert 0 < diff.max() <= 6 and diff.mean() < 1.0


def test_precision_choices() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert upscale_script.resolve_precision(None, False, cpu) == torch.float32
    assert upscale_script.resolve_precision(None, True, cpu) == torch.bfloat16  # --half on the CPU
    assert upscale_script.resolve_precision(None, True, cuda) == torch.float16
    assert upscale_script.resolve_precision("fp16", False, cpu) == torch.float16
    assert upscale_script.resolve_precision("bf16", True, cpu) == torch.bfloat16  # agrees with --half
    with pytest.raises(ValueError, match="contradicts --precision fp16"):
        upscale_script.resolve_precision("fp16", True, cpu)
    with pytest.raises(ValueError, match="precision must be one of"):
        upscale_script.resolve_precision("int8", False, cpu)
    with pytest.raises(ValueError, match="tile_batch must be an int >= 1, got 0"):
        upscale_script.upscale("missing.png", "out.png", "missing.safetensors", tile_batch=0)
    net = upscale_script.prepare_network(EDSR(num_feat=8, num_block=1, scale=2), cpu, torch.bfloat16,
                                         channels_last=True, compile_net=True)
    assert hasattr(net, "_orig_mod")  # wrapped by torch.compile (compiled lazily, on the first call)
    conv = net._orig_mod.conv_first.weight
    assert conv.dtype == torch.bfloat16 and conv.is_contiguous(memory_format=torch.channels_last)


def _mirror_wide(img: np.ndarray, width: int) -> np.ndarray:
    """``img`` extended to ``width`` columns by mirroring it (natural content on both sides)."""
    while img.shape[1] < width:
        img = np.concatenate([img, img[:, ::-1]], axis=1)
    return np.ascontiguousarray(img[:, :width])


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared (real weights and Set5)")
def test_realesrgan_default_overlap_keeps_50db(tmp_path: Path) -> None:
    """Tiles of 64 with the default overlap stay >= 50 dB from a whole-image pass with the real
    anime model. Set5 images are smaller than one window (64 + 2*overlap + blend), so each one is
    mirrored to one window plus one tile stride wide: two windows overlapping by the minimum, the
    worst case a large image sees at every seam. 72 rows keep it to one row of tiles (and fast)."""
    model, kwargs = upscale_script.build_model(ANIME_6B)
    window = 64 + 2 * DEFAULT_TILE_OVERLAP + blend_width(DEFAULT_TILE_OVERLAP)
    calls = []

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return model(x)

    for name in ("babyx4.png", "birdx4.png"):
        img = cv2.imread(str(SET5_X4 / name), cv2.IMREAD_COLOR)
        lq = _tensor(_mirror_wide(img[:72], window + 64))
        whole = upscale_script.run_model(model, lq, 4)
        calls.clear()
        tiled = upscale_script.run_model(counted, lq, 4, tile=64)  # tile_overlap: the default
        assert len(calls) == 2  # really tiled
        mse = torch.mean((tiled.clamp(0, 1) - whole.clamp(0, 1)) ** 2).item()
        assert 10 * np.log10(1 / mse) >= 50, name
    # Without overlap (4 plain tiles, hard cuts) the same check fails: it measures the seams.
    cut = upscale_script.run_model(model, lq, 4, tile=64, tile_overlap=0)
    mse = torch.mean((cut.clamp(0, 1) - whole.clamp(0, 1)) ** 2).item()
    assert 10 * np.log10(1 / mse) < 50
    assert kwargs["scale"] == 4


def test_explicit_arch_and_cli(tmp_path: Path, small_edsr) -> None:
    weights, net = small_edsr
    bgr = _crop(tmp_path / "in.png", 0, 0, 16)
    rc = upscale_script.main(
        ["-i", str(tmp_path / "in.png"), "-o", str(tmp_path / "cli.png"), "--model", str(weights),
         "--arch", "EDSR", "--arch-opt", "num_feat=8", "--arch-opt", "num_block=1", "--scale", "2",
         "--arch-opt", "residual_output=true", "--device", "cpu"]
    )
    assert rc == 0
    lq = _tensor(bgr)
    with torch.no_grad():
        # residual form: the nearest-upsampled input replaces the mean the plain net adds back
        ref = net(lq) - net.mean_out + torch.nn.functional.interpolate(lq, scale_factor=2, mode="nearest")
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "cli.png")), _quantise(ref))


def test_errors(tmp_path: Path, small_edsr) -> None:
    weights, _ = small_edsr
    _crop(tmp_path / "in.png", 0, 0, 16)
    odd = tmp_path / "odd.safetensors"
    save_network(torch.nn.Conv2d(3, 3, 3), odd)
    with pytest.raises(ValueError, match="odd.safetensors: infer_arch: cannot recognise"):
        upscale_script.upscale(tmp_path / "in.png", tmp_path / "o.png", odd)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_blocks'\]"):
        upscale_script.upscale(tmp_path / "in.png", tmp_path / "o.png", weights, arch_opts={"num_blocks": 2})
    with pytest.raises(ValueError, match="upsample x2, but scale 4 was asked"):
        upscale_script.upscale(tmp_path / "in.png", tmp_path / "o.png", weights, scale=4)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        upscale_script.upscale(tmp_path / "missing.png", tmp_path / "o.png", weights)
    with pytest.raises(ValueError, match="expected key=value"):
        upscale_script.parse_arch_opts(["num_feat"])
    assert upscale_script.parse_arch_opts(["a=1", "b=true", "c=x"]) == {"a": 1, "b": True, "c": "x"}
    assert upscale_script.main(["-i", str(tmp_path / "missing.png"), "-o", "x", "--model", str(weights)]) == 1
