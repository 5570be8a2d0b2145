"""test.py end to end on CPU: metrics.json against an independent computation, saved images,
TTA, tiling and a missing weights file. Nothing is trained; the networks keep seeded weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from archs.edsr_arch import EDSR
from models.evaluation import evaluate
from tests.conftest import ROOT, SHARED, write_png
from utils.weights import save_network

SET5 = SHARED / "data" / "Set5"
SCALE = 2
CROP = 2
NET_A = {"num_feat": 4, "num_block": 1}
NET_B = {"num_feat": 4, "num_block": 2}


# ------------------------------------------------------------------ independent reference


def read_rgb_u8(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img[..., ::-1].copy()


def to_unit(img_u8: np.ndarray) -> np.ndarray:
    """8-bit levels as the float32 values the pipeline holds, widened to float64."""
    return (img_u8.astype(np.float32) / np.float32(255.0)).astype(np.float64)


def luma(img_u8: np.ndarray, crop: int) -> np.ndarray:
    """BT.601 studio-swing luma on 0..255: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255."""
    rgb = to_unit(img_u8) * 255.0
    y = 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0
    return y[crop:-crop, crop:-crop] if crop else y


def psnr_y(sr_u8: np.ndarray, gt_u8: np.ndarray, crop: int) -> float:
    mse = np.mean((luma(sr_u8, crop) - luma(gt_u8, crop)) ** 2)
    return float(10.0 * np.log10(255.0**2 / mse))


def l1_y(sr_u8: np.ndarray, gt_u8: np.ndarray, crop: int) -> float:
    """Mean absolute luma difference on the [0, 1] scale."""
    return float(np.mean(np.abs(luma(sr_u8, crop) - luma(gt_u8, crop))) / 255.0)


def run_net(net: torch.nn.Module, lq_u8: np.ndarray, tta: bool = False) -> np.ndarray:
    """Forward one LR image (optionally the 8-fold flip/rotation average) and quantise to uint8."""
    x = torch.from_numpy(lq_u8.astype(np.float32) / np.float32(255.0)).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        if not tta:
            out = net(x)
        else:
            # identity, 3 quarter turns, then the same after a horizontal flip; each undone after
            out = None
            for flip in (False, True):
                for turns in range(4):
                    y = torch.flip(x, dims=(-1,)) if flip else x
                    y = net(torch.rot90(y, turns, dims=(-2, -1)))
                    y = torch.rot90(y, -turns, dims=(-2, -1))
                    y = torch.flip(y, dims=(-1,)) if flip else y
                    out = y.clone() if out is None else out.add_(y)
            out = out / 8
    arr = out[0].permute(1, 2, 0).numpy()
    return np.rint(np.clip(arr, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


def load_edsr(path: Path, cfg: dict) -> EDSR:
    net = EDSR(scale=SCALE, **cfg)
    net.load_state_dict(load_file(str(path)))
    return net.eval()


def expected(net: torch.nn.Module, gt_dir: Path, lq_dir: Path, lq_name: str = "{}", tta: bool = False
             ) -> tuple[dict[str, float], dict[str, float], dict[str, np.ndarray]]:
    """Per-image PSNR, L1 and quantised outputs, keyed by the LR file stem (what test.py reports)."""
    values, l1, outputs = {}, {}, {}
    for gt_path in sorted(gt_dir.glob("*.png")):
        lq_path = lq_dir / f"{lq_name.format(gt_path.stem)}.png"
        lq = read_rgb_u8(lq_path)
        gt = read_rgb_u8(gt_path)[: lq.shape[0] * SCALE, : lq.shape[1] * SCALE]  # mod-crop to scale x LR
        sr = run_net(net, lq, tta)
        values[lq_path.stem] = psnr_y(sr, gt, CROP)
        l1[lq_path.stem] = l1_y(sr, gt, CROP)
        outputs[lq_path.stem] = sr
    return values, l1, outputs


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two seeded EDSR weight files and a small synthetic paired set (one GT not mod-cropped)."""
    root = tmp_path_factory.mktemp("evaluation")
    torch.manual_seed(1)
    save_network(EDSR(scale=SCALE, **NET_A), root / "edsr_a.safetensors")
    torch.manual_seed(2)
    save_network(EDSR(scale=SCALE, **NET_B), root / "edsr_b.safetensors")
    rng = np.random.default_rng(5)
    for i, (h, w) in enumerate([(40, 36), (41, 37), (30, 44)]):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(xx / (2 + c + i)) * np.cos(yy / (3 + c)) for c in range(3)], -1)
        hr = np.clip((base + 1) / 2 * 255 + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        lr = cv2.resize(hr[: h // SCALE * SCALE, : w // SCALE * SCALE], (w // SCALE, h // SCALE),
                        interpolation=cv2.INTER_AREA)
        write_png(root / "synth" / "hr" / f"s{i}.png", hr)
        write_png(root / "synth" / "lr" / f"s{i}.png", lr)
    return {"root": root, "a": root / "edsr_a.safetensors", "b": root / "edsr_b.safetensors",
            "synth_hr": root / "synth" / "hr", "synth_lr": root / "synth" / "lr"}


def write_opt(env: dict, path: Path, datasets: tuple[str, ...] = ("set5", "synth"), models: bool = True,
              metrics: tuple[str, ...] = ("psnr", "ssim"), **val: object) -> Path:
    sets = {
        "set5": {"name": "Set5", "type": "PairedImageDataset", "dataroot_gt": str(SET5 / "HR"),
                 "dataroot_lq": str(SET5 / "LR_bicubic" / "X2")},
        "synth": {"name": "Synth", "type": "PairedImageDataset", "dataroot_gt": str(env["synth_hr"]),
                  "dataroot_lq": str(env["synth_lr"])},
    }
    opt = {
        "name": "eval_run",
        "scale": SCALE,
        "device": "cpu",
        "datasets": {f"test_{k}": sets[k] for k in datasets},
        "network_g": {"type": "EDSR", **NET_A},
        "path": {"pretrain_network_g": str(env["a"]), "results_root": str(path.parent / "results")},
        "val": {"save_img": True, "metrics": {
            m: {"type": f"calculate_{m}", "crop_border": CROP, "test_y_channel": True} for m in metrics}, **val},
    }
    if models:
        opt["models"] = [{"name": "edsr_b", "path": str(env["b"]), "network_g": {"type": "EDSR", **NET_B}}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def run_test_py(opt: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "test.py", "-opt", str(opt)]
    for o in overrides:
        cmd += ["-o", o]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------- tests


def test_cli_and_api_write_metrics_matching_an_independent_computation(env, tmp_path):
    # L1 as the second metric: SSIM on Set5's 512x512 images would cost seconds per model
    opt = write_opt(env, tmp_path / "cli" / "test.yml", metrics=("psnr", "l1"))
    proc = run_test_py(opt)
    assert proc.returncode == 0, proc.stderr
    out_dir = tmp_path / "cli" / "results" / "eval_run"
    saved = json.loads((out_dir / "metrics.json").read_text())

    # Model -> dataset -> metric -> {mean, per_image}: the pretrain_network_g model is named after
    # its arch, the models: entry by its name.
    assert list(saved) == ["EDSR", "edsr_b"]
    set5_names = ["babyx2", "birdx2", "butterflyx2", "headx2", "womanx2"]
    for model in saved.values():
        assert list(model) == ["Set5", "Synth"]
        for ds, names in (("Set5", set5_names), ("Synth", ["s0", "s1", "s2"])):
            assert list(model[ds]) == ["psnr", "l1"]
            for metric in model[ds].values():
                assert set(metric) == {"mean", "per_image"}
                assert sorted(metric["per_image"]) == names
                per = list(metric["per_image"].values())
                assert metric["mean"] == pytest.approx(sum(per) / len(per), abs=1e-12)

    nets = {"EDSR": load_edsr(env["a"], NET_A), "edsr_b": load_edsr(env["b"], NET_B)}
    sources = {"Set5": (SET5 / "HR", SET5 / "LR_bicubic" / "X2", "{}x2"),
               "Synth": (env["synth_hr"], env["synth_lr"], "{}")}
    for model_name, net in nets.items():
        for ds, (gt_dir, lq_dir, tmpl) in sources.items():
            want, want_l1, outputs = expected(net, gt_dir, lq_dir, tmpl)
            got = saved[model_name][ds]["psnr"]["per_image"]
            got_l1 = saved[model_name][ds]["l1"]["per_image"]
            for name, value in want.items():
                assert got[name] == pytest.approx(value, abs=1e-6), (model_name, ds, name)
                assert got_l1[name] == pytest.approx(want_l1[name], abs=1e-9), (model_name, ds, name)
            # saved images: <results>/<name>/<model>/<dataset>/<stem>.png, equal to the quantised output
            for name, sr in outputs.items():
                png = out_dir / model_name / ds / f"{name}.png"
                assert png.is_file()
                assert np.array_equal(read_rgb_u8(png), sr), png
    # the two seeded networks really differ, so the per-model results are not copies
    assert saved["EDSR"]["Synth"]["psnr"]["mean"] != saved["edsr_b"]["Synth"]["psnr"]["mean"]

    # The API gives the same numbers as the command line.
    api = evaluate(opt, [f"path.results_root={tmp_path / 'api'}"])
    assert (tmp_path / "api" / "eval_run" / "metrics.json").is_file()
    assert list(api) == list(saved)
    for model_name in saved:
        for ds in saved[model_name]:
            for metric, entry in saved[model_name][ds].items():
                assert api[model_name][ds][metric]["mean"] == pytest.approx(entry["mean"], abs=1e-9)
                assert api[model_name][ds][metric]["per_image"] == pytest.approx(entry["per_image"], abs=1e-9)


def test_tta_equals_a_manual_eight_fold_average(env, tmp_path):
    opt = write_opt(env, tmp_path / "test.yml", datasets=("synth",), models=False, tta=True)
    got = evaluate(opt)["EDSR"]["Synth"]["psnr"]["per_image"]
    net = load_edsr(env["a"], NET_A)
    want, _, _ = expected(net, env["synth_hr"], env["synth_lr"], tta=True)
    plain, _, _ = expected(net, env["synth_hr"], env["synth_lr"], tta=False)
    assert got == pytest.approx(want, abs=1e-6)
    assert all(abs(got[k] - plain[k]) > 1e-3 for k in got)  # TTA was really applied


def test_tiled_evaluation_equals_untiled(env, tmp_path):
    # EDSR with one block sees 6 LR pixels around each output pixel; an overlap of 8 covers that,
    # so a 7-pixel tile grid (several tiles per image, ragged last row/column) changes nothing.
    untiled = evaluate(write_opt(env, tmp_path / "plain" / "test.yml", datasets=("synth",), models=False))
    tiled = evaluate(write_opt(env, tmp_path / "tiled" / "test.yml", datasets=("synth",), models=False,
                               tile=7, tile_overlap=8))
    for metric in ("psnr", "ssim"):
        assert tiled["EDSR"]["Synth"][metric]["per_image"] == pytest.approx(
            untiled["EDSR"]["Synth"][metric]["per_image"], abs=1e-6)
    for name in ("s0", "s1", "s2"):
        a = read_rgb_u8(tmp_path / "plain" / "results" / "eval_run" / "EDSR" / "Synth" / f"{name}.png")
        b = read_rgb_u8(tmp_path / "tiled" / "results" / "eval_run" / "EDSR" / "Synth" / f"{name}.png")
        assert np.array_equal(a, b), name


def test_tiles_without_enough_overlap_do_change_the_output(env, tmp_path):
    """The tiled test above can fail: with no overlap the tile seams alter the result."""
    untiled = evaluate(write_opt(env, tmp_path / "plain" / "test.yml", datasets=("synth",), models=False))
    seams = evaluate(write_opt(env, tmp_path / "seams" / "test.yml", datasets=("synth",), models=False,
                               tile=7, tile_overlap=0))
    a, b = untiled["EDSR"]["Synth"]["psnr"]["per_image"], seams["EDSR"]["Synth"]["psnr"]["per_image"]
    assert max(abs(a[k] - b[k]) for k in a) > 1e-2
    for name in ("s0", "s1", "s2"):
        plain = read_rgb_u8(tmp_path / "plain" / "results" / "eval_run" / "EDSR" / "Synth" / f"{name}.png")
        seam = read_rgb_u8(tmp_path / "seams" / "results" / "eval_run" / "EDSR" / "Synth" / f"{name}.png")
        assert not np.array_equal(plain, seam), name


def test_missing_weights_file_is_a_clean_error(env, tmp_path):
    opt = write_opt(env, tmp_path / "test.yml", datasets=("synth",), models=False)
    missing = tmp_path / "no_such_dir" / "net_g_best.safetensors"
    proc = run_test_py(opt, f"path.pretrain_network_g={missing}")
    assert proc.returncode == 2
    assert str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr

    # the same for a models: entry, through the API
    opt = write_opt(env, tmp_path / "models" / "test.yml", datasets=("synth",))
    with pytest.raises(FileNotFoundError, match="weights file not found.*no_such_file"):
        evaluate(opt, [f"models[0].path={tmp_path / 'no_such_file.safetensors'}"])


def test_tables_print_in_full_when_stdout_is_not_a_terminal(capsys):
    from rich.table import Table

    from utils.logger import print_table

    table = Table(title="wide")
    names = [f"a_rather_long_metric_name_{i}" for i in range(12)]  # ~370 columns: far beyond 80
    for name in names:
        table.add_column(name)
    table.add_row(*[f"{i}.1234" for i in range(12)])
    print_table(table)
    out = capsys.readouterr().out
    assert "…" not in out and all(name in out for name in names) and "11.1234" in out


def test_baselines_run_on_whole_images_even_with_tiles(env, tmp_path):
    """A baseline is a plain function: tiles would only change its borders, so it never gets them."""
    from data.imresize import imresize_tensor

    tiled = evaluate(write_opt(env, tmp_path / "t" / "test.yml", datasets=("synth",), models=False,
                               tile=7, tile_overlap=0, baselines=True))  # seams, were it tiled
    for path in sorted(env["synth_lr"].iterdir()):
        lq = torch.from_numpy(read_rgb_u8(path)).permute(2, 0, 1)[None].double() / 255
        want = (imresize_tensor(lq, SCALE).clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy().astype(np.uint8)
        got = read_rgb_u8(tmp_path / "t" / "results" / "eval_run" / "bicubic" / "Synth" / f"{path.stem}.png")
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, path.stem  # float32 vs float64 rounding
        assert tiled["bicubic"]["Synth"]["psnr"]["per_image"][path.stem] is not None
