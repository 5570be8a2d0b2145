"""The shipped adversarial option files, run for a few iterations on CPU.

ESRGAN phase 2 runs on generated 128 px images (its discriminator takes 128x128 only) from
phase-1 weights the test writes; OpenSR's file runs on the shipped Sentinel-2 scenes as they are,
and its 4th band is followed from the file through the network to the saved output.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from data.imresize import imresize
from models.base_model import build_network
from tests.conftest import ROOT, write_png
from train import train
from utils.options import load_options
from utils.weights import save_network

S2 = ROOT / "datasets" / "s2_rgbn" / "REFERENCE_SCENES_RGBN_B04B03B02B08.npy"
ITERS = 3


def _flat(sd: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([sd[k].double().flatten() for k in sorted(sd) if sd[k].is_floating_point()])


@pytest.fixture(scope="module")
def data_128(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("esrgan_data")
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float64)
    for i in range(3):
        base = np.stack([np.sin(xx / (3 + c + i)) + np.cos(yy / (4 + c)) for c in range(3)], -1)
        hr = np.clip(((base + 2) / 4 + rng.normal(0, 0.05, base.shape)) * 255, 0, 255).round().astype(np.uint8)
        write_png(root / "hr" / f"im{i}.png", hr)
        write_png(root / "lr" / f"im{i}.png", cv2.resize(hr, (32, 32), interpolation=cv2.INTER_AREA))
    return root


def test_esrgan_phase_two_trains_from_phase_one_weights(data_128, tmp_path):
    path = ROOT / "options/train/ESRGAN/train_ESRGAN_x4.yml"
    common = [
        f"datasets.train.dataroot_gt={data_128 / 'hr'}", f"datasets.train.dataroot_lq={data_128 / 'lr'}",
        f"datasets.val.dataroot_gt={data_128 / 'hr'}", f"datasets.val.dataroot_lq={data_128 / 'lr'}",
        "datasets.train.batch_size_per_gpu=2", "datasets.train.num_worker_per_gpu=0",
        "network_g.num_block=2", "network_d.num_feat=8", "train.losses[0].pretrained=false",
        "device=cpu", f"train.total_iter={ITERS}", f"path.experiments_root={tmp_path / 'exp'}",
        "logger.use_tb_logger=false",
    ]
    opt = load_options(path, common)
    # the file's formulation: L_percep + 0.005 L_G^Ra + 0.01 L1, VGG19 conv5_4 before activation
    assert opt.model_type == "SRGANModel" and opt.train.gan["gan_type"] == "ragan"
    assert float(opt.train.gan["loss_weight"](0)) == 0.005
    losses = {e["type"]: e for e in opt.train.losses}
    percep = losses["PerceptualLoss"]
    assert percep["layer_weights"] == {"conv5_4": 1.0} and percep["vgg_type"] == "vgg19"
    assert float(losses["L1Loss"]["loss_weight"](0)) == 0.01
    assert opt.train.optim_g["lr"] == opt.train.optim_d["lr"] == 1e-4
    assert tuple(opt.train.optim_d["betas"]) == (0.9, 0.99)
    assert opt.train.scheduler["milestones"] == [50000, 100000, 200000, 300000] and opt.train.scheduler["gamma"] == 0.5
    assert opt.network_d == {"type": "VGGStyleDiscriminator", "num_in_ch": 3, "num_feat": 8, "input_size": 128}
    torch.manual_seed(0)
    phase1 = tmp_path / "psnr.safetensors"
    save_network(build_network(opt.network_g), phase1)

    result = train(path, common + [f"path.pretrain_network_g={phase1}"])

    models = Path(result["experiment_dir"]) / "models"
    assert result["iter"] == ITERS
    for label in ("net_g", "net_g_ema", "net_d"):
        assert (models / f"{label}_{ITERS}.safetensors").is_file()
    w0, w = _flat(load_file(phase1)), _flat(load_file(models / f"net_g_{ITERS}.safetensors"))
    step = (w - w0).abs().max()
    assert 0.5 * 1e-4 * ITERS < step < 1.5 * 1e-4 * ITERS  # Adam at lr 1e-4, from phase 1's weights
    assert all(np.isfinite(v) for m in result["metrics"].values() for v in m.values())


def test_opensr_file_trains_on_the_shipped_sentinel2_scenes(tmp_path):
    path = ROOT / "options/train/OpenSR/train_SRGAN_S2_RGBNIR_x4.yml"
    total = 4
    common = [
        "device=cpu", f"train.total_iter={total}", f"path.experiments_root={tmp_path / 'exp'}",
        "datasets.train.num_worker_per_gpu=0", "datasets.train.batch_size_per_gpu=2",
        "datasets.val.num_worker_per_gpu=0",
        "network_g.n_blocks=2", "network_g.n_channels=16", "network_d.ndf=8",
        "train.losses[2].pretrained=false",
        # the file's phases, shortened to the run: pre-training at 1, the ramp over 2..4, EMA from 2
        "train.g_pretrain_steps=1", "train.ema_update_after=2",
        "train.gan.loss_weight={type: cosine, from: 1, to: 4, start: 0, end: 1.0e-3}",
        "train.scheduler.warmup_iter=2", "train.scheduler_d.warmup_iter=2",
        "train.training_automations.early_stopping.min_iterations=0",
        "val.val_freq=2", "logger.save_checkpoint_freq=2", "logger.print_freq=1",
    ]
    opt = load_options(path, common)
    assert opt.network_g["num_in_ch"] == opt.network_g["num_out_ch"] == opt.network_d["num_in_ch"] == 4
    assert opt.train.gan["real_label"] == 0.9 and opt.train.optim_d["lr"] == 4 * opt.train.optim_g["lr"]
    assert [e["type"] for e in opt.train.losses] == ["L1Loss", "SAMLoss", "PerceptualLoss", "TVLoss"]
    assert opt.train.losses[2]["bands"] == [0, 1, 2]

    result = train(path, common)

    exp = Path(result["experiment_dir"])
    assert result["iter"] == total
    metrics = result["metrics"]["S2_scene4"]
    assert set(metrics) == {"psnr", "ssim", "sam"} and all(np.isfinite(v) for v in metrics.values())
    # every band reaches the saved output: the 4-band .npy equals the EMA network run on scene 4's LR
    saved = np.load(exp / "visualization" / "S2_scene4" / f"REFERENCE_SCENES_RGBN_B04B03B02B08_4_{total}.npy")
    assert saved.shape == (100, 100, 4) and saved.dtype == np.float32
    scene = np.load(S2)[4, :100, :100]
    lq = np.clip(imresize(scene, 0.25), 0, 1)
    net = build_network(opt.network_g)
    net.load_state_dict(load_file(exp / "models" / f"net_g_ema_{total}.safetensors"))
    net.eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(np.ascontiguousarray(lq.transpose(2, 0, 1)))[None].float())
    expected = expected.clamp(0, 1)[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(saved, expected, atol=1e-5)
    # the NIR band is not a copy of another band, and the network's input uses it
    assert not np.allclose(saved[..., 3], saved[..., 2], atol=1e-3)
    lq_t = torch.from_numpy(np.ascontiguousarray(lq.transpose(2, 0, 1)))[None].float()
    changed = lq_t.clone()
    changed[:, 3] = 0
    with torch.no_grad():
        assert not torch.allclose(net(changed), net(lq_t))
    assert (exp / "visualization" / "S2_scene4" / f"REFERENCE_SCENES_RGBN_B04B03B02B08_4_{total}_rgb.png").is_file()
    # the two best by PSNR plus the last are kept, with the discriminator beside the generator
    states = sorted(int(p.stem) for p in (exp / "training_states").glob("*.state"))
    assert states == [2, 4]
    assert (exp / "models" / "net_d_4.safetensors").is_file()
