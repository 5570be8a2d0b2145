"""Learning-rate schedules, EMA, gradient accumulation and clipping against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.lr_schedulers import CosineAnnealingLR, MultiStepLR
from models.optimizers import Adam
from utils.ema import ModelEMA


def _opt(lr: float = 1.0, groups: int = 1) -> torch.optim.Optimizer:
    params = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr * (i + 1)} for i in range(groups)]
    return torch.optim.SGD(params, lr=lr)


def _lrs(sched, steps: int) -> list[float]:
    out = [sched.get_last_lr()[0]]
    for _ in range(steps):
        sched.step()
        out.append(sched.get_last_lr()[0])
    return out


def test_multistep_with_warmup():
    sched = MultiStepLR(_opt(2.0), milestones=[6, 8], gamma=0.5, warmup_iter=4, warmup_start_factor=0.25)
    # warm-up 2*(0.25 + 0.75*s/4) for s < 4, then 2, halved at 6 and again at 8
    assert _lrs(sched, 9) == pytest.approx([0.5, 0.875, 1.25, 1.625, 2, 2, 1, 1, 0.5, 0.5])


def test_cosine_with_warmup_and_floor_for_every_group():
    opt = _opt(1.0, groups=2)
    sched = CosineAnnealingLR(opt, total_iter=12, eta_min=0.1, warmup_iter=2, warmup_start_factor=0.5)
    expected = []
    for step in range(13):
        row = []
        for base in (1.0, 2.0):
            if step < 2:
                row.append(base * (0.5 + 0.5 * step / 2))
            else:
                t = (step - 2) / 10
                row.append(0.1 + (base - 0.1) * 0.5 * (1 + math.cos(math.pi * t)))
        expected.append(row)
    got = [sched.get_last_lr()]
    for _ in range(12):
        sched.step()
        got.append(sched.get_last_lr())
    assert got == [pytest.approx(r) for r in expected]
    assert got[-1] == pytest.approx([0.1, 0.1])  # eta_min is an absolute floor for each group


def test_scheduler_state_round_trip():
    a = CosineAnnealingLR(_opt(), total_iter=10, warmup_iter=2)
    for _ in range(5):
        a.step()
    b = CosineAnnealingLR(_opt(), total_iter=10, warmup_iter=2)
    b.load_state_dict(a.state_dict())
    assert b.get_last_lr() == a.get_last_lr()
    a.step()
    b.step()
    assert b.get_last_lr() == a.get_last_lr()
    with pytest.raises(ValueError, match="warmup_iter"):
        CosineAnnealingLR(_opt(), total_iter=5, warmup_iter=5)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.bn = nn.BatchNorm1d(1)


def test_ema_decay_update_after_and_buffers():
    net = _Net()
    ema = ModelEMA(net, decay=0.9, update_after=2)
    w0 = net.lin.weight.detach().clone()
    with torch.no_grad():
        net.lin.weight.add_(1.0)
        net.bn.running_mean.fill_(4.0)
        net.bn.num_batches_tracked.fill_(7)
    ema.update(net, step=1)  # before update_after: copy
    assert torch.equal(ema.module.lin.weight, w0 + 1.0)
    with torch.no_grad():
        net.lin.weight.add_(1.0)
        net.bn.running_mean.fill_(14.0)
    ema.update(net, step=2)  # 0.9 * old + 0.1 * new, for parameters and float buffers alike
    assert torch.allclose(ema.module.lin.weight, 0.9 * (w0 + 1.0) + 0.1 * (w0 + 2.0))
    assert torch.allclose(ema.module.bn.running_mean, torch.tensor([0.9 * 4.0 + 0.1 * 14.0]))
    assert ema.module.bn.num_batches_tracked.item() == 7  # integer buffers are copied
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_warmup_decay_formula():
    ema = ModelEMA(_Net(), decay=0.999, warmup=True)
    decays = []
    for step in range(4):
        decays.append(ema.current_decay(step))
        ema.update(_Net(), step)
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12, 4 / 13])  # min(d, (1+n)/(10+n))


def test_adam_picks_foreach_on_cpu_and_keeps_hyperparameters():
    p = [torch.zeros(3, requires_grad=True)]
    opt = Adam(p, lr=2e-4, betas=(0.9, 0.99))
    group = opt.param_groups[0]
    assert group["foreach"] is True and not group.get("fused")
    assert group["betas"] == (0.9, 0.99) and group["lr"] == 2e-4


def _model(tmp_path, hr_folder, *overrides):
    from tests.conftest import small_train_yaml
    from utils.options import load_options

    opt = load_options(small_train_yaml(tmp_path, hr_folder), list(overrides))
    from models.sr_model import SRModel

    torch.manual_seed(0)
    return SRModel(opt, torch.device("cpu"))


def _batch(seed: int, n: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"lq": torch.rand(n, 3, 8, 8, generator=g), "gt": torch.rand(n, 3, 16, 16, generator=g)}


def test_accumulating_two_half_batches_equals_one_full_batch(tmp_path, hr_folder):
    full = _batch(1, 4)
    halves = [{k: v[:2] for k, v in full.items()}, {k: v[2:] for k, v in full.items()}]
    a = _model(tmp_path, hr_folder)
    b = _model(tmp_path, hr_folder, "train.accumulate_grad_batches=2")
    a.train_step([full], 1)
    b.train_step(halves, 1)
    for (name, pa), pb in zip(a.net_g.named_parameters(), b.net_g.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), name
    assert a.pop_logs(1)["losses/l1"] == pytest.approx(b.pop_logs(1)["losses/l1"], rel=1e-6)


def test_grad_clip_logs_the_unclipped_norm_and_clips(tmp_path, hr_folder):
    model = _model(tmp_path, hr_folder, "train.grad_clip=1.0e-3")
    batch = _batch(2, 2)
    reference = _model(tmp_path, hr_folder)
    out = reference.net_g(batch["lq"])
    (out - batch["gt"]).abs().mean().backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.net_g.parameters()]))
    seen = {}

    def record(opt, args, kwargs) -> None:
        seen["norm"] = torch.linalg.vector_norm(torch.stack([p.grad.norm() for g in opt.param_groups
                                                             for p in g["params"]]))

    handle = model.optimizers["g"].register_step_pre_hook(record)
    model.train_step([batch], 1)
    handle.remove()
    assert model.pop_logs(1)["grad_norm"] == pytest.approx(expected.item(), rel=1e-5)
    assert seen["norm"].item() == pytest.approx(1e-3, rel=1e-4)  # what the optimiser saw was clipped
