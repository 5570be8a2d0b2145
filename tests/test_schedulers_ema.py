"""EMA, gradient accumulation and clipping against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.optimizers import Adam
from utils.ema import ModelEMA


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
