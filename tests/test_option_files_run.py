"""A few real training iterations of every shipped training family, on CPU with tiny data.

Each run loads the shipped option file as it is and changes only what the machine needs:
data folders, patch and batch size, iteration count, output folder and device (plus the RRDBNet
depth, for CPU time). The starting weights are written by the test and given as
``path.pretrain_network_g``, so the weights the run saves can be compared with them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.base_model import build_network
from tests.conftest import ROOT, write_png
from train import train
from utils.options import load_options
from utils.weights import save_network

ITERS = 3


def _textured(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour pattern with some noise, as uint8 HWC RGB."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phase = rng.uniform(0, 6, 3)
    base = np.stack([np.sin(xx / (3 + c) + phase[c]) + np.cos(yy / (4 + c) - phase[c]) for c in range(3)], -1)
    img = (base + 2) / 4 + rng.normal(0, 0.05, base.shape)
    return np.clip(img * 255, 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hr/ (four 32x32 images) and lr_x2/, lr_x4/ made from it by area downscaling."""
    root = tmp_path_factory.mktemp("family_data")
    rng = np.random.default_rng(7)
    for i in range(4):
        hr = _textured(rng, 32)
        write_png(root / "hr" / f"im{i}.png", hr)
        for s in (2, 4):
            lr = cv2.resize(hr, (32 // s, 32 // s), interpolation=cv2.INTER_AREA)
            write_png(root / f"lr_x{s}" / f"im{i}.png", lr)
    return root


def _train_paired(d: Path, scale: int, gt_size: int) -> list[str]:
    return [f"datasets.train.dataroot_gt={d / 'hr'}", f"datasets.train.dataroot_lq={d / f'lr_x{scale}'}",
            f"datasets.train.gt_size={gt_size}"]


def _train_hr(d: Path, gt_size: int) -> list[str]:
    return [f"datasets.train.dataroot_gt={d / 'hr'}", f"datasets.train.gt_size={gt_size}"]


def _val_paired(d: Path, scale: int) -> list[str]:
    return [f"datasets.val.dataroot_gt={d / 'hr'}", f"datasets.val.dataroot_lq={d / f'lr_x{scale}'}"]


def _quickstart(d: Path) -> list[str]:
    # its cosine schedule warms up for 50 iterations, which must stay below total_iter
    return _train_hr(d, 16) + [f"datasets.val.dataroot_gt={d / 'hr'}", "train.scheduler.warmup_iter=0"]


def _edsr(d: Path) -> list[str]:
    return _train_paired(d, 2, 16) + _val_paired(d, 2)


def _esrgan(d: Path) -> list[str]:
    return _train_paired(d, 4, 32) + _val_paired(d, 4) + ["network_g.num_block=2"]


def _paragon(d: Path) -> list[str]:
    # no complexity list for the test images; MS-SSIM with 2 scales and a 3x3 window fits 16 px patches
    return _train_hr(d, 16) + _val_paired(d, 2) + ["datasets.train.meta_info_file=null",
                                                   "train.losses[1].weights=[0.5, 0.5]", "train.losses[1].win_size=3"]


# family: (option file, data overrides, expected arch, learning rate, EMA decay)
FAMILIES = {
    "quickstart": ("options/train/quickstart.yml", _quickstart, "EDSR", 5e-4, 0.99),
    "edsr_mx2": ("options/train/EDSR/train_EDSR_Mx2.yml", _edsr, "EDSR", 1e-4, 0.999),
    "esrgan_psnr": ("options/train/ESRGAN/train_RRDBNet_PSNR_x4.yml", _esrgan, "RRDBNet", 2e-4, 0.999),
    "paragonsr2_nano": ("options/train/ParagonSR2/2xParagonSR2_Nano_CC0_complexity05_ULTRA_FIDELITY.yml", _paragon,
                        "ParagonSR2", 2e-4, 0.999),
    "paragonsr2_s": ("options/train/ParagonSR2/2xParagonSR2_S_CC0_complexity05_ULTRA_FIDELITY.yml", _paragon,
                     "ParagonSR2", 1e-4, 0.999),
}


def _flat(sd: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([sd[k].double().flatten() for k in sorted(sd)])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_shipped_family_trains_a_few_iterations(family, data_dir, tmp_path):
    rel, extra, arch, lr, ema_decay = FAMILIES[family]
    path = ROOT / rel
    common = extra(data_dir) + [
        "device=cpu",
        f"train.total_iter={ITERS}",
        "datasets.train.batch_size_per_gpu=2",
        "datasets.train.num_worker_per_gpu=0",
        f"path.experiments_root={tmp_path / 'exp'}",
        "logger.use_tb_logger=false",
    ]
    # The initial weights: built from the file's own (overridden) network options, saved here.
    opt = load_options(path, common)
    assert opt.network_g["type"] == arch
    assert opt.train.optim_g["lr"] == pytest.approx(lr) and opt.train.ema_decay == pytest.approx(ema_decay)
    torch.manual_seed(0)
    init_file = tmp_path / "init.safetensors"
    save_network(build_network(opt.network_g), init_file)

    result = train(path, overrides=common + [f"path.pretrain_network_g={init_file}"])

    exp = Path(result["experiment_dir"])
    assert exp == tmp_path / "exp" / opt.name
    assert result["iter"] == ITERS
    models = exp / "models"
    assert (models / f"net_g_{ITERS}.safetensors").is_file()
    assert (models / f"net_g_ema_{ITERS}.safetensors").is_file()
    assert (models / "net_g_best.safetensors").is_file()  # the final validation is the first one
    state = torch.load(exp / "training_states" / f"{ITERS}.state", map_location="cpu", weights_only=False)
    assert state["iter"] == ITERS
    assert state["model"]["schedulers"]["g"]["last_step"] == ITERS
    assert set(result["metrics"]) and all(np.isfinite(v) for m in result["metrics"].values() for v in m.values())

    init = load_file(init_file)
    live = load_file(models / f"net_g_{ITERS}.safetensors")
    ema = load_file(models / f"net_g_ema_{ITERS}.safetensors")
    assert set(live) == set(init) == set(ema)
    w0, w, we = _flat(init), _flat(live), _flat(ema)
    assert torch.isfinite(w).all()
    step = (w - w0).abs()
    # Adam-type steps move a weight by at most about lr per iteration; the largest moves reach it
    # (3 x lr after 3 steps here; less for quickstart's cosine schedule). A wrong LR fails this.
    assert 0.5 * lr * ITERS < step.max() < 1.5 * lr * ITERS
    # EMA starts from the initial weights and takes (1 - decay) of each new step:
    # ema - w0 = (1 - d) * (d^2 dw1 + d dw2 + dw3), about 2 (1 - d) x (w3 - w0) after 3 steps.
    ema_ratio = float((we - w0).norm() / (w - w0).norm())
    assert 0.5 * (1 - ema_decay) < ema_ratio < 4.5 * (1 - ema_decay)
