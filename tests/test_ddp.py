"""Real two-process DDP on CPU (gloo) through torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import ROOT, small_train_yaml


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_training(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "train.py", "-opt", str(path), "-o", "train.total_iter=6", "-o", "val.val_freq=6",
           "-o", "logger.save_checkpoint_freq=3", "-o", "val.save_img=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = tmp_path / "exp" / "tiny"
    logs = list(exp.glob("train_*.log"))
    assert len(logs) == 1  # only rank 0 writes a log ...
    text = logs[0].read_text()
    assert "world size 2" in text
    assert "weights identical on all 2 ranks: True" in text
    # ... and one copy of each checkpoint, no rank-suffixed or temporary files.
    names = sorted(p.name for p in (exp / "models").iterdir())
    assert names == ["net_g_3.safetensors", "net_g_6.safetensors", "net_g_best.safetensors",
                     "net_g_ema_3.safetensors", "net_g_ema_6.safetensors"]
    assert sorted(p.name for p in (exp / "training_states").iterdir()) == ["3.state", "6.state"]
    # validation is sharded across the ranks, and every image of the set is saved once
    assert len(list((exp / "visualization" / "tinyval").glob("*_6.png"))) == 6
    state = torch.load(exp / "training_states" / "6.state", weights_only=False)
    # 6 images over 2 ranks = 3 samples per rank per epoch = 1 batch of 2; step 6 is epoch 5, 2 samples in.
    assert state["data"] == {"epoch": 5, "position": 2, "batches": 6, "overrides": {}}
    saved = load_file(str(exp / "models" / "net_g_6.safetensors"))
    assert set(saved) == set(state["model"]["nets"]["net_g"])
    assert all(torch.equal(saved[k], state["model"]["nets"]["net_g"][k]) for k in saved)


RANK_LOSS = '''
import pytest
import torch
import yaml
import torch.distributed as dist
from torch import nn
from utils.registry import LOSS_REGISTRY


@LOSS_REGISTRY.register()
class RankTaggedLoss(nn.Module):
    """L1 plus (rank + 1); rank 1 turns NaN from its 13th call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, sr, gt):
        self.calls += 1
        rank = dist.get_rank()
        bad = float("nan") if rank == 1 and self.calls > 12 else 0.0
        return (sr - gt).abs().mean() * 0 + (rank + 1) + bad
'''


def test_nan_on_one_rank_stops_every_rank_and_logs_are_reduced(tmp_path, hr_folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plugin = tmp_path / "rank_loss.py"
    plugin.write_text(RANK_LOSS)
    path = small_train_yaml(tmp_path, hr_folder)
    data = yaml.safe_load(path.read_text())
    data["imports"] = [str(plugin)]
    data["train"]["losses"].append({"type": "RankTaggedLoss"})
    path.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "train.py", "-opt", str(path), "-o", "logger.use_tb_logger=true", "-o", "val.val_freq=100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    assert proc.stderr.count("NaN or inf before iteration 15") >= 2, proc.stderr[-3000:]  # both ranks say so
    exp = tmp_path / "exp" / "tiny"
    assert sorted(p.name for p in (exp / "training_states").iterdir()) == ["10.state"]
    state = torch.load(exp / "training_states" / "10.state", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"]["nets"]["net_g"].values())
    acc = EventAccumulator(str(exp / "tb_logger")).Reload()
    # rank 0 logs 1 and rank 1 logs 2: the logged value is their mean
    assert [e.value for e in acc.Scalars("losses/ranktagged")] == pytest.approx([1.5, 1.5])


def test_two_process_gradient_accumulation_and_clipping_stay_in_step(tmp_path, hr_folder):
    """Micro-batches add up locally and the ranks average once per optimiser step: with
    accumulate_grad_batches 2 and grad_clip, both ranks end with the same weights."""
    path = small_train_yaml(tmp_path, hr_folder)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "train.py", "-opt", str(path), "-o", "train.total_iter=4", "-o", "val.val_freq=4",
           "-o", "train.accumulate_grad_batches=2", "-o", "train.grad_clip=0.5", "-o", "logger.print_freq=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = next((tmp_path / "exp" / "tiny").glob("train_*.log")).read_text()
    assert "weights identical on all 2 ranks: True" in text
    assert "grad_norm" in text  # clipping ran, on the averaged gradients
