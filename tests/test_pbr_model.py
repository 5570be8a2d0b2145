"""PBRModel (NeuroPBR runner): map stacking, baselines, phases, option checks, and a short real
training run on a rendered set (views and maps from scripts/render_pbr_views.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.image_io import read_image, tensor2img
from data.pbr_multiview_dataset import MAP_SLICES
from models.pbr_model import PBRModel, constant_maps, first_view_flat_normal, split_maps, stack_maps
from scripts import pbr_infer
from tests.conftest import ROOT, write_png
from train import train
from utils.options import OptionsError, load_options

PRESET = ROOT / "options" / "train" / "PBR" / "quick_test.yml"
# a network small enough for the CPU: a 3-level UNet encoder, a one-layer 32-wide fusion
TINY_NET = ["network_g.encoder=unet", "network_g.unet_channels=[8,16,32]", "network_g.fusion_dim=32",
            "network_g.fusion_heads=2", "network_g.fusion_depth=1", "network_d.ndf=8", "network_d.n_layers=2"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pbr") / "render"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "render_pbr_views.py"), "--procedural", "4",
                    "--samples", "3", "--size", "32", "--seed", "3", "--out", str(out)], check=True,
                   capture_output=True)
    return out


def _overrides(rendered: Path, tmp_path: Path, *extra: str) -> list[str]:
    data = [f"datasets.{s}.{k}={rendered / d}" for s in ("train", "val")
            for k, d in (("dataroot_input", "input"), ("dataroot_output", "output"))]
    sizes = [f"datasets.{s}.{k}" for s in ("train", "val") for k in ("image_size=32", "split.ratios=[0.6,0.4,0]")]
    return [*data, *sizes, *TINY_NET, "datasets.train.batch_size_per_gpu=2", "datasets.train.num_worker_per_gpu=0",
            "train.total_iter=6", "train.gan_start=3", "val.val_freq=6", "logger.save_checkpoint_freq=6",
            "logger.print_freq=3", "logger.use_tb_logger=false", f"path.experiments_root={tmp_path}", *extra]


def test_maps_are_stacked_in_the_datasets_layout():
    maps = {"albedo": torch.full((1, 3, 2, 2), 0.25), "roughness": torch.full((1, 1, 2, 2), 0.5),
            "metallic": torch.full((1, 1, 2, 2), 1.0),
            "normal": torch.tensor([0.0, 0.6, 0.8]).view(1, 3, 1, 1).expand(1, 3, 2, 2)}
    stacked = stack_maps(maps)
    # albedo 0-2, roughness 3, metallic 4, normal 5-7 encoded n * 0.5 + 0.5: (0.5, 0.8, 0.9)
    assert stacked[0, :, 0, 0].tolist() == pytest.approx([0.25, 0.25, 0.25, 0.5, 1.0, 0.5, 0.8, 0.9])
    back = split_maps(stacked)
    assert {k: v.shape[1] for k, v in back.items()} == {"albedo": 3, "roughness": 1, "metallic": 1, "normal": 3}
    assert torch.equal(back["roughness"], maps["roughness"])
    with pytest.raises(ValueError, match="PBRModel needs albedo, roughness, metallic, normal"):
        stack_maps({"albedo": maps["albedo"]})


def test_baseline_predictions_by_hand():
    mean = torch.arange(8, dtype=torch.float32).view(1, 8, 1, 1) / 10  # 0.0, 0.1, ..., 0.7
    views = torch.rand(2, 9, 4, 4)
    const = constant_maps(views, mean, 1)
    assert const.shape == (2, 8, 4, 4) and const[1, :, 3, 2].tolist() == pytest.approx(mean.flatten().tolist())
    first = first_view_flat_normal(views, mean, 1)
    assert torch.equal(first[:, MAP_SLICES["albedo"]], views[:, :3])
    assert first[0, MAP_SLICES["normal"], 1, 1].tolist() == [0.5, 0.5, 1.0]  # the flat normal (0, 0, 1)
    assert first[0, 3:5, 0, 0].tolist() == pytest.approx([0.3, 0.4])  # roughness and metallic: the means
    assert first_view_flat_normal(views, mean, 2).shape == (2, 8, 8, 8)


def test_phases_follow_gan_start_and_d_steps(rendered, tmp_path):
    opt = load_options(PRESET, _overrides(rendered, tmp_path, "train.gan_start=3", "train.d_steps_per_g_step=2"))
    model = PBRModel(opt, torch.device("cpu"))
    phases = [model.phase(i) for i in range(1, 8)]
    assert phases[:3] == [(True, True, False)] * 3  # generator only up to gan_start
    # a = i - 3 = 1..4: the discriminator every step, the generator every second
    assert phases[3:] == [(False, False, True), (False, True, True), (False, False, True), (False, True, True)]
    without_d = load_options(PRESET, _overrides(rendered, tmp_path, "network_d=null", "train.optim_d=null",
                                                "train.gan=null"))
    assert PBRModel(without_d, torch.device("cpu")).phase(5) == (True, True, False)


@pytest.mark.parametrize(("extra", "key", "message"), [
    (["val.tta=true"], "val.tta", "flipping the views does not flip the normals"),
    (["train.optim_d=null"], "train.optim_d", "required with network_d"),
    (["network_d=null", "train.optim_d=null"], "train.gan", "an adversarial loss needs network_d"),
    (["train.losses[0].inputs=[sr,gt]"], "train.losses[0]", "needs the tensor 'sr'"),
])
def test_option_checks_name_the_key(rendered, tmp_path, extra, key, message):
    with pytest.raises(OptionsError) as err:
        load_options(PRESET, _overrides(rendered, tmp_path, *extra))
    assert key in str(err.value) and message in str(err.value)


@pytest.fixture(scope="module")
def trained(rendered, tmp_path_factory) -> Path:
    """The experiment folder of a 6-iteration run (GAN from iteration 4) on the rendered set."""
    runs = tmp_path_factory.mktemp("runs")
    return Path(train(PRESET, _overrides(rendered, runs, "val.save_img=true"))["experiment_dir"])


def test_training_logs_every_map_and_scores_against_the_baselines(trained):
    exp = trained
    metrics = json.loads((exp / "metrics.json").read_text())
    val = metrics["metrics"]["pbr_val"]
    assert {"psnr_albedo", "mae_roughness", "mae_metallic", "normal_angle", "normal_angle_median"} <= set(val)
    assert 0.0 <= val["normal_angle"] <= 180.0 and 0.0 <= val["mae_metallic"] <= 1.0
    baselines = metrics["baselines"]
    flat = baselines["pbr_val (view 0 + flat normal)"]
    mean = baselines["pbr_val (mean maps)"]
    # both baselines use the set's mean roughness and metallic, so they score those identically
    assert flat["mae_roughness"] == pytest.approx(mean["mae_roughness"])
    assert flat["mae_metallic"] == pytest.approx(mean["mae_metallic"])
    assert flat["normal_angle"] > 0.0
    weights = {p.name for p in (exp / "models").iterdir()}
    assert {"net_g_6.safetensors", "net_d_6.safetensors", "net_g_best.safetensors"} <= weights
    saved = [p.name for p in (exp / "visualization").rglob("*.png")]
    for name in ("albedo", "roughness", "metallic", "normal"):  # <sample>_<iteration>_<map>.png
        assert any(n.startswith("sample_") and n.endswith(f"_6_{name}.png") for n in saved), saved


def test_pbr_infer_writes_what_the_network_predicts(rendered, trained, tmp_path):
    weights = trained / "models" / "net_g_best.safetensors"
    views = [rendered / "input" / "clean" / "sample_0000" / f"{v}.png" for v in range(3)]
    assert pbr_infer.main(["--model", str(weights), "--views", *map(str, views), "-o", str(tmp_path / "a"),
                           "--device", "cpu"]) == 0
    net = pbr_infer.load_map_network(weights)
    expected = pbr_infer.predict(net, pbr_infer.read_views(views, 3), torch.device("cpu"))
    for name, value in expected.items():
        written = read_image(tmp_path / "a" / f"{name}.png", keep_channels=True)
        assert written.shape[:2] == (32, 32)
        # the prediction as the 8-bit PNG holds it (to one level: the writer's rounding of exact halves)
        assert np.abs(written * 255 - (tensor2img(value[0]) * 255).round()).max() <= 1.0
    assert read_image(tmp_path / "a" / "view_2.png").tolist() == read_image(views[2]).tolist()
    # a dataset sample: its reference maps are written beside the prediction
    args = ["--model", str(weights), "--opt", str(PRESET), "--sample-idx", "0", "-o", str(tmp_path / "b"),
            "--device", "cpu"] + [a for o in _overrides(rendered, tmp_path)[:8] for a in ("--override", o)]
    assert pbr_infer.main(args) == 0
    written = {p.name for p in (tmp_path / "b").iterdir()}
    assert {"albedo.png", "albedo_gt.png", "normal_gt.png", "view_0.png"} <= written


def test_pbr_infer_bad_input_is_named(rendered, trained, tmp_path, small_edsr):
    views = [rendered / "input" / "clean" / "sample_0000" / f"{v}.png" for v in range(3)]
    with pytest.raises(ValueError, match="the network takes 3 views, got 2"):
        pbr_infer.read_views(views[:2], 3)
    small = tmp_path / "small.png"
    write_png(small, np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="the views differ in size"):
        pbr_infer.read_views([views[0], views[1], small], 3)
    with pytest.raises(ValueError, match="holds a EDSR, an image-to-image network; PBR maps need a multi-view map"):
        pbr_infer.load_map_network(small_edsr[0])
    weights = trained / "models" / "net_g_best.safetensors"
    assert pbr_infer.main(["--model", str(weights), "--views", str(views[0]), str(views[1]), "-o",
                           str(tmp_path / "c")]) == 1
    assert not (tmp_path / "c").exists()


TEST_FILE = ROOT / "options" / "test" / "PBR" / "test_pbr.yml"


def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255  # a map as its 8-bit PNG holds it


def _by_hand(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """One sample's scores from (8, H, W) stacked maps: PSNR and MAE per map and overall, the
    mean and median normal angle in degrees."""
    out = {}
    for name, where in {**MAP_SLICES, "maps": slice(0, 8)}.items():
        p, g = pred[where].double(), gt[where].double()
        out[f"psnr_{name}"] = float(10 * torch.log10(1 / ((p - g) ** 2).mean()))
        out[f"mae_{name}"] = float((p - g).abs().mean())
    a, b = 2 * pred[5:8].double() - 1, 2 * gt[5:8].double() - 1
    cos = (a / a.norm(dim=0) * b / b.norm(dim=0)).sum(dim=0).clamp(-1, 1)
    angles = torch.rad2deg(torch.acos(cos)).flatten()
    out["normal_angle"], out["normal_angle_median"] = float(angles.mean()), float(angles.median())
    return out


def test_test_py_scores_each_map_and_the_baselines(rendered, trained, tmp_path):
    from data.pbr_multiview_dataset import PBRMultiViewDataset
    from models.evaluation import evaluate

    weights = trained / "models" / "net_g_best.safetensors"
    ds_opts = {"dataroot_input": str(rendered / "input"), "dataroot_output": str(rendered / "output"),
               "image_size": 32, "split": {"part": "val", "ratios": [0.6, 0.4, 0], "seed": 42}}
    args = [f"datasets.test_1.{k}={v}" for k, v in ds_opts.items() if k != "split"]
    args += ["datasets.test_1.split.ratios=[0.6,0.4,0]", "models=[]", "val.save_img=true"]
    results = evaluate(TEST_FILE, args, models=[f"tiny={weights}"], strips=1, out_dir=tmp_path / "out")
    assert list(results) == ["mean maps", "view 0 + flat normal", "tiny"]

    dataset = PBRMultiViewDataset(phase="val", **ds_opts)
    samples = [dataset[i] for i in range(len(dataset))]
    net = pbr_infer.load_map_network(weights)
    mean = torch.stack([s["gt"] for s in samples]).double().mean(dim=(0, 2, 3)).float().view(1, 8, 1, 1)
    for sample in samples:
        stem = Path(sample["lq_path"]).name
        lq, gt = sample["lq"][None], sample["gt"]
        with torch.no_grad():
            predictions = {"tiny": stack_maps(net(lq))[0], "mean maps": constant_maps(lq, mean, 1)[0],
                           "view 0 + flat normal": first_view_flat_normal(lq, mean, 1)[0]}
        for model, pred in predictions.items():
            want = _by_hand(_u8(pred), gt)
            got = {k: results[model]["pbr_val"][k]["per_image"][stem] for k in want}
            assert got == pytest.approx(want, rel=1e-5, abs=1e-5), (model, stem)
    # the flat-normal baseline: its normal angle is the reference normals' mean tilt from (0, 0, 1)
    tilt = [float(torch.rad2deg(torch.acos((2 * s["gt"][7] - 1) / (2 * s["gt"][5:8] - 1).norm(dim=0))).mean())
            for s in samples]
    assert results["view 0 + flat normal"]["pbr_val"]["normal_angle"]["mean"] == pytest.approx(
        sum(tilt) / len(tilt), abs=0.2)  # 8-bit rounding of the reference normals
    stem = Path(samples[0]["lq_path"]).name
    saved = read_image(tmp_path / "out" / "tiny" / "pbr_val" / f"{stem}_roughness.png", keep_channels=True)
    with torch.no_grad():
        roughness = _u8(stack_maps(net(samples[0]["lq"][None]))[0, 3])
    assert np.allclose(saved[:, :, 0], roughness.numpy(), atol=1 / 255 + 1e-6)
    strips = sorted(p.name for p in (tmp_path / "out" / "strips" / "pbr_val").iterdir())
    first = sorted(Path(s["lq_path"]).name for s in samples)[0]  # the loader's first sample
    assert strips == sorted(f"{first}_{m}.png" for m in results)  # one validation panel per model
    panel = read_image(tmp_path / "out" / "strips" / "pbr_val" / f"{first}_tiny.png")
    assert panel.shape == (4 * 32, 4 * 32, 3)  # views; predicted, reference and error maps


def test_test_py_refuses_what_pbr_maps_cannot_do(rendered, trained, tmp_path):
    from models.evaluation import evaluate

    weights = trained / "models" / "net_g_best.safetensors"
    with pytest.raises(OptionsError, match="tta: PBRModel's outputs cannot be scored with TTA"):
        evaluate(TEST_FILE, ["models=[]"], models=[f"tiny=tta:{weights}"])
    with pytest.raises(OptionsError, match="val.tta.*flipping the views"):
        evaluate(TEST_FILE, ["models=[]", "val.tta=true"], models=[f"tiny={weights}"])
    with pytest.raises(OptionsError, match="two models are named 'mean maps'"):
        evaluate(TEST_FILE, ["models=[]"], models=[f"mean maps={weights}"])


def test_test_py_refuses_an_image_network_for_maps(rendered, tmp_path):
    from archs.rrdbnet_arch import RRDBNet
    from models.evaluation import evaluate
    from utils.weights import save_network

    path = tmp_path / "rrdb_x1.safetensors"  # the PBR set's scale, so only the kind of network is wrong
    save_network(RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=1), path)
    data = [f"datasets.test_1.dataroot_input={rendered / 'input'}",
            f"datasets.test_1.dataroot_output={rendered / 'output'}", "datasets.test_1.image_size=32"]
    with pytest.raises(ValueError, match=r"--models 'e=.*rrdb_x1.safetensors': .*: it holds a RRDBNet, an "
                                         "image-to-image network; PBR maps need a multi-view map network"):
        evaluate(TEST_FILE, ["models=[]", *data], models=[f"e={path}"], out_dir=tmp_path / "out")


def test_tensorboard_panel_rows(rendered, tmp_path):
    opt = load_options(PRESET, _overrides(rendered, tmp_path))
    model = PBRModel(opt, torch.device("cpu"))
    views = torch.rand(1, 9, 4, 4)
    targets = split_maps(torch.rand(1, 8, 4, 4))
    outputs = {k: v.clone() for k, v in targets.items()}
    outputs["roughness"] = outputs["roughness"] + 0.2  # one map off by 0.2: heat 9 * 0.2 = 1.8
    panel = model.panel({"lq": views}, outputs, targets)
    assert panel.shape == (3, 16, 16)  # 4 rows (views, prediction, reference, error) x 4 maps
    assert torch.equal(panel[:, 0:4, 4:8], views[0, 3:6])  # view 1, top row
    assert torch.equal(panel[:, 4:8, 0:4], outputs["albedo"][0])  # predicted albedo
    assert torch.equal(panel[:, 8:12, 4:8], targets["roughness"][0].expand(3, -1, -1))  # gray map as RGB
    heat = panel[:, 12:16]
    assert torch.equal(heat[:, :, 0:4], torch.zeros(3, 4, 4))  # albedo: no error, black
    expected = torch.tensor([1.0, 0.8, 0.0]).view(3, 1, 1).expand(3, 4, 4)  # roughness: red 1, green 0.8, blue 0
    assert torch.allclose(heat[:, :, 4:8], expected, atol=1e-5)


def test_benchmark_train_records_the_fixed_view_size(rendered, tmp_path):
    from scripts.benchmark_train import benchmark

    results = benchmark(str(PRESET), _overrides(rendered, tmp_path), iters=2, warmup=1, modes=("full", "step"))
    # PBR views have no live patch-size knob: the record carries image_size instead
    assert [(r["mode"], r["batch_size"], r["gt_size"], r["arch"]) for r in results] == [
        ("full", 2, 32, "PBRFusionNet"), ("step", 2, 32, "PBRFusionNet")]
