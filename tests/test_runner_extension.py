"""The runner's extension surface: losses with named inputs, options contributed by components,
a step whose weights are all 0, EMA after .to(), top-k retention and metric-fed LR schedulers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from tests.conftest import small_train_yaml
from train import train
from utils.ema import ModelEMA
from utils.options import OptionsError, load_options

PLUGIN = '''
import torch
from typing import ClassVar
from torch import nn
from models.sr_model import SRModel
from utils.options import NETWORK
from utils.registry import LOSS_REGISTRY, MODEL_REGISTRY
from utils.schedule import Scheduled


@LOSS_REGISTRY.register()
class LqConsistencyLoss(nn.Module):
    """L1 between the box-downscaled output and the input: needs ``sr`` and ``lq``."""
    inputs = ("sr", "lq")

    def forward(self, sr, lq):
        scale = sr.shape[-1] // lq.shape[-1]
        return (torch.nn.functional.avg_pool2d(sr, scale) - lq).abs().mean()


@LOSS_REGISTRY.register()
class TeacherL1Loss(nn.Module):
    inputs = ("sr", "teacher")

    def forward(self, sr, teacher):
        return (sr - teacher).abs().mean()


@MODEL_REGISTRY.register()
class TeacherSRModel(SRModel):
    """A runner that contributes its own option sections (checked like every other)."""
    option_fields: ClassVar = {"network_t": (NETWORK | None, None)}
    train_option_fields: ClassVar = {"teacher_weight": (Scheduled, 0.0)}
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # one file for the module: registering the same class names from two files is an error
    path = tmp_path_factory.mktemp("plugin") / "extension_plugin.py"
    path.write_text(PLUGIN)
    return path


def _edit(path: Path, fn) -> Path:
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data))
    return path


def test_loss_gets_the_tensors_it_declares(tmp_path, hr_folder, plugin):
    def edit(d):
        d["imports"] = [str(plugin)]
        d["train"]["losses"].append({"type": "LqConsistencyLoss", "loss_weight": 0.5})
        d["logger"]["use_tb_logger"] = True
    path = _edit(small_train_yaml(tmp_path, hr_folder), edit)
    result = train(path, ["train.total_iter=5", "val.val_freq=5", "logger.print_freq=5"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(result["experiment_dir"]) / "tb_logger")).Reload()
    l1 = acc.Scalars("losses/l1")[0].value
    lq = acc.Scalars("losses/lqconsistency")[0].value
    total = acc.Scalars("losses/total")[0].value
    assert lq > 0
    assert total == pytest.approx(l1 + 0.5 * lq, rel=1e-5)  # weights apply to the unweighted logged terms


def test_missing_tensor_is_an_option_error_naming_loss_and_tensor(tmp_path, hr_folder, plugin):
    def edit(d):
        d["imports"] = [str(plugin)]
        d["train"]["losses"].append({"type": "TeacherL1Loss"})
        d["train"]["losses"].append({"type": "L1Loss", "inputs": ["sr", "hr"]})
    path = _edit(small_train_yaml(tmp_path, hr_folder), edit)
    with pytest.raises(OptionsError) as info:
        load_options(path)
    problems = dict(info.value.problems)
    assert "TeacherL1Loss needs the tensor 'teacher'" in problems["train.losses[1]"]
    assert "L1Loss needs the tensor 'hr'" in problems["train.losses[2]"]
    assert "gt, lq, sr" in problems["train.losses[1]"]


def test_runner_contributed_sections_are_checked_strictly(tmp_path, hr_folder, plugin):
    def edit(d):
        d["imports"] = [str(plugin)]
        d["model_type"] = "TeacherSRModel"
        d["network_t"] = {"type": "EDSR", "num_feat": 8, "num_blok": 1}
        d["train"]["teacher_wieght"] = 0.5
    path = _edit(small_train_yaml(tmp_path, hr_folder), edit)
    with pytest.raises(OptionsError) as info:
        load_options(path)
    problems = dict(info.value.problems)
    assert "did you mean 'num_block'" in problems["network_t.num_blok"]
    assert "did you mean 'teacher_weight'" in problems["train.teacher_wieght"]
    # fixed, the contributed sections are validated and coerced like built-in ones
    _edit(path, lambda d: (d["network_t"].pop("num_blok"), d["train"].pop("teacher_wieght"),
                           d["train"].update(teacher_weight={0: 0.0, "0.5T": 1.0})))
    opt = load_options(path)
    assert opt.network_t["scale"] == 2  # injected like network_g's
    assert opt.train.teacher_weight(9) == 0.0 and opt.train.teacher_weight(10) == 1.0
    # an SRModel file does not accept the other runner's sections
    _edit(path, lambda d: d.update(model_type="SRModel"))
    with pytest.raises(OptionsError, match="network_t: unknown key"):
        load_options(path)


def test_a_step_whose_weights_are_all_zero_changes_nothing(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, ["train.losses[0].loss_weight={0: 0.0, 11: 1.0}", "logger.save_checkpoint_freq=5",
                          "train.ema_decay=0"])
    exp = Path(result["experiment_dir"])
    w5, w10, w15 = (load_file(str(exp / "models" / f"net_g_{i}.safetensors")) for i in (5, 10, 15))
    assert all(torch.equal(w5[k], w10[k]) for k in w5)  # no update while every weight is 0
    assert not torch.equal(w10["conv_first.weight"], w15["conv_first.weight"])
    state = torch.load(exp / "training_states" / "20.state", weights_only=False)
    assert state["model"]["optimizers"]["g"]["state"][0]["step"].item() == 10  # stepped from 11 to 20 only


def test_ema_follows_a_network_moved_to_new_storage():
    net = nn.Linear(2, 1)
    ema = ModelEMA(net, decay=0.5)
    ema.update(net, 0)
    # .to(device/dtype) swaps parameter storage in place; a cache of the old views would go stale.
    with torch.no_grad():
        net.weight.data = torch.full_like(net.weight, 4.0)
        net.bias.data = torch.full_like(net.bias, 2.0)
    old_w, old_b = ema.module.weight.clone(), ema.module.bias.clone()
    ema.update(net, 1)
    assert torch.allclose(ema.module.weight, 0.5 * old_w + 0.5 * 4.0)
    assert torch.allclose(ema.module.bias, 0.5 * old_b + 0.5 * 2.0)


def test_keep_best_keeps_top_k_beside_the_last(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, ["val.val_freq=4", "logger.save_checkpoint_freq=100", "logger.keep_last=1",
                          "logger.keep_best={metric: psnr, k: 2}", "train.ema_decay=0"])
    exp = Path(result["experiment_dir"])
    state = torch.load(exp / "training_states" / "20.state", weights_only=False)
    scores = state["loop"]["scores"]
    assert sorted(scores) == [4, 8, 12, 16, 20]  # a checkpoint at every validation
    top2 = sorted(scores, key=scores.get, reverse=True)[:2]
    kept = {int(p.stem.split("_")[-1]) for p in (exp / "models").glob("net_g_[0-9]*.safetensors")}
    assert kept == {20, *top2}
    assert {int(p.stem) for p in (exp / "training_states").glob("*.state")} == {20, *top2}
    with safe_open(str(exp / "models" / "net_g_best.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["source"] == "live" and meta["swa_promoted"] == "false"
    assert int(meta["iter"]) == max(scores, key=scores.get)


def test_keep_best_metric_must_exist(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    with pytest.raises(OptionsError, match="'ssim' is not a val.metrics name"):
        load_options(path, ["logger.keep_best={metric: ssim}"])


def test_plateau_scheduler_is_fed_validation_metrics(tmp_path, hr_folder):
    """With lr 1e-12 the (8-bit quantised) metric never changes, so the LR halves once patience iterations have passed
    since the first (best) validation: at 4 (best) → 12 reduces (12 - 4 >= 8) → 20 reduces again."""
    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, ["train.optim_g.lr=1.0e-12", "train.ema_decay=0", "val.val_freq=4",
                          "train.scheduler={type: ReduceLROnPlateau, patience: 8, factor: 0.5}"])
    log = next(Path(result["experiment_dir"]).glob("train_*.log")).read_text()
    assert log.count("has not improved; LR reduced") == 2
    assert "at iteration 12" in log and "at iteration 20" in log
    state = torch.load(Path(result["experiment_dir"]) / "training_states" / "20.state", weights_only=False)
    assert state["model"]["schedulers"]["g"]["n_reductions"] == 2
