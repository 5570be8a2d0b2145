"""Shared fixtures: paths to the repository, the shared data and small generated image sets."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class LogLines(logging.Handler):
    """A log handler that keeps every message (attach it to the ``upforge`` logger)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def write_png(path: Path, img: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img[..., ::-1] if img.ndim == 3 else img)


@pytest.fixture
def hr_folder(tmp_path: Path) -> Path:
    """Six smooth-but-textured 48x48 RGB images, deterministic."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "hr"
    yy, xx = np.mgrid[0:48, 0:48]
    for i in range(6):
        base = np.stack([np.sin((xx + 3 * i) / (4 + c)) + np.cos(yy / (3 + c)) for c in range(3)], -1)
        noise = rng.normal(0, 0.1, base.shape)
        img = np.clip((base + noise + 2) / 4 * 255, 0, 255).astype(np.uint8)
        write_png(folder / f"img{i:02d}.png", img)
    return folder


def small_train_yaml(tmp_path: Path, hr: Path, **extra: str) -> Path:
    """A tiny EDSR x2 option file writing into tmp_path."""
    text = f"""
name: tiny
scale: 2
manual_seed: 3
device: cpu
datasets:
  train:
    type: HRImageDataset
    dataroot_gt: {hr}
    gt_size: 16
    batch_size_per_gpu: 2
    num_worker_per_gpu: 0
  val:
    name: tinyval
    type: HRImageDataset
    dataroot_gt: {hr}
network_g: {{type: EDSR, num_feat: 8, num_block: 1}}
path: {{experiments_root: {tmp_path / 'exp'}, results_root: {tmp_path / 'results'}}}
train:
  total_iter: 20
  optim_g: {{type: Adam, lr: 1.0e-3}}
  scheduler: {{type: MultiStepLR, milestones: [0.5T], gamma: 0.5}}
  ema_decay: 0.9
  losses:
    - {{type: L1Loss, loss_weight: 1.0}}
val:
  val_freq: 10
  metrics:
    psnr: {{type: calculate_psnr, crop_border: 2}}
logger: {{print_freq: 5, save_checkpoint_freq: 10, use_tb_logger: false, keep_last: 5}}
"""
    path = tmp_path / "opt.yml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def small_edsr(tmp_path_factory):
    """A tiny EDSR x2 with seeded weights, saved as upforge saves them: ``(weights path, net)``."""
    import torch

    from archs.edsr_arch import EDSR
    from utils.weights import save_network

    torch.manual_seed(0)
    net = EDSR(num_feat=8, num_block=1, scale=2).eval()
    with torch.no_grad():  # random weights would give a flat image; keep a visible signal
        net.conv_last.weight.mul_(0.05)
    path = tmp_path_factory.mktemp("w") / "edsr_x2.safetensors"
    save_network(net, path)
    return path, net
