"""Learning-rate schedulers against hand-computed values: warm-up, decay, lr_scale, state, plateau rules."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable

import pytest
import torch

from models.lr_schedulers import CosineAnnealingLR, MultiStepLR, ReduceLROnPlateau
from utils.registry import SCHEDULER_REGISTRY

# Every test steps the optimiser before the scheduler, as the training loop does, so torch's
# "Detected call of lr_scheduler.step() before optimizer.step()" warning must never appear here.
pytestmark = pytest.mark.filterwarnings("error:Detected call of:UserWarning")


def _opt(lr: float = 1.0, groups: int = 1) -> torch.optim.Optimizer:
    params = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr * (i + 1)} for i in range(groups)]
    return torch.optim.SGD(params, lr=lr)


def _advance(sched) -> None:
    """One training iteration: the optimiser steps (a no-op without gradients), then the scheduler."""
    sched.optimizer.step()
    sched.step()


def _lrs(sched, steps: int) -> list[float]:
    out = [sched.get_last_lr()[0]]
    for _ in range(steps):
        _advance(sched)
        out.append(sched.get_last_lr()[0])
    return out


def _run(sched, observations: dict[int, float], higher_is_better: bool, iters: int,
         start: int = 1) -> tuple[list[float], list[int]]:
    """Iterations ``start..iters``; after each, observe its value if it has one. Returns the LR and the
    reduction count after every iteration (the observation included)."""
    lrs, reductions = [], []
    for it in range(start, iters + 1):
        _advance(sched)
        if it in observations:
            sched.observe(observations[it], higher_is_better, it)
        # a reduction reaches the optimiser at once, not only at the next step()
        assert sched.optimizer.param_groups[0]["lr"] == sched.get_last_lr()[0]
        lrs.append(sched.get_last_lr()[0])
        reductions.append(sched.reductions)
    return lrs, reductions


def _multistep(opt: torch.optim.Optimizer) -> MultiStepLR:
    return MultiStepLR(opt, milestones=[4, 9], gamma=0.5, warmup_iter=2)


def _cosine(opt: torch.optim.Optimizer) -> CosineAnnealingLR:
    return CosineAnnealingLR(opt, total_iter=12, eta_min=0.01, warmup_iter=2)


def _plateau(opt: torch.optim.Optimizer) -> ReduceLROnPlateau:
    return ReduceLROnPlateau(opt, factor=0.5, patience=2, warmup_iter=2, warmup_start_factor=0.5)


FACTORIES: list[Callable[[torch.optim.Optimizer], object]] = [_multistep, _cosine, _plateau]
# Higher is better. Plateau (patience 2) reduces at 4 and 7 (best 3 at 5), then at 10 and 12 (best 3.5 at 8).
OBSERVATIONS = {1: 1.0, 2: 2.0, 3: 2.0, 4: 2.0, 5: 3.0, 6: 3.0, 7: 3.0, 8: 3.5, 9: 3.0, 10: 3.0, 11: 3.0, 12: 3.0}


# ------------------------------------------------------------------------------------ fixed schedules


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
        _advance(sched)
        got.append(sched.get_last_lr())
    assert got == [pytest.approx(r) for r in expected]
    assert got[-1] == pytest.approx([0.1, 0.1])  # eta_min is an absolute floor for each group


def test_fixed_schedule_errors():
    with pytest.raises(ValueError, match="warmup_iter"):
        CosineAnnealingLR(_opt(), total_iter=5, warmup_iter=5)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="warmup_start_factor"):
            MultiStepLR(_opt(), milestones=[3], warmup_start_factor=bad)
        with pytest.raises(ValueError, match="warmup_start_factor"):
            CosineAnnealingLR(_opt(), total_iter=5, warmup_start_factor=bad)
        with pytest.raises(ValueError, match="warmup_start_factor"):
            ReduceLROnPlateau(_opt(), warmup_start_factor=bad)


@pytest.mark.parametrize("make", [_multistep, _cosine])
def test_fixed_schedules_ignore_observe(make):
    sched, reference = make(_opt()), make(_opt())
    assert sched.monitor is None and sched.reductions == 0
    for it in range(1, 13):
        _advance(sched)
        _advance(reference)
        sched.observe(-float(it), True, it)  # worse every time: a plateau scheduler would have reduced
        assert sched.get_last_lr() == reference.get_last_lr()
    assert sched.reductions == 0


# ---------------------------------------------------------------------------------- shared behaviour


@pytest.mark.parametrize("make", FACTORIES)
def test_schedulers_are_torch_lr_schedulers(make):
    sched = make(_opt())
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    assert sched.last_epoch == 0  # construction performs the initial step, to step 0
    _advance(sched)
    assert sched.last_epoch == 1


def test_registered_by_class_name():
    for cls in (MultiStepLR, CosineAnnealingLR, ReduceLROnPlateau):
        assert SCHEDULER_REGISTRY.get(cls.__name__) is cls


@pytest.mark.parametrize("make", FACTORIES)
def test_lr_scale_set_from_outside_survives_steps(make):
    scaled, reference = make(_opt(1.0, groups=2)), make(_opt(1.0, groups=2))
    for it in range(1, 13):
        for sched in (scaled, reference):
            _advance(sched)
            sched.observe(OBSERVATIONS[it], True, it)
        if it == 3:  # what a training automation does: set the scale and rescale the LR itself
            group = scaled.optimizer.param_groups[1]
            group["lr_scale"] = 0.5
            group["lr"] *= 0.5
        if it >= 3:  # across milestones, the cosine and plateau reductions alike
            got = [g["lr"] for g in scaled.optimizer.param_groups]
            want = [g["lr"] for g in reference.optimizer.param_groups]
            assert got == [want[0], 0.5 * want[1]]
    assert reference.get_last_lr() != [1.0, 2.0]  # the schedule did move in that time


@pytest.mark.parametrize("make", FACTORIES)
def test_state_round_trip_continues_identically(make):
    a = make(_opt(1.0, groups=2))
    _run(a, OBSERVATIONS, True, 6)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)  # plain values only: loads with weights_only
    buffer.seek(0)
    b = make(_opt(1.0, groups=2))
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert b.get_last_lr() == a.get_last_lr()
    assert [g["lr"] for g in b.optimizer.param_groups] == a.get_last_lr()
    assert _run(b, OBSERVATIONS, True, 12, start=7) == _run(a, OBSERVATIONS, True, 12, start=7)
    assert b.state_dict() == a.state_dict()


def test_state_keeps_the_older_checkpoint_key():
    sched = CosineAnnealingLR(_opt(), total_iter=10)
    sched.load_state_dict({"last_step": 4})  # the format checkpoints were written in before
    t = 4 / 10
    assert sched.get_last_lr()[0] == pytest.approx(1e-7 + (1 - 1e-7) * 0.5 * (1 + math.cos(math.pi * t)))
    assert sched.state_dict()["last_step"] == 4


def test_plateau_round_trip_restores_the_plateau_state():
    sched = _plateau(_opt())
    _run(sched, OBSERVATIONS, True, 6)
    # reduced once at 4; best 3.0 since iteration 5
    assert sched.state_dict() == {"last_step": 6, "best": 3.0, "best_iter": 5, "n_reductions": 1,
                                  "last_reduction": 4}


# ------------------------------------------------------------------------------------ ReduceLROnPlateau


def test_plateau_hand_worked_sequence():
    # PSNR-like (higher is better), rel threshold 1e-4: an improvement on best must exceed best * 1.0001.
    sched = ReduceLROnPlateau(_opt(2.0), monitor="psnr", factor=0.5, patience=3, threshold=1e-4, min_lr=0.3,
                              warmup_iter=4, warmup_start_factor=0.25)
    assert sched.monitor == "psnr"
    observations = {
        4: 10.0,  # first value: best 10 @ 4
        5: 11.0,  # > 10.001: best 11 @ 5
        6: 11.0001,  # not > 11.0011: no improvement, 1 iteration since best
        7: 10.5,  # worse, 2 since best
        8: 11.001,  # still not > 11.0011; 3 since best = patience: reduce to 1.0, patience restarts @ 8
        9: 11.002,  # > 11.0011: best 11.002 @ 9
        12: 11.0,  # 3 since best: reduce to 0.5
        15: 10.0,  # 3 since the last reduction: 0.25, floored at min_lr 0.3
        18: 10.0,  # 3 since: 2 * 0.5**3 = 0.25 is already under the floor, nothing changes, none counted
    }
    warmup = [2 * (0.25 + 0.75 * s / 4) for s in range(4)]
    assert warmup == [0.5, 0.875, 1.25, 1.625]
    assert sched.get_last_lr() == [0.5]
    lrs, reductions = _run(sched, observations, True, 18)
    assert lrs == pytest.approx(warmup[1:] + [2.0] * 4 + [1.0] * 4 + [0.5] * 3 + [0.3] * 4)
    assert reductions == [0] * 7 + [1] * 4 + [2] * 3 + [3] * 4
    assert sched.last_reduction == 15 and sched.best == 11.002


def test_plateau_loss_with_abs_threshold_and_cooldown():
    # A loss (lower is better); an improvement must beat best by more than 0.05.
    sched = ReduceLROnPlateau(_opt(1.0), factor=0.1, patience=2, threshold=0.05, threshold_mode="abs",
                              cooldown=4)
    observations = {
        1: 1.0,  # best 1.0 @ 1
        2: 0.97,  # not < 0.95
        3: 0.96,  # 2 since best: reduce to 0.1, cooldown until 3 + 4
        5: 0.99,  # 2 since the reduction, but cooling down (5 - 3 < 4)
        6: 0.98,  # still cooling down
        7: 0.98,  # cooldown over, 4 >= patience since the reduction: reduce to 0.01
        8: 0.90,  # < 0.95: best 0.9 @ 8
        10: 0.86,  # not < 0.85; 2 since best but cooling down (10 - 7 < 4)
        11: 0.84,  # < 0.85: best 0.84 @ 11
        13: 0.84,  # 2 since best, cooldown over: reduce to 0.001
    }
    lrs, reductions = _run(sched, observations, False, 13)
    assert lrs == pytest.approx([1.0] * 2 + [0.1] * 4 + [0.01] * 6 + [0.001])
    assert reductions == [0] * 2 + [1] * 4 + [2] * 6 + [3]
    assert sched.best == 0.84 and sched.best_iter == 13


def test_plateau_observations_during_warmup_never_reduce():
    sched = ReduceLROnPlateau(_opt(1.0), factor=0.5, patience=1, warmup_iter=6, warmup_start_factor=0.4)
    observations = {1: 10.0, 2: 9.0, 3: 9.0, 4: 12.0, 5: 11.0, 6: 11.0}
    lrs, reductions = _run(sched, observations, True, 6)
    # 1..5 are warm-up: 12 @ 4 still becomes the best; at 6 (warm-up over) 2 since best: reduce from 1.0
    assert lrs == pytest.approx([0.4 + 0.6 * s / 6 for s in range(1, 6)] + [0.5])
    assert reductions == [0] * 5 + [1]
    assert sched.best == 12.0


def test_plateau_min_lr_is_a_floor_per_group_that_never_raises_a_group():
    opt = _opt(1.0, groups=2)
    opt.param_groups[0]["lr"] = 0.2  # below min_lr: it stays at its own LR
    sched = ReduceLROnPlateau(opt, factor=0.5, patience=1, min_lr=0.3)
    got = [sched.get_last_lr()]
    for it in range(1, 5):
        _advance(sched)
        sched.observe(5.0, True, it)
        got.append(sched.get_last_lr())
    # 1: best; 2: [0.2, 1.0] -> [0.2, 0.5]; 3: -> [0.2, 0.3 (0.25 floored)]; 4: every group at its floor
    assert got == [[0.2, 2.0], [0.2, 2.0], [0.2, 1.0], [0.2, 0.5], [0.2, 0.3]]
    assert sched.reductions == 3


@pytest.mark.parametrize(
    ("mode", "higher", "best", "value", "improves"),
    [
        ("rel", True, 10.0, 10.0011, True),  # > 10 * 1.0001
        ("rel", True, 10.0, 10.0009, False),
        ("rel", False, 10.0, 9.9989, True),  # < 10 * 0.9999
        ("rel", False, 10.0, 9.9991, False),
        ("rel", True, -10.0, -9.9989, True),  # the margin is relative to |best|
        ("rel", True, -10.0, -9.9991, False),
        ("abs", True, 10.0, 10.0002, True),  # > 10 + 1e-4
        ("abs", True, 10.0, 10.00009, False),
        ("abs", False, 10.0, 9.9998, True),
        ("abs", False, 10.0, 9.99991, False),
    ],
)
def test_plateau_improvement_threshold(mode, higher, best, value, improves):
    sched = ReduceLROnPlateau(_opt(), patience=1, threshold=1e-4, threshold_mode=mode)
    _advance(sched)
    sched.observe(best, higher, 1)
    _advance(sched)
    sched.observe(value, higher, 2)  # patience 1: anything but an improvement reduces
    assert sched.reductions == (0 if improves else 1)
    assert sched.best == (value if improves else best)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factor": 0.0}, "factor"),
        ({"factor": 1.0}, "factor"),
        ({"patience": 0}, "patience"),
        ({"min_lr": -1e-6}, "min_lr"),
        ({"cooldown": -1}, "cooldown"),
        ({"threshold": -0.1}, "threshold"),
        ({"threshold_mode": "relative"}, "threshold_mode"),
    ],
)
def test_plateau_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReduceLROnPlateau(_opt(), **kwargs)


def test_plateau_options_accept_fractions_of_the_run(tmp_path, hr_folder):
    from tests.conftest import small_train_yaml
    from utils.options import load_options

    over = "train.scheduler={type: ReduceLROnPlateau, monitor: psnr, patience: 0.25T, cooldown: 0.1T}"
    opt = load_options(small_train_yaml(tmp_path, hr_folder), [over])
    assert opt.train.scheduler == {"type": "ReduceLROnPlateau", "monitor": "psnr", "patience": 5, "cooldown": 2}


# ------------------------------------------------------------------------------------- training loop


def test_training_step_order_raises_no_scheduler_warning(tmp_path, hr_folder):
    from models.sr_model import SRModel
    from tests.conftest import small_train_yaml
    from utils.options import load_options

    opt = load_options(small_train_yaml(tmp_path, hr_folder))
    torch.manual_seed(0)
    model = SRModel(opt, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    batch = {"lq": torch.rand(2, 3, 8, 8, generator=g), "gt": torch.rand(2, 3, 16, 16, generator=g)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for it in (1, 2):
            model.train_step([batch], it)
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert model.schedulers["g"].last_epoch == 2
    assert model.optimizers["g"].param_groups[0]["lr"] == 1e-3
