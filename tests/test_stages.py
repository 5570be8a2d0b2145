"""Staged training: tail-only and per-group learning rates, warm starts across scales, the cosine
schedule's final phase. Every value is checked against a reference computed here by hand."""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from archs.edsr_arch import EDSR
from models.lr_schedulers import CosineAnnealingLR
from models.param_groups import check_stage_options, freeze_trunk, stage_param_groups, trainable_params
from models.sr_model import SRModel
from tests.conftest import small_train_yaml
from utils.logger import get_logger
from utils.options import OptionsError, load_options, parse_options
from utils.weights import load_network, network_metadata, save_network

CPU = torch.device("cpu")
EDSR_TAIL = ("upsample.", "conv_last.")


def _is_tail(key: str) -> bool:
    return key.startswith(EDSR_TAIL)


def _snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _options(tmp_path: Path, hr: Path, **train: object) -> dict:
    """The tiny EDSR x2 option file of the other tests, with ``train`` keys added."""
    data = yaml.safe_load(small_train_yaml(tmp_path, hr).read_text())
    data["train"].update(train)
    return data


def _model(tmp_path: Path, hr: Path, **train: object) -> SRModel:
    torch.manual_seed(0)
    return SRModel(parse_options(_options(tmp_path, hr, **train)), CPU)


def _batches(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"lq": torch.rand(2, 3, 8, 8, generator=g), "gt": torch.rand(2, 3, 16, 16, generator=g)} for _ in range(n)]


# ------------------------------------------------------------------------------------ tail only


def test_tail_only_trains_the_tail_and_leaves_every_trunk_tensor_bit_identical(tmp_path, hr_folder):
    model = _model(tmp_path, hr_folder, tail_only=True, grad_clip=1.0)
    net = model.net_g
    start = _snapshot(net)
    # the optimiser holds exactly the tail, all of it trainable; the trunk is frozen
    group_params = [p for g in model.optimizers["g"].param_groups for p in g["params"]]
    tail_params = [p for k, p in net.named_parameters() if _is_tail(k)]
    assert len(model.optimizers["g"].param_groups) == 1 and model.optimizers["g"].param_groups[0]["name"] == "tail"
    assert [id(p) for p in group_params] == [id(p) for p in tail_params]
    assert all(p.requires_grad == _is_tail(k) for k, p in net.named_parameters())
    for it, batch in enumerate(_batches(3), start=1):
        model.train_step([batch], it)
    end = net.state_dict()
    for key, before in start.items():
        if _is_tail(key):
            assert not torch.equal(end[key], before), f"{key} did not train"
        else:
            assert torch.equal(end[key], before), f"trunk tensor {key} changed"
    # the EMA averages every tensor; the frozen trunk's average is the trunk itself
    ema = model.ema.module.state_dict()
    assert all(torch.equal(ema[k], start[k]) for k in start if not _is_tail(k))


def _start_weights(tmp_path: Path, seed: int) -> tuple[EDSR, Path]:
    """A seeded tiny EDSR x2 saved with its metadata, to warm-start a stage from."""
    torch.manual_seed(seed)
    start = EDSR(num_feat=8, num_block=1, scale=2)
    weights = tmp_path / "start.safetensors"
    save_network(start, weights, metadata=network_metadata({"type": "EDSR", "num_feat": 8, "num_block": 1}, 2))
    return start, weights


def test_tail_only_run_from_weights_keeps_the_trunk_and_logs_the_split(tmp_path, hr_folder):
    """Through train(): pretrained weights, 3 iterations with validation, the saved file's trunk
    equals the pretrained one and the log names the trainable share."""
    from train import train

    start, weights = _start_weights(tmp_path, seed=5)
    data = _options(tmp_path, hr_folder, tail_only=True, total_iter=3)
    data["path"]["pretrain_network_g"] = str(weights)
    data["val"]["val_freq"] = 2
    path = tmp_path / "tail.yml"
    path.write_text(yaml.safe_dump(data))
    exp = Path(train(path)["experiment_dir"])
    saved = load_file(exp / "models" / "net_g_3.safetensors")
    first = start.state_dict()
    assert all(torch.equal(saved[k], first[k]) for k in first if not _is_tail(k))
    assert all(not torch.equal(saved[k], first[k]) for k in first if _is_tail(k))
    tail = sum(v.numel() for k, v in first.items() if _is_tail(k))
    total = sum(v.numel() for v in first.values())
    log = next(exp.glob("train_*.log")).read_text()
    assert f"net_g: tail-only: {tail:,} trainable of {total:,} parameters (upsample., conv_last.)" in log


class _NormTrunk(nn.Module):
    """A trunk with batch norm and dropout, a tail with its own batch norm."""

    tail_prefixes: ClassVar[tuple[str, ...]] = ("head.",)

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5))
        self.head = nn.Sequential(nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_a_frozen_trunk_stays_in_eval_mode_through_train():
    net = _NormTrunk()
    held = freeze_trunk(net)
    assert held == ["body.1", "body.2"]
    net.train()  # what the runner and validation's train(was_training) do
    assert not net.body[1].training and not net.body[2].training and net.head[1].training
    x = torch.rand(2, 3, 5, 5)
    out = net.body(x)
    # eval batch norm with fresh statistics (mean 0, var 1) and no dropout: conv / sqrt(1 + eps)
    assert torch.allclose(out, net.body[0](x) / math.sqrt(1 + 1e-5))
    assert torch.equal(net.body[1].running_mean, torch.zeros(4)) and int(net.body[1].num_batches_tracked) == 0
    net(x)
    assert int(net.head[1].num_batches_tracked) == 1  # the tail's norm still trains
    assert [p.requires_grad for p in net.parameters()] == [False] * 4 + [True] * 4  # conv + norm weights, biases


def test_trainable_params_leaves_frozen_ones_and_empty_groups_out():
    a, b, c = (torch.zeros(1, requires_grad=True) for _ in range(3))
    b.requires_grad_(False)
    frozen = torch.zeros(1)
    groups = trainable_params([{"params": [a, b], "lr": 0.1}, {"params": [frozen]}, {"params": [c], "name": "x"}])
    assert [[id(p) for p in g["params"]] for g in groups] == [[id(a)], [id(c)]]
    assert groups[0]["lr"] == 0.1 and groups[1]["name"] == "x"
    with pytest.raises(ValueError, match="net_g: no parameter requires gradients"):
        trainable_params([frozen], "net_g")


# ------------------------------------------------------------------------------- per-group LRs


def test_per_group_lrs_are_exact_and_the_trunk_at_lr_0_does_not_move(tmp_path, hr_folder):
    sched = {"type": "CosineAnnealingLR", "total_iter": 20, "warmup_iter": 4, "warmup_start_factor": 0.25,
             "eta_min_factor": 0.1}
    model = _model(tmp_path, hr_folder, lr_trunk=0.0, lr_tail=1.0e-3, scheduler=sched)
    groups = model.optimizers["g"].param_groups
    assert [g["name"] for g in groups] == ["trunk", "tail"]
    assert [g["initial_lr"] for g in groups] == [0.0, 1.0e-3]
    # step 0 of the warm-up: 0.25 x each group's LR
    assert [g["lr"] for g in groups] == [0.0, pytest.approx(0.25e-3)]
    start = _snapshot(model.net_g)
    for it, batch in enumerate(_batches(3), start=1):
        model.train_step([batch], it)
    # step 3: 0.25 + 0.75 * 3/4 = 0.8125 of each base LR
    assert [g["lr"] for g in groups] == [0.0, pytest.approx(0.8125e-3)]
    end = model.net_g.state_dict()
    assert all(torch.equal(end[k], v) != _is_tail(k) for k, v in start.items())


def test_the_scheduler_scales_both_groups_by_the_same_factor(tmp_path, hr_folder):
    sched = {"type": "CosineAnnealingLR", "total_iter": 20, "warmup_iter": 2, "warmup_start_factor": 0.001,
             "eta_min_factor": 0.01, "final_phase_start": "0.9T", "final_min_lr_factor": 0.005}
    model = _model(tmp_path, hr_folder, lr_trunk=5.0e-5, lr_tail=2.0e-4, scheduler=sched)
    groups = model.optimizers["g"].param_groups
    seen = []
    for it, batch in enumerate(_batches(19), start=1):
        model.train_step([batch], it)
        seen.append((groups[0]["lr"], groups[1]["lr"]))
    for trunk, tail in seen:
        assert tail == pytest.approx(4 * trunk, rel=1e-12)
    # step 11 (t = 9/16 of the cosine from 2 to 18) and step 18 (the final phase, 0.9T)
    assert seen[10][1] == pytest.approx(2e-6 + (2e-4 - 2e-6) * 0.5 * (1 + math.cos(math.pi * 9 / 16)))
    assert seen[17] == (pytest.approx(2.5e-7), pytest.approx(1e-6))


def test_per_group_state_round_trip(tmp_path, hr_folder):
    model = _model(tmp_path, hr_folder, lr_trunk=1.0e-4, lr_tail=1.0e-3)
    for it, batch in enumerate(_batches(2), start=1):
        model.train_step([batch], it)
    buffer = io.BytesIO()  # through bytes, as a resume reads it: no tensor shared with the first model
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other = _model(tmp_path, hr_folder, lr_trunk=1.0e-4, lr_tail=1.0e-3)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    mine, theirs = model.optimizers["g"].param_groups, other.optimizers["g"].param_groups
    assert [(g["name"], g["lr"]) for g in theirs] == [(g["name"], g["lr"]) for g in mine]
    batch = _batches(3)[2]
    model.train_step([batch], 3)
    other.train_step([batch], 3)
    assert all(torch.equal(a, b) for a, b in zip(model.net_g.parameters(), other.net_g.parameters(), strict=True))


# ---------------------------------------------------------------------------------------- errors


def test_tail_only_with_lr_trunk_is_refused(tmp_path, hr_folder):
    with pytest.raises(OptionsError, match="tail_only: true freezes the trunk, so it takes no learning rate"):
        parse_options(_options(tmp_path, hr_folder, tail_only=True, lr_trunk=0.0))
    with pytest.raises(ValueError, match="freezes the trunk"):
        stage_param_groups(EDSR(num_feat=8, num_block=1), tail_only=True, lr_trunk=1e-4)


@pytest.mark.parametrize("keys", [{"tail_only": True}, {"lr_trunk": 0.0}, {"lr_tail": 1e-3}])
def test_stage_keys_need_an_arch_that_names_its_tail(tmp_path, hr_folder, keys):
    data = _options(tmp_path, hr_folder, **keys)
    data["network_g"] = {"type": "RRDBNet", "num_feat": 8, "num_block": 1, "num_grow_ch": 4}
    first = next(iter(keys))
    # at start-up (and at --check once the runner's check_options calls check_stage_options)
    with pytest.raises(ValueError, match=f"train.{first}: RRDBNet names no tail .* archs that name one: .*EDSR"):
        SRModel(parse_options(data), CPU)
    data["network_g"] = {"type": "EDSR", "num_feat": 8, "num_block": 1}
    assert check_stage_options(parse_options(data)) == []


# --------------------------------------------------------------------------- warm start across scales


def _x2_file(tmp_path: Path, suffix: str = ".safetensors") -> tuple[EDSR, Path]:
    torch.manual_seed(1)
    section = {"type": "EDSR", "num_feat": 8, "num_block": 2, "scale": 2}
    x2 = EDSR(num_feat=8, num_block=2, scale=2)
    path = tmp_path / f"x2{suffix}"
    save_network(x2, path, metadata=network_metadata(section, 2, 100, "ema") if suffix == ".safetensors" else None)
    return x2, path


X4_TAIL = ["upsample.0.weight", "upsample.0.bias", "upsample.2.weight", "upsample.2.bias", "conv_last.weight",
           "conv_last.bias"]
X2_TAIL = ["upsample.0.weight", "upsample.0.bias", "conv_last.weight", "conv_last.bias"]


@pytest.mark.parametrize(("strict", "cross_scale"), [(False, False), (True, True)])
def test_x4_loads_the_x2_trunk_and_keeps_a_fresh_tail(tmp_path, strict, cross_scale):
    x2, path = _x2_file(tmp_path)
    torch.manual_seed(2)
    x4 = EDSR(num_feat=8, num_block=2, scale=4)
    fresh = _snapshot(x4)
    report = load_network(x4, path, strict=strict, cross_scale=cross_scale)
    src, now = x2.state_dict(), x4.state_dict()
    trunk = [k for k in src if not _is_tail(k)]
    assert trunk == ["conv_first.weight", "conv_first.bias"] + [
        f"body.{n}.conv{c}.{p}" for n in range(2) for c in (1, 2) for p in ("weight", "bias")] + [
        "conv_after_body.weight", "conv_after_body.bias"]
    assert all(torch.equal(now[k], src[k]) for k in trunk)
    # upsample.0 and conv_last have the same shapes at x2 and x4, yet belong to the x2 tail: fresh too
    assert all(torch.equal(now[k], fresh[k]) for k in X4_TAIL)
    # the file lists its keys sorted (safetensors); the network's keys are in module order
    assert sorted(report.loaded) == sorted(trunk) and report.scale == (2, 4)
    assert report.renewed == X4_TAIL and sorted(report.dropped) == sorted(X2_TAIL)
    assert not (report.missing or report.unexpected or report.mismatched)
    summary = report.summary()
    assert summary.startswith("warm start across scales (x2 into x4): the trunk loads, the tail (upsample., "
                              "conv_last.) keeps its fresh initialisation; 12 loaded; ")
    assert f"6 new (scale changed) ({', '.join(X4_TAIL)})" in summary
    assert f"4 dropped (scale changed) ({', '.join(sorted(X2_TAIL))})" in summary


def test_a_strict_load_across_scales_is_refused_naming_both(tmp_path):
    _, path = _x2_file(tmp_path)
    x4 = EDSR(num_feat=8, num_block=2, scale=4)
    fresh = _snapshot(x4)
    with pytest.raises(RuntimeError, match=r"x2.safetensors holds an x2 network, but the EDSR here is x4: a strict "
                       r"load needs the same scale.*strict_load_g: false"):
        load_network(x4, path, strict=True)
    assert all(torch.equal(v, fresh[k]) for k, v in x4.state_dict().items())  # nothing was loaded


def test_cross_scale_strict_still_checks_the_trunk(tmp_path):
    _, path = _x2_file(tmp_path)
    deeper = EDSR(num_feat=8, num_block=3, scale=4)
    with pytest.raises(RuntimeError, match=r"4 missing \(body\.2\.conv1\.weight"):
        load_network(deeper, path, strict=True, cross_scale=True)
    report = load_network(deeper, path, strict=False)  # a warm start across scales and depths
    assert report.renewed == X4_TAIL and report.missing == [f"body.2.conv{c}.{p}" for c in (1, 2)
                                                            for p in ("weight", "bias")]


def test_scale_of_a_file_without_metadata_is_read_from_its_keys(tmp_path):
    x2, path = _x2_file(tmp_path, ".pth")
    x4 = EDSR(num_feat=8, num_block=2, scale=4)
    report = load_network(x4, path, strict=False)
    assert report.scale == (2, 4) and report.renewed == X4_TAIL and report.dropped == X2_TAIL
    same = EDSR(num_feat=8, num_block=2, scale=2)  # same scale: an ordinary load, nothing renewed
    report = load_network(same, path, strict=False)
    assert report.scale is None and not report.renewed and report.loaded == list(x2.state_dict())


def test_cross_scale_needs_an_arch_that_names_its_tail(tmp_path):
    from archs.rrdbnet_arch import RRDBNet

    net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4)
    with pytest.raises(ValueError, match="RRDBNet names no tail"):
        load_network(net, RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=2).state_dict(), cross_scale=True)


def test_x4_run_warm_starts_from_the_x2_file(tmp_path, hr_folder):
    """Options: an x4 run with strict_load_g false loads the x2 file's trunk and logs the report."""
    x2, path = _x2_file(tmp_path)
    data = _options(tmp_path, hr_folder, tail_only=True)
    data["scale"] = 4
    data["network_g"] = {"type": "EDSR", "num_feat": 8, "num_block": 2}
    data["datasets"]["train"]["gt_size"] = 32
    data["path"].update(pretrain_network_g=str(path), strict_load_g=False)
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    log = get_logger()
    level, log.level = log.level, logging.INFO
    log.addHandler(handler)
    try:
        model = SRModel(parse_options(data), CPU)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    now = model.net_g.state_dict()
    assert all(torch.equal(now[k], v) for k, v in x2.state_dict().items() if not _is_tail(k))
    loaded = [line for line in lines if line.startswith(f"net_g: loaded {path}: warm start across scales (x2 into x4)")]
    assert len(loaded) == 1 and "6 new (scale changed)" in loaded[0]
    data["path"]["strict_load_g"] = True
    with pytest.raises(RuntimeError, match="holds an x2 network, but the EDSR here is x4"):
        SRModel(parse_options(data), CPU)


# ------------------------------------------------------------------------------- cosine final phase


def _two_groups(lrs: tuple[float, ...]) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs], lr=lrs[0])


def _lr_at(sched: CosineAnnealingLR, steps: list[int]) -> dict[int, list[float]]:
    out = {0: sched.get_last_lr()} if 0 in steps else {}
    for s in range(1, max(steps) + 1):
        sched.optimizer.step()
        sched.step()
        if s in steps:
            out[s] = sched.get_last_lr()
    return out


def test_cosine_final_phase_closed_form():
    # T = 100, warm-up 10 from 0.001, cosine to 0.01 x L by 90 (= 0.9T), then 0.005 x L
    sched = CosineAnnealingLR(_two_groups((2e-4, 5e-5)), total_iter=100, warmup_iter=10, warmup_start_factor=0.001,
                              eta_min_factor=0.01, final_phase_start=90, final_min_lr_factor=0.005)
    got = _lr_at(sched, [0, 5, 10, 50, 89, 90, 99, 100, 130])
    # by hand, for L = 2e-4 (the 5e-5 group is exactly a quarter):
    expected = {
        0: 2e-4 * 0.001,                         # 2e-7
        5: 2e-4 * (0.001 + 0.999 * 5 / 10),      # 1.001e-4
        10: 2e-4,                                # t = 0
        50: 2e-6 + (2e-4 - 2e-6) * 0.5,          # t = 40/80: halfway, 1.01e-4
        89: 2e-6 + 198e-6 * 0.5 * (1 + math.cos(math.pi * 79 / 80)),
        90: 1e-6, 99: 1e-6, 100: 1e-6, 130: 1e-6,
    }
    assert expected[5] == pytest.approx(1.001e-4) and expected[50] == pytest.approx(1.01e-4)
    for step, value in expected.items():
        assert got[step] == [pytest.approx(value, rel=1e-12), pytest.approx(value / 4, rel=1e-12)], step


def test_cosine_without_final_phase_is_unchanged_and_eta_min_stays_absolute():
    sched = CosineAnnealingLR(_two_groups((1.0, 2.0)), total_iter=12, eta_min=0.1, warmup_iter=2)
    got = _lr_at(sched, [7, 12, 20])
    assert got[7] == [pytest.approx(0.1 + 0.9 * 0.5), pytest.approx(0.1 + 1.9 * 0.5)]
    assert got[12] == got[20] == [pytest.approx(0.1), pytest.approx(0.1)]
    default = CosineAnnealingLR(_two_groups((1.0,)), total_iter=4)
    assert _lr_at(default, [4])[4] == [pytest.approx(1e-7)]  # eta_min's default


def test_cosine_final_phase_from_a_fraction_of_the_run(tmp_path, hr_folder):
    sched = {"type": "CosineAnnealingLR", "warmup_iter": "0.1T", "warmup_start_factor": 0.001,
             "final_phase_start": "0.9T", "final_min_lr_factor": 0.005}
    opt = parse_options(_options(tmp_path, hr_folder, total_iter=200, scheduler=sched))
    assert opt.train.scheduler["final_phase_start"] == 180 and opt.train.scheduler["warmup_iter"] == 20
    assert opt.train.scheduler["total_iter"] == 200


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"final_phase_start": 8}, "final_phase_start needs final_min_lr_factor too"),
    ({"final_min_lr_factor": 0.1}, "final_min_lr_factor needs final_phase_start too"),
    ({"final_phase_start": 2, "final_min_lr_factor": 0.1}, r"final_phase_start \(2\) must be after warmup_iter \(2\)"),
    ({"final_phase_start": 11, "final_min_lr_factor": 0.1}, r"at most total_iter \(10\)"),
    ({"final_phase_start": 8, "final_min_lr_factor": 1.5}, r"final_min_lr_factor must be in \[0, 1\]"),
    ({"eta_min": 0.1, "eta_min_factor": 0.1}, "not both"),
    ({"eta_min_factor": -0.1}, r"eta_min_factor must be in \[0, 1\]"),
])
def test_cosine_final_phase_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CosineAnnealingLR(_two_groups((1.0,)), total_iter=10, warmup_iter=2, **kwargs)


def test_cosine_final_phase_error_reaches_the_option_check(tmp_path, hr_folder):
    sched = {"type": "CosineAnnealingLR", "final_phase_start": "0.9T"}
    data = _options(tmp_path, hr_folder, scheduler=sched)
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(OptionsError, match="train.scheduler: final_phase_start needs final_min_lr_factor"):
        load_options(path)


# ----------------------------------------------------------------------------------------- DDP


def test_tail_only_under_two_process_ddp(tmp_path, hr_folder):
    """DDP leaves the frozen trunk out of its reducer: both ranks train the tail identically and the
    trunk of the saved weights is the pretrained one."""
    import os
    import socket
    import subprocess
    import sys

    from tests.conftest import ROOT

    start, weights = _start_weights(tmp_path, seed=7)
    data = _options(tmp_path, hr_folder, tail_only=True, total_iter=4)
    data["path"]["pretrain_network_g"] = str(weights)
    data["val"]["val_freq"] = 4
    path = tmp_path / "ddp.yml"
    path.write_text(yaml.safe_dump(data))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "train.py",
           "-opt", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = tmp_path / "exp" / "tiny"
    assert "weights identical on all 2 ranks: True" in next(exp.glob("train_*.log")).read_text()
    saved, first = load_file(exp / "models" / "net_g_4.safetensors"), start.state_dict()
    assert all(torch.equal(saved[k], first[k]) != _is_tail(k) for k in first)


def test_x4_warm_start_without_network_g_takes_the_x2_files_network_at_the_runs_scale(tmp_path, hr_folder):
    """network_g left out: read from the x2 file's metadata; a non-strict load is a warm start across
    scales, so the section gets the run's scale (a strict load keeps the 'differs' error)."""
    x2, path = _x2_file(tmp_path)
    data = _options(tmp_path, hr_folder, tail_only=True)
    data["scale"] = 4
    data.pop("network_g")
    data["datasets"]["train"]["gt_size"] = 32
    data["path"].update(pretrain_network_g=str(path), strict_load_g=False)
    opt = parse_options(data)
    assert opt.network_g["scale"] == 4 and opt.network_g["num_feat"] == x2.conv_first.out_channels
    model = SRModel(opt, CPU)
    now = model.net_g.state_dict()
    assert all(torch.equal(now[k], v) for k, v in x2.state_dict().items() if not _is_tail(k))
    data.pop("network_g", None)  # (parsing fills it in place)
    data["path"]["strict_load_g"] = True
    with pytest.raises(OptionsError, match="differs from the top-level scale 4"):
        parse_options(data)


@pytest.mark.parametrize("arch, kwargs, tail", [
    ("SRResNet", {"n_channels": 8, "n_blocks": 2}, ("upsample.", "tail.")),
    ("ParagonSR2", {"variant": "s", "num_feat": 16, "num_groups": 1, "num_blocks": 2}, ("upsampler.", "conv_out.")),
])
def test_other_archs_name_their_tail_and_freeze_the_rest(arch, kwargs, tail):
    from utils.registry import ARCH_REGISTRY

    net = ARCH_REGISTRY.get(arch)(scale=2, **kwargs)
    held = freeze_trunk(net)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in net.named_parameters() if n.startswith(tail)} != set()
    # the trunk's batch-norm layers (SRResNet has them) stay in eval mode, the tail has none
    norms = {n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert set(held) == norms and (arch != "SRResNet" or norms)
    assert getattr(net, "scale", None) == 2  # a warm start from another scale compares it with the file's


def test_residual_network_warm_started_from_a_plain_one_starts_at_nearest(tmp_path):
    """The x2 tail stage's case: generic (no residual_output) weights into a residual 64x32-style
    network. Its conv_last, which painted the whole image, starts at zero, so the output is exactly
    the nearest upscale; a residual source keeps its conv_last; a strict load changes nothing."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    plain = EDSR(num_feat=8, num_block=1, scale=2)
    plain_file = tmp_path / "plain.safetensors"
    save_network(plain, plain_file, network_metadata({"type": "EDSR", "num_feat": 8, "num_block": 1}, scale=2))
    residual = EDSR(num_feat=8, num_block=2, scale=2, residual_output=True)
    report = load_network(residual, plain_file, strict=False)
    assert "conv_last zeroed" in report.summary() and "conv_first.weight" in report.loaded
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        assert torch.equal(residual(x), F.interpolate(x, scale_factor=2, mode="nearest"))
    assert torch.equal(residual.conv_first.weight, plain.conv_first.weight)

    res_file = tmp_path / "residual.safetensors"
    torch.manual_seed(1)
    source = EDSR(num_feat=8, num_block=1, scale=2, residual_output=True)
    save_network(source, res_file, network_metadata({"type": "EDSR", "num_feat": 8, "num_block": 1,
                                                     "residual_output": True}, scale=2))
    again = EDSR(num_feat=8, num_block=2, scale=2, residual_output=True)
    report = load_network(again, res_file, strict=False)
    assert "conv_last zeroed" not in report.summary() and torch.equal(again.conv_last.weight, source.conv_last.weight)

    same_depth = EDSR(num_feat=8, num_block=1, scale=2, residual_output=True)
    load_network(same_depth, plain_file, strict=True)  # the user asked for these exact weights
    assert torch.equal(same_depth.conv_last.weight, plain.conv_last.weight)


def test_deeper_edsr_warm_started_from_a_shallower_one_computes_the_same(tmp_path):
    """The 16 -> 32 block growth of the x2 tail stage: the blocks the file lacks start as the
    identity (conv2 zero), so the grown network's output equals the loaded network's, and a
    frozen trunk carries no random blocks. Loaded blocks keep their conv2; a load of equal depth
    zeroes nothing."""
    torch.manual_seed(0)
    small = EDSR(num_feat=8, num_block=2, scale=2)
    path = tmp_path / "small.safetensors"
    save_network(small, path, network_metadata({"type": "EDSR", "num_feat": 8, "num_block": 2}, scale=2))
    torch.manual_seed(1)
    grown = EDSR(num_feat=8, num_block=5, scale=2)
    report = load_network(grown, path, strict=False)
    assert "new residual blocks body.2-4 start as the identity" in report.summary()
    assert "body.4.conv1.weight" in report.missing
    x = torch.rand(1, 3, 7, 6)
    with torch.no_grad():
        torch.testing.assert_close(grown(x), small(x), rtol=0, atol=1e-6)
    assert torch.equal(grown.body[1].conv2.weight, small.body[1].conv2.weight)
    assert not grown.body[3].conv1.weight.eq(0).all()  # only conv2 is zeroed: conv1 learns once conv2 moves
    assert grown.body[3].conv2.weight.abs().sum() == 0 and grown.body[3].conv2.bias.abs().sum() == 0

    torch.manual_seed(2)
    same = EDSR(num_feat=8, num_block=2, scale=2)
    report = load_network(same, path, strict=False)
    assert "identity" not in report.summary() and torch.equal(same.body[1].conv2.weight, small.body[1].conv2.weight)


def test_residual_network_warm_started_across_scales_starts_at_nearest(tmp_path):
    """The x4 tail stage's case: the x2 trunk's weights into a residual x4 network. The renewed
    conv_last starts at zero, so the output is exactly the x4 nearest upscale; a plain x4 network
    keeps its renewed conv_last as initialised."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    x2 = EDSR(num_feat=8, num_block=1, scale=2, residual_output=True)
    path = tmp_path / "x2.safetensors"
    save_network(x2, path, network_metadata({"type": "EDSR", "num_feat": 8, "num_block": 1,
                                             "residual_output": True}, scale=2))
    x4 = EDSR(num_feat=8, num_block=1, scale=4, residual_output=True)
    report = load_network(x4, path, strict=False)
    assert "conv_last.weight" in report.renewed and "conv_last zeroed (it is new at this scale)" in report.summary()
    x = torch.rand(1, 3, 5, 4)
    with torch.no_grad():
        assert torch.equal(x4(x), F.interpolate(x, scale_factor=4, mode="nearest"))
    assert torch.equal(x4.body[0].conv1.weight, x2.body[0].conv1.weight)

    torch.manual_seed(5)
    plain = EDSR(num_feat=8, num_block=1, scale=4)
    initial = plain.conv_last.weight.clone()
    report = load_network(plain, path, strict=False)
    assert "zeroed" not in report.summary() and torch.equal(plain.conv_last.weight, initial)
