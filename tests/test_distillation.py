"""DistillationLoss: the value against a teacher with known weights, the two-pass teacher, the
weight ramp, the per-step draw (same on every rank and on resume), a frozen teacher that no state
or weight file holds, and clear messages for a wrong or missing teacher."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from archs.edsr_arch import EDSR
from losses.distillation_loss import DistillationLoss, ramp_weight
from models.loss_set import LossSet
from tests.conftest import small_train_yaml
from train import train
from utils.options import OptionsError
from utils.weights import network_metadata, save_network

# conv_last's bias of the known teacher: with every other weight 0, rgb_mean 0 and img_range 1,
# EDSR with residual_output computes teacher(lq) = nearest_upsample(lq) + C (per channel)
C = (0.1, 0.2, 0.3)
LQ_VALUES = [i / 12 for i in range(12)]  # a 1x3x2x2 batch: channel k holds LQ_VALUES[4k:4k+4]
SR_VALUE = 0.5


def _section(scale: int = 2, **kw: Any) -> dict[str, Any]:
    return {"type": "EDSR", "num_feat": 4, "num_block": 1, "scale": scale, "img_range": 1.0,
            "rgb_mean": [0.0, 0.0, 0.0], "residual_output": True, **kw}


def known_teacher(folder: Path, scale: int = 2, name: str = "teacher") -> Path:
    """A tiny EDSR whose output is nearest(lq) + C, saved as upforge saves weights (with metadata)."""
    section = _section(scale)
    net = EDSR(**{k: v for k, v in section.items() if k != "type"})
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.conv_last.bias.copy_(torch.tensor(C))
    path = folder / f"{name}_x{scale}.safetensors"
    save_network(net, path, metadata=network_metadata(section, scale))
    return path


def _lq() -> torch.Tensor:
    return torch.tensor(LQ_VALUES).view(1, 3, 2, 2)


def _hand(criterion: str, passes: int) -> float:
    """criterion(SR_VALUE, lq + passes * C) over the 12 LR values: nearest upsampling repeats every
    value equally often, so the mean over the HR image is the mean over the LR values."""
    diffs = [LQ_VALUES[i] + passes * C[i // 4] - SR_VALUE for i in range(12)]
    per = {"l1": [abs(d) for d in diffs], "mse": [d * d for d in diffs],
           "charbonnier": [math.sqrt(d * d + 1e-12) for d in diffs]}[criterion]
    return sum(per) / len(per)


def _loss_set(entry: dict[str, Any], logged: dict[str, float] | None = None, **kw: Any) -> LossSet:
    def log(key: str, value: torch.Tensor) -> None:
        if logged is not None:
            logged[key] = float(value)

    return LossSet([{"type": "DistillationLoss", **entry}], torch.device("cpu"), log, **kw)


SEED_RAMP = {"weight_max": 0.10, "weight_final": 0.12, "start_frac": 0.6, "final_frac": 0.9}  # the seed's values


@pytest.mark.parametrize("criterion", ["l1", "mse", "charbonnier"])
def test_value_is_criterion_against_teacher_times_ramp(tmp_path, criterion):
    teacher = known_teacher(tmp_path)
    logged: dict[str, float] = {}
    losses = _loss_set({"teacher_path": str(teacher), "scale": 2, "total_iter": 100, "criterion": criterion,
                        **SEED_RAMP}, logged)
    sr = torch.full((1, 3, 4, 4), SR_VALUE)
    hand = _hand(criterion, passes=1)
    # w = 0 before 0.6T, 0.10 * (step - 60) / 30 on [60, 90), 0.12 from 0.9T on
    for step, weight in ((30, 0.0), (60, 0.0), (75, 0.05), (89, 0.1 * 29 / 30), (90, 0.12), (100, 0.12)):
        total = losses({"sr": sr, "lq": _lq(), "gt": sr}, step)
        if weight == 0.0:
            assert total is None  # no term to compute: the teacher did not run
            continue
        assert float(total) == pytest.approx(weight * hand, rel=1e-6), step
        assert logged["losses/distillation"] == pytest.approx(hand, rel=1e-6)  # logged unweighted


def test_ramp_formula():
    def w(step: int) -> float:
        return ramp_weight(step, 1000, 0.10, 0.12, 0.6, 0.9)

    assert [w(s) for s in (0, 599, 600)] == [0.0, 0.0, 0.0]
    assert w(750) == pytest.approx(0.05) and w(899) == pytest.approx(0.1 * 299 / 300)
    assert w(900) == 0.12 and w(1000) == 0.12
    assert ramp_weight(10, 100, 0.3, 0.3, 0.0, 0.0) == 0.3  # no ramp: weight_final from the start


def test_twopass_is_teacher_applied_twice(tmp_path):
    loss = DistillationLoss(str(known_teacher(tmp_path)), scale=4, total_iter=10, teacher_twopass=True)
    lq = _lq()
    twice = lq.repeat_interleave(4, -1).repeat_interleave(4, -2) + 2 * torch.tensor(C).view(1, 3, 1, 1)
    assert torch.allclose(loss.teacher_output(lq), twice, atol=1e-6)
    assert float(loss(torch.full((1, 3, 8, 8), SR_VALUE), lq)) == pytest.approx(_hand("l1", passes=2), rel=1e-6)


def test_teacher_rebuilt_from_metadata_keys_or_section(tmp_path):
    """Random weights with residual_output (which the keys alone cannot show): from the metadata the
    loaded teacher computes exactly what the saved network does; a .pth without metadata holding
    params and params_ema is read by param_key, its arch inferred from the keys or given."""
    torch.manual_seed(0)
    section = _section(res_scale=0.1)
    saved = EDSR(**{k: v for k, v in section.items() if k != "type"}).eval()
    path = tmp_path / "t.safetensors"
    save_network(saved, path, metadata=network_metadata(section, 2))
    lq = torch.rand(2, 3, 5, 6)
    with torch.no_grad():
        want = saved(lq)
    assert torch.equal(DistillationLoss(str(path), scale=2, total_iter=1).teacher_output(lq), want)

    plain = EDSR(num_feat=4, num_block=1, scale=2).eval()
    other = EDSR(num_feat=4, num_block=1, scale=2)
    pth = tmp_path / "t.pth"
    torch.save({"params": other.state_dict(), "params_ema": plain.state_dict()}, pth)
    with torch.no_grad():
        # the residual form replaces the mean added back at the output by the nearest-upsampled input
        mean = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)
        nearest = lq.repeat_interleave(2, -1).repeat_interleave(2, -2)
        want_plain, want_residual = plain(lq), plain(lq) - mean + nearest
    assert torch.equal(DistillationLoss(str(pth), scale=2, total_iter=1).teacher_output(lq), want_plain)
    given = {"type": "EDSR", "num_feat": 4, "num_block": 1, "residual_output": True}  # scale defaults to 2
    loss = DistillationLoss(str(pth), scale=2, total_iter=1, teacher_network=given)
    assert torch.allclose(loss.teacher_output(lq), want_residual, atol=1e-6)
    with torch.no_grad():
        want_params = other(lq)
    assert torch.equal(DistillationLoss(str(pth), scale=2, total_iter=1, param_key="params").teacher_output(lq),
                       want_params)


def _drawn(loss: DistillationLoss, steps: range) -> set[int]:
    return {s for s in steps if loss.step_weight(s) > 0}


def test_sampled_steps_fraction_and_same_draw_everywhere(tmp_path):
    teacher = str(known_teacher(tmp_path))
    steps = range(1, 1001)
    torch.manual_seed(1)
    rank0 = DistillationLoss(teacher, scale=2, total_iter=1000, sample_frac=0.5, seed=7)
    torch.manual_seed(2)  # another process state (a second rank, a resumed run) draws the same steps
    rank1 = DistillationLoss(teacher, scale=2, total_iter=1000, sample_frac=0.5, seed=7)
    drawn = _drawn(rank0, steps)
    assert abs(len(drawn) / 1000 - 0.5) < 0.05
    assert drawn == _drawn(rank1, steps)
    assert {rank0.step_weight(s) for s in steps} == {0.0, 1.0}
    assert drawn != _drawn(DistillationLoss(teacher, scale=2, total_iter=1000, sample_frac=0.5, seed=8), steps)
    quarter = _drawn(DistillationLoss(teacher, scale=2, total_iter=1000, sample_frac=0.25, seed=7), steps)
    assert abs(len(quarter) / 1000 - 0.25) < 0.05
    assert len(_drawn(DistillationLoss(teacher, scale=2, total_iter=1000), steps)) == 1000  # sample_frac 1


def test_undrawn_steps_skip_the_teacher(tmp_path):
    losses = _loss_set({"teacher_path": str(known_teacher(tmp_path)), "scale": 2, "total_iter": 50,
                        "sample_frac": 0.5, "seed": 3})
    fn = losses.term("distillation").fn
    calls: list[int] = []
    fn.teacher.register_forward_hook(lambda *_: calls.append(1))
    sr = torch.full((1, 3, 4, 4), SR_VALUE)
    computed = [s for s in range(1, 51) if losses({"sr": sr, "lq": _lq()}, s) is not None]
    assert computed == sorted(_drawn(fn, range(1, 51)))
    assert len(calls) == len(computed) and 0 < len(computed) < 50


def test_teacher_is_frozen_and_follows_the_student_format(tmp_path):
    losses = _loss_set({"teacher_path": str(known_teacher(tmp_path)), "scale": 2, "total_iter": 10},
                       memory_format=torch.channels_last)
    fn = losses.term("distillation").fn
    fn.train()
    assert not fn.teacher.training
    assert fn.teacher.conv_first.weight.is_contiguous(memory_format=torch.channels_last)
    sr = torch.full((1, 3, 4, 4), SR_VALUE, requires_grad=True)
    losses({"sr": sr, "lq": _lq()}, 5).backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in fn.teacher.parameters())


def test_wrong_or_missing_teacher_messages(tmp_path):
    x2, x4 = known_teacher(tmp_path, 2), known_teacher(tmp_path, 4)
    with pytest.raises(ValueError, match=r"a teacher of the wrong scale: .*teacher_x2.* upscales x2, but the run's "
                                         r"scale is 4; use an x4 teacher \(or an x2 teacher with teacher_twopass"):
        DistillationLoss(str(x2), scale=4, total_iter=10)
    with pytest.raises(ValueError, match=r"x2 run twice = x4, but the run's scale is 2"):
        DistillationLoss(str(x2), scale=2, total_iter=10, teacher_twopass=True)
    with pytest.raises(ValueError, match=r"teacher_twopass runs an x2 teacher twice, but the teacher .*teacher_x4"):
        DistillationLoss(str(x4), scale=4, total_iter=10, teacher_twopass=True)
    with pytest.raises(FileNotFoundError, match=r"teacher_path .*nope.safetensors does not exist"):
        DistillationLoss(str(tmp_path / "nope.safetensors"), scale=2, total_iter=10)
    with pytest.raises(ValueError, match=r"sample_frac .* must be in \(0, 1\], got 0"):
        DistillationLoss(str(x2), scale=2, total_iter=10, sample_frac=0)
    with pytest.raises(ValueError, match=r"need 0 <= start_frac <= final_frac <= 1"):
        DistillationLoss(str(x2), scale=2, total_iter=10, start_frac=0.9, final_frac=0.6)


def _with_distillation(teacher: Path, **kw: Any) -> str:
    entry = ", ".join(f"{k}: {v}" for k, v in {"teacher_path": teacher, "sample_frac": 0.5, **kw}.items())
    return f"train.losses=[{{type: L1Loss}}, {{type: DistillationLoss, {entry}}}]"


def _keys(obj: Any, where: str = "") -> list[str]:
    """Every key path of a nested state."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in [f"{where}.{k}", *_keys(v, f"{where}.{k}")]]
    return []


def test_train_run_states_hold_no_teacher_and_resume_either_way(tmp_path, hr_folder):
    """scale and total_iter come from the run; the teacher is in no training state or weight file; a
    state written with distillation resumes without it and the other way round."""
    path = small_train_yaml(tmp_path, hr_folder)
    teacher = known_teacher(tmp_path)
    common = ["train.total_iter=10", "val.val_freq=10", "logger.save_checkpoint_freq=10"]
    with_d = Path(train(path, ["name=with", *common, _with_distillation(teacher)])["experiment_dir"])
    state = torch.load(with_d / "training_states" / "10.state", weights_only=True)
    assert set(state["model"]["nets"]) == {"net_g"}
    assert not [k for k in _keys(state) if "teacher" in k]
    assert state["model"]["loss_multipliers"] == {"l1": 1.0, "distillation": 1.0}
    net_g_keys = set(state["model"]["nets"]["net_g"])
    for weights in (with_d / "models").glob("*.safetensors"):
        assert set(load_file(str(weights))) == net_g_keys, weights.name
    assert "distillation 0." in next(with_d.glob("train_*.log")).read_text()  # logged at print steps
    # the same run continued without distillation, and a run without it continued with it
    assert train(path, ["name=with", "train.total_iter=12"], auto_resume=True)["iter"] == 12
    train(path, ["name=without", *common])
    resumed = train(path, ["name=without", "train.total_iter=12", _with_distillation(teacher)], auto_resume=True)
    assert resumed["iter"] == 12


def test_check_reports_a_wrong_teacher_and_start_up_a_missing_one(tmp_path, hr_folder):
    """A wrong-scale teacher or an impossible value stops --check; a teacher file that does not exist
    yet passes --check (a later stage's file is checked before the stage writing its teacher ran,
    as for path.pretrain_network_g) and stops the run at start-up, naming the file."""
    path = small_train_yaml(tmp_path, hr_folder)
    x4 = known_teacher(tmp_path, 4)
    with pytest.raises(OptionsError) as err:
        train(path, [_with_distillation(x4)], check=True)
    assert "a teacher of the wrong scale" in dict(err.value.problems)["train.losses[1]"]
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(OptionsError) as err:
        train(path, [_with_distillation(missing, final_frac=1.5)], check=True)
    assert "need 0 <= start_frac <= final_frac <= 1" in dict(err.value.problems)["train.losses[1]"]
    assert not (tmp_path / "exp").exists()  # nothing was started
    assert train(path, [_with_distillation(missing)], check=True) == {"check": True}
    with pytest.raises(FileNotFoundError, match=r"DistillationLoss: teacher_path .*missing.safetensors does not "
                                                r"exist"):
        train(path, [_with_distillation(missing)])


def test_check_notes_a_teacher_that_an_earlier_stage_has_not_written_yet():
    from tests.conftest import ROOT
    from train import describe
    from utils.options import load_options

    text = describe(load_options(ROOT / "options/train/PixelArt/edsr_64x32_x4_trunk.yml"))
    assert ("# note: train.losses[4].teacher_path = experiments/PixelArt_edsr_64x32_x2_trunk/models/"
            "net_g_best.safetensors does not exist; the run would stop at start-up") in text
