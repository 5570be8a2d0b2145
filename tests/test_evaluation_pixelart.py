"""test.py for the pixel-art stack: full-range / studio Y, gradient-L1, SSIM on tiny sprites, LPIPS
offline, ``--models`` with ema:/swa:/twopass:/tta: prefixes, the two-pass mode, strips, baselines,
metrics.json against independent numpy references, and the messages for bad entries. Nothing is
trained: the networks keep seeded weights, written by the tests with the metadata training writes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from data.hr_image_dataset import HRImageDataset
from data.imresize import imresize_tensor
from models import evaluation
from models.base_model import build_network
from models.evaluation import make_strip, parse_model_arg, split_prefixes, strip_zoom
from tests.conftest import ROOT, write_png
from utils.metrics.lpips_metric import calculate_lpips
from utils.metrics.pixel_metrics import calculate_gradient_l1, calculate_l1
from utils.metrics.psnr_ssim import ImageTooSmallError, calculate_psnr, calculate_ssim
from utils.registry import METRIC_REGISTRY
from utils.tta import tta_forward
from utils.weights import network_metadata, save_network

NET = {"type": "EDSR", "num_feat": 4, "num_block": 1, "residual_output": True}


# ------------------------------------------------------------------ metrics by hand


def test_psnr_and_l1_on_full_range_and_studio_y_by_hand():
    # grey 0.5 against the same with red raised by 0.1: only R differs, so dY = w_R * 0.1
    a = torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64)
    b = a.clone()
    b[:, 0] += 0.1
    full_dy, studio_dy = 0.299 * 0.1, 65.481 / 255 * 0.1
    assert calculate_psnr(a, b, y_range="full").item() == pytest.approx(20 * math.log10(1 / full_dy), abs=1e-9)
    assert calculate_psnr(a, b, y_range="studio").item() == pytest.approx(20 * math.log10(1 / studio_dy), abs=1e-9)
    assert calculate_psnr(a, b, y_range="full").item() == pytest.approx(30.4866, abs=1e-4)  # 20 log10(1/0.0299)
    assert calculate_psnr(a, b, y_range="studio").item() == pytest.approx(31.8084, abs=1e-4)
    assert calculate_l1(a, b, y_range="full").item() == pytest.approx(full_dy, abs=1e-12)
    assert calculate_l1(a, b, y_range="studio").item() == pytest.approx(studio_dy, abs=1e-12)


def test_gradient_l1_of_a_ramp_by_hand():
    # grey ramp rising 0.05 per column against a flat image: Sobel/8 gives dx = 0.05 inside, 0.025 on
    # the replicate-padded edge columns, dy = 0; the metric is 0.5 * mean(|dx|)
    ramp = (torch.arange(8, dtype=torch.float64) * 0.05).expand(1, 3, 8, 8).clone()
    flat = torch.zeros_like(ramp)
    want = 0.5 * 0.05 * (6 + 2 * 0.5) / 8  # = 0.021875
    assert calculate_gradient_l1(ramp, flat, y_range="full").item() == pytest.approx(0.021875, abs=1e-12)
    assert calculate_gradient_l1(ramp, flat, y_range="full").item() == pytest.approx(want, abs=1e-12)
    # studio Y has the ramp's slope times 219/255; a crop of 1 re-pads the cut edges: 4 inner + 2 half columns
    assert calculate_gradient_l1(ramp, flat, y_range="studio").item() == pytest.approx(want * 219 / 255, abs=1e-12)
    got = calculate_gradient_l1(ramp, flat, crop_border=1, y_range="full").item()
    assert got == pytest.approx(0.5 * 0.05 * 5 / 6, abs=1e-12)


def _ssim_numpy(a: np.ndarray, b: np.ndarray, size: int, sigma: float) -> float:
    """SSIM of two (H, W) arrays on [0, 255] with a size x size Gaussian, valid region only."""
    g = cv2.getGaussianKernel(size, sigma)
    window = g @ g.T
    r = size // 2

    def filt(x: np.ndarray) -> np.ndarray:
        out = cv2.filter2D(x, -1, window, borderType=cv2.BORDER_CONSTANT)
        return out[r:-r, r:-r] if r else out

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = filt(a), filt(b)
    s11, s22, s12 = filt(a * a) - mu1**2, filt(b * b) - mu2**2, filt(a * b) - mu1 * mu2
    return float((((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))).mean())


def test_ssim_small_window_scores_tiles_smaller_than_11():
    rng = np.random.default_rng(3)
    x, y = rng.random((1, 1, 8, 9)), rng.random((1, 1, 8, 9))
    with pytest.raises(ImageTooSmallError, match="small_window"):
        calculate_ssim(torch.from_numpy(x), torch.from_numpy(y), test_y_channel=False)
    got = calculate_ssim(torch.from_numpy(x), torch.from_numpy(y), test_y_channel=False, small_window=True).item()
    # 8 px: a 7x7 window with sigma 1.5 * 7 / 11
    assert got == pytest.approx(_ssim_numpy(x[0, 0] * 255, y[0, 0] * 255, 7, 1.5 * 7 / 11), abs=1e-9)
    # images that fit 11x11 are scored as before
    big = torch.from_numpy(rng.random((1, 1, 16, 16)))
    assert calculate_ssim(big, big * 0.9, test_y_channel=False, small_window=True).item() == pytest.approx(
        calculate_ssim(big, big * 0.9, test_y_channel=False).item(), abs=1e-15)


def test_lpips_metric_runs_offline_and_equals_the_loss():
    from losses.lpips_loss import LPIPSLoss

    assert METRIC_REGISTRY.get("calculate_lpips") is calculate_lpips
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.random((2, 3, 36, 40)).astype(np.float32))
    b = (a + 0.1 * torch.from_numpy(rng.standard_normal((2, 3, 36, 40)).astype(np.float32))).clamp(0, 1)
    got = calculate_lpips(a, b, crop_border=2, pretrained=False)
    assert got.shape == (2,) and got.dtype == torch.float64
    assert calculate_lpips(a, a, pretrained=False).tolist() == [0.0, 0.0]
    torch.manual_seed(0)  # the metric draws its random backbone from seed 0
    loss = LPIPSLoss(pretrained=False)
    for i in range(2):
        assert got[i].item() == pytest.approx(loss(a[i:i + 1, :, 2:-2, 2:-2], b[i:i + 1, :, 2:-2, 2:-2]).item(),
                                              abs=1e-6)
    assert got[0].item() > 1e-3
    with pytest.raises(ImageTooSmallError, match="31 pixels"):
        calculate_lpips(a[..., :30, :], b[..., :30, :], pretrained=False)


# ------------------------------------------------------------------ --models parsing


def test_models_items_and_prefixes_are_parsed():
    spec = parse_model_arg("ema_x2_tail=ema:runs/pxsr_x2_tail/best.pth")
    assert (spec.name, spec.path, spec.copy, spec.twopass, spec.tta) == (
        "ema_x2_tail", "runs/pxsr_x2_tail/best.pth", "ema", False, None)
    spec = parse_model_arg("swa_x4=swa:runs/final_swa.pth")
    assert (spec.copy, spec.path) == ("swa", "runs/final_swa.pth")
    spec = parse_model_arg("twopass_x4=twopass:runs/x2/best.pth")
    assert (spec.copy, spec.twopass, spec.path) == (None, True, "runs/x2/best.pth")
    spec = parse_model_arg("plain=pretrained/edsr_base_x2.pt")
    assert (spec.copy, spec.twopass, spec.tta, spec.path) == (None, False, None, "pretrained/edsr_base_x2.pt")
    spec = parse_model_arg("all=tta:TwoPass:EMA:runs/x.safetensors")  # any order, any case
    assert (spec.copy, spec.twopass, spec.tta, spec.path) == ("ema", True, True, "runs/x.safetensors")
    assert parse_model_arg("odd=runs/a:b.pth").path == "runs/a:b.pth"  # a token that is no prefix starts the path
    assert "--models 'all=" in spec.where
    for bad, message in (("no_name_given", "NAME="), ("=ema:x.pth", "NAME="), ("a/b=x.pth", "NAME="),
                         ("a=ema:swa:x.pth", "exclude each other"), ("a=ema:", "no weights path")):
        with pytest.raises(ValueError, match=message):
            parse_model_arg(bad)
    flags, path = split_prefixes("swa:twopass:x", "w")
    assert flags == {"copy": "swa", "twopass": True, "tta": None} and path == "x"


# ------------------------------------------------------------------ strips


def test_strip_size_and_panels_equal_the_inputs_and_outputs():
    rng = np.random.default_rng(1)
    lq = torch.from_numpy(rng.random((1, 3, 4, 5)).astype(np.float32))
    outs = [("m1", torch.from_numpy(rng.random((1, 3, 8, 10)).astype(np.float32))),
            ("m2", torch.from_numpy(rng.random((1, 3, 8, 10)).astype(np.float32)))]
    gt = torch.from_numpy(rng.random((1, 3, 8, 10)).astype(np.float32))
    zoom = strip_zoom(8)
    assert zoom == 8  # ceil(96 / 8) = 12, capped at 8
    strip = make_strip(lq, outs, gt)
    assert strip.shape == (evaluation.LABEL_BAND + 8 * zoom, 4 * 10 * zoom, 3) and strip.dtype == np.uint8

    def u8(t: torch.Tensor) -> np.ndarray:
        return np.round(t[0].permute(1, 2, 0).numpy().astype(np.float64) * 255).astype(np.uint8)

    lr_up = np.repeat(np.repeat(u8(lq), 2, axis=0), 2, axis=1)  # nearest x2 to the HR size
    for i, want in enumerate([lr_up, u8(outs[0][1]), u8(outs[1][1]), u8(gt)]):
        panel = strip[evaluation.LABEL_BAND:, i * 80:(i + 1) * 80]
        assert np.array_equal(panel, np.repeat(np.repeat(want, zoom, axis=0), zoom, axis=1)), i
        band = strip[:evaluation.LABEL_BAND, i * 80:(i + 1) * 80]
        assert band.min() < 100 and (band == 255).mean() > 0.5  # dark text on white
    plain = make_strip(lq, outs, gt, labels=False)
    assert np.array_equal(plain, strip[evaluation.LABEL_BAND:])


# ------------------------------------------------------------------ end to end


def _pixel_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A pixel-art-like image: 4x4 blocks from an 8-colour palette."""
    palette = rng.integers(0, 256, (8, 3), dtype=np.uint8)
    return np.kron(palette[rng.integers(0, 8, (h // 4, w // 4))], np.ones((4, 4, 1), np.uint8))


def _save(net_opt: dict, seed: int, path: Path, copy: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = build_network(net_opt)
    save_network(net, path, metadata=network_metadata(net_opt, net_opt["scale"], 10, copy))
    return load_file(str(path))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An HR-only set (40x36, 36x44 and an 8x12 sprite), an x2 run folder whose best is the SWA average
    (net_g_ema_5 and net_g_ema_10 beside it, all different weights) and an x4 best."""
    root = tmp_path_factory.mktemp("pixelart_eval")
    rng = np.random.default_rng(7)
    for name, (h, w) in (("a_tile", (40, 36)), ("b_sprite", (36, 44)), ("c_tiny", (8, 12))):
        write_png(root / "hr" / f"{name}.png", _pixel_image(rng, h, w))
    x2, x4 = {**NET, "scale": 2}, {**NET, "scale": 4}
    models = root / "run_x2" / "models"
    files = {"ema_5": _save(x2, 1, models / "net_g_ema_5.safetensors", "ema"),
             "ema_10": _save(x2, 2, models / "net_g_ema_10.safetensors", "ema"),
             "swa": _save(x2, 3, models / "net_g_swa_final.safetensors", "swa_final"),
             "x4": _save(x4, 4, root / "run_x4" / "models" / "net_g_best.safetensors", "ema")}
    _save(x2, 3, models / "net_g_best.safetensors", "swa")  # SWA won: best holds the average
    return {"root": root, "hr": root / "hr", "run_x2": root / "run_x2", "models_x2": models,
            "x4_best": root / "run_x4" / "models" / "net_g_best.safetensors", "sd": files}


def _write_opt(env: dict, path: Path, scale: int, metrics: dict, **extra: object) -> Path:
    opt = {
        "name": "px", "scale": scale, "device": "cpu",
        "datasets": {"test_1": {"name": "Sprites", "type": "HRImageDataset", "dataroot_gt": str(env["hr"]),
                                "num_worker_per_gpu": 0}},
        "network_g": {"type": "EDSR", "num_feat": 4, "num_block": 1},
        "path": {"results_root": str(path.parent / "results")},
        "val": {"save_img": True, "metrics": metrics},
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def _seed_metrics(scale: int, **more: dict) -> dict:
    """The original tool's settings: full-range Y, crop = scale."""
    y = {"crop_border": scale, "test_y_channel": True, "y_range": "full"}
    return {"psnr": {"type": "calculate_psnr", **y}, "l1": {"type": "calculate_l1", **y},
            "gradient_l1": {"type": "calculate_gradient_l1", **y}, **more}


def _net(sd: dict[str, torch.Tensor], scale: int) -> torch.nn.Module:
    net = build_network({**NET, "scale": scale})
    net.load_state_dict(sd)
    return net.eval()


def _u8(t: torch.Tensor) -> np.ndarray:
    """A float 1CHW/CHW output as the 8-bit HWC image test.py scores and saves."""
    t = t[0] if t.dim() == 4 else t
    return np.rint(t.clamp(0, 1).permute(1, 2, 0).numpy() * np.float32(255)).astype(np.uint8)


def _y_full(img_u8: np.ndarray, crop: int) -> np.ndarray:
    rgb = (img_u8.astype(np.float32) / np.float32(255)).astype(np.float64)
    y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    return y[crop:-crop, crop:-crop]


def _sobel(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.pad(y, 1, mode="edge")
    dx = (p[:-2, 2:] - p[:-2, :-2]) + 2 * (p[1:-1, 2:] - p[1:-1, :-2]) + (p[2:, 2:] - p[2:, :-2])
    dy = (p[2:, :-2] - p[:-2, :-2]) + 2 * (p[2:, 1:-1] - p[:-2, 1:-1]) + (p[2:, 2:] - p[:-2, 2:])
    return dx / 8, dy / 8


def _reference(sr_u8: np.ndarray, gt_u8: np.ndarray, crop: int) -> dict[str, float]:
    """PSNR, L1 and gradient-L1 on full-range Y, computed in numpy."""
    a, b = _y_full(sr_u8, crop), _y_full(gt_u8, crop)
    (ax, ay), (bx, by) = _sobel(a), _sobel(b)
    return {"psnr": float(10 * np.log10(1.0 / np.mean((a - b) ** 2))), "l1": float(np.mean(np.abs(a - b))),
            "gradient_l1": float(np.mean(0.5 * (np.abs(ax - bx) + np.abs(ay - by))))}


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = evaluation.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_metrics_json_of_two_checkpoints_with_baselines_and_strips(env, tmp_path, capsys):
    metrics = _seed_metrics(2, lpips={"type": "calculate_lpips", "crop_border": 2, "pretrained": False})
    opt = _write_opt(env, tmp_path / "test.yml", 2, metrics, models=[
        {"name": "from_file", "path": f"ema:{env['models_x2'] / 'net_g_ema_5.safetensors'}"}])
    out_dir = tmp_path / "out"
    code, stdout, err = _run(["-opt", str(opt), "--baselines", "--strips", "1", "--out", str(out_dir), "--models",
                              f"ema_run=ema:{env['run_x2']}",
                              f"swa_final=swa:{env['models_x2'] / 'net_g_swa_final.safetensors'}"], capsys)
    assert code == 0, err
    saved = json.loads((out_dir / "metrics.json").read_text())
    # baselines first, then the file's models: entries, then --models, in the order written
    assert list(saved) == ["nearest", "bicubic", "from_file", "ema_run", "swa_final"]
    # ema: on the run folder took the newest EMA file, since net_g_best holds the SWA average
    nets = {"from_file": _net(env["sd"]["ema_5"], 2), "ema_run": _net(env["sd"]["ema_10"], 2),
            "swa_final": _net(env["sd"]["swa"], 2)}
    dataset = HRImageDataset(str(env["hr"]), scale=2, phase="val")
    fns = {"nearest": lambda x: F.interpolate(x, scale_factor=2, mode="nearest"),
           "bicubic": lambda x: imresize_tensor(x, 2), **nets}
    torch.manual_seed(0)
    from losses.lpips_loss import LPIPSLoss

    lpips = LPIPSLoss(pretrained=False)
    for i in range(len(dataset)):
        sample = dataset[i]
        stem = Path(sample["lq_path"]).stem
        gt_u8 = _u8(sample["gt"])
        for model, fn in fns.items():
            with torch.no_grad():
                sr = fn(sample["lq"][None])
            sr_u8 = _u8(sr)
            got = {m: saved[model]["Sprites"][m]["per_image"][stem] for m in metrics}
            want = _reference(sr_u8, gt_u8, 2)
            if stem == "c_tiny":  # 8x12: crop 2 leaves 4x8, too small for LPIPS only
                assert got["lpips"] is None
            else:
                q = torch.from_numpy(sr_u8.astype(np.float32) / np.float32(255)).permute(2, 0, 1)[None]
                with torch.no_grad():
                    want["lpips"] = lpips(q[..., 2:-2, 2:-2], sample["gt"][None, :, 2:-2, 2:-2]).item()
            for m, value in want.items():
                assert got[m] == pytest.approx(value, abs=1e-6), (model, stem, m)
            saved_png = cv2.imread(str(out_dir / model / "Sprites" / f"{stem}.png"))[..., ::-1]
            assert np.array_equal(saved_png, sr_u8), (model, stem)
    for model in saved:
        for entry in saved[model]["Sprites"].values():
            values = [v for v in entry["per_image"].values() if v is not None]
            assert entry["mean"] == pytest.approx(sum(values) / len(values), abs=1e-12)
    assert saved["ema_run"]["Sprites"]["psnr"]["mean"] != saved["swa_final"]["Sprites"]["psnr"]["mean"]
    # one table on the console with every model of the set
    assert all(name in stdout for name in saved) and "gradient_l1" in stdout
    # --strips 1: a strip of the first image only, LR | 5 models | HR, its model panels the saved outputs
    strips = sorted((out_dir / "strips" / "Sprites").glob("*.png"))
    assert [p.name for p in strips] == ["a_tile.png"]
    strip = cv2.imread(str(strips[0]))[..., ::-1]
    zoom = strip_zoom(40)
    assert strip.shape == (evaluation.LABEL_BAND + 40 * zoom, 7 * 36 * zoom, 3)
    for k, model in enumerate(saved, start=1):
        panel = strip[evaluation.LABEL_BAND::zoom, k * 36 * zoom:(k + 1) * 36 * zoom:zoom]
        assert np.array_equal(panel, cv2.imread(str(out_dir / model / "Sprites" / "a_tile.png"))[..., ::-1]), model
    assert "c_tiny" in (out_dir / "test.log").read_text()  # the skipped image is listed


def test_two_pass_output_equals_the_model_applied_twice(env, tmp_path):
    x2_file = env["models_x2"] / "net_g_ema_10.safetensors"
    opt = _write_opt(env, tmp_path / "test.yml", 4, _seed_metrics(4), models=[
        {"name": "x2_twice", "path": f"twopass:{x2_file}"}, {"name": "x4", "path": str(env["x4_best"])}])
    results = evaluation.evaluate(opt)
    net = _net(env["sd"]["ema_10"], 2)
    dataset = HRImageDataset(str(env["hr"]), scale=4, phase="val")
    for i in range(len(dataset)):
        sample = dataset[i]
        stem = Path(sample["lq_path"]).stem
        with torch.no_grad():
            want = _u8(net(net(sample["lq"][None])))
        saved = cv2.imread(str(tmp_path / "results" / "px" / "x2_twice" / "Sprites" / f"{stem}.png"))[..., ::-1]
        assert want.shape[:2] == sample["gt"].shape[-2:] and np.array_equal(saved, want), stem
        got = results["x2_twice"]["Sprites"]["psnr"]["per_image"][stem]
        if stem == "c_tiny":  # 8x12 at x4: crop 4 leaves nothing; skipped by every metric, not an error
            assert got is None and all(results[m]["Sprites"][k]["per_image"][stem] is None
                                       for m in results for k in ("psnr", "l1", "gradient_l1"))
        else:
            assert got == pytest.approx(_reference(want, _u8(sample["gt"]), 4)["psnr"], abs=1e-6)
    assert results["x2_twice"]["Sprites"]["psnr"]["mean"] != results["x4"]["Sprites"]["psnr"]["mean"]


def test_tta_prefix_applies_to_its_model_only(env, tmp_path):
    x2_file = env["models_x2"] / "net_g_ema_10.safetensors"
    opt = _write_opt(env, tmp_path / "test.yml", 2, _seed_metrics(2))
    results = evaluation.evaluate(opt, models=[f"plain={x2_file}", f"tta=tta:{x2_file}"])
    net = _net(env["sd"]["ema_10"], 2)
    sample = HRImageDataset(str(env["hr"]), scale=2, phase="val")[0]
    with torch.no_grad():
        want = _reference(_u8(tta_forward(net, sample["lq"][None])), _u8(sample["gt"]), 2)["psnr"]
    got = results["tta"]["Sprites"]["psnr"]["per_image"]["a_tile"]
    assert got == pytest.approx(want, abs=1e-6)
    assert abs(got - results["plain"]["Sprites"]["psnr"]["per_image"]["a_tile"]) > 1e-3


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("scale, item, message", [
    (2, "ghost=ema:{root}/no_such_run/net_g_best.safetensors",
     "--models 'ghost=ema:.*weights file not found.*no_such_run"),
    (2, "typo=emma:{root}/run_x2", "'emma:' is not a known prefix"),
    (4, "big=twopass:{x4}", "--models 'big=twopass:.*twopass: runs an x2 model twice for x4, but .* is an x4 model"),
    (2, "big={x4}", "--models 'big=.*upscales x4, but the test set 'Sprites' is x2"),
    (4, "small={models}/net_g_ema_10.safetensors", "upscales x2, but the test set 'Sprites' is x4.*twopass:"),
    (2, "e=ema:{models}/net_g_best.safetensors", "ema: asks for the EMA weights, but .* holds the SWA average "
                                                 r"\(promoted to best\) \(its metadata: copy=swa\)"),
    (2, "s=swa:{models}/net_g_ema_5.safetensors", "holds the EMA weights .*the SWA average is .*net_g_swa_final"),
    (2, "s=ema:{models}/net_g_swa_final.safetensors", "holds the SWA average .*write swa: to score this file"),
])
def test_bad_model_entries_are_named_in_one_line(env, tmp_path, capsys, scale, item, message):
    opt = _write_opt(env, tmp_path / "test.yml", scale, _seed_metrics(scale))
    item = item.format(root=env["root"], x4=env["x4_best"], models=env["models_x2"])
    code, _, err = _run(["-opt", str(opt), "--models", item], capsys)
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), err
    assert not (tmp_path / "results" / "px" / "metrics.json").exists()


def test_option_file_entries_and_check(env, tmp_path, capsys):
    # a models: entry of the file with a prefix in its path, a param_key that contradicts it, and
    # a name used twice between the file and --models
    x4_opt = _write_opt(env, tmp_path / "x4.yml", 4, _seed_metrics(4), models=[
        {"name": "twice", "path": f"twopass:{env['models_x2'] / 'net_g_ema_5.safetensors'}"}])
    code, out, err = _run(["-opt", str(x4_opt), "--check", "--models", f"later=twopass:{env['x4_best']}"], capsys)
    assert code == 2 and "models[0]" not in err and "later=twopass" in err and "x4 model" in err
    code, out, err = _run(["-opt", str(x4_opt), "--check", "--models", f"ok=ema:{env['root'] / 'not_yet'}"], capsys)
    assert code == 0, err
    assert "models[twice] (twopass) (EDSR)" in out and "ok=ema:" in out and "does not exist yet" in out
    code, _, err = _run(["-opt", str(x4_opt), "--check", "--models", f"twice={env['x4_best']}"], capsys)
    assert code == 2 and "two models are named 'twice'" in err
    bad_key = _write_opt(env, tmp_path / "key.yml", 2, _seed_metrics(2), models=[
        {"name": "k", "path": f"swa:{env['models_x2']}", "param_key": "params_ema"}])
    code, _, err = _run(["-opt", str(bad_key), "--check"], capsys)
    assert code == 2 and "models[0] ('k')" in err and "param_key" in err


@pytest.mark.parametrize("option_file", ["options/test/PixelArt/test_pixelart_x2.yml",
                                         "options/test/PixelArt/test_pixelart_x4.yml"])
def test_shipped_pixelart_test_files_use_the_seed_settings(option_file):
    from utils.options import load_options

    opt = load_options(ROOT / option_file)
    test_set = opt.datasets["test_1"]
    assert opt.val.baselines and opt.val.strips == 4 and test_set["dataroot_gt"] == "datasets/pixelart"
    # the test split of the folder the training files split, with the same ratios and seed
    train_file = load_options(ROOT / f"options/train/PixelArt/edsr_64x32_x{opt.scale}_trunk.yml")
    train_split = train_file.datasets["train"]["split"]
    assert test_set["split"] == {**train_split, "part": "test"}
    for name in ("psnr", "ssim", "l1", "gradient_l1"):
        m = opt.val.metrics[name]
        assert (m["crop_border"], m["test_y_channel"], m["y_range"]) == (opt.scale, True, "full"), name
    specs = evaluation.model_specs(opt)
    assert {s.copy for s in specs} >= {"ema", "swa"}
    assert all(s.path.startswith(f"experiments/PixelArt_edsr_64x32_x{opt.scale if not s.twopass else 2}_")
               for s in specs)
    assert any(s.twopass for s in specs) == (opt.scale == 4)
