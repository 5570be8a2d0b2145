"""Adversarial training: the GAN formulations against hand-computed values, the two players'
steps, the pre-training phase and the ramp, option checks, logging names and a bitwise resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from losses.gan_loss import GANLoss
from models.srgan_model import SRGANModel
from train import train
from utils.options import OptionsError, load_options, parse_options


def _sp(x: float) -> float:
    """softplus: BCE-with-logits is softplus(-x) for target 1 and softplus(x) for target 0."""
    return math.log1p(math.exp(x))


def _bce(x: float, y: float) -> float:
    return y * _sp(-x) + (1 - y) * _sp(x)


REAL = torch.tensor([[1.0], [-0.5]])
FAKE = torch.tensor([[0.2], [-1.5]])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# ---------------------------------------------------------------- formulations


def test_vanilla_with_label_smoothing():
    loss = GANLoss("vanilla", real_label=0.9, fake_label=0.1)
    d = _mean([_bce(1.0, 0.9), _bce(-0.5, 0.9)]) + _mean([_bce(0.2, 0.1), _bce(-1.5, 0.1)])
    assert float(loss.discriminator_loss(REAL, FAKE)) == pytest.approx(d, rel=1e-6)
    # the generator's target stays 1: smoothing is for the discriminator only
    assert float(loss.generator_loss(FAKE)) == pytest.approx(_mean([_sp(-0.2), _sp(1.5)]), rel=1e-6)
    smooth_free = GANLoss("vanilla")
    assert float(smooth_free.discriminator_loss(REAL, FAKE)) != pytest.approx(d, rel=1e-3)


def test_lsgan():
    loss = GANLoss("lsgan", real_label=0.9)
    d = _mean([(1.0 - 0.9) ** 2, (-0.5 - 0.9) ** 2]) + _mean([0.2**2, 1.5**2])
    assert float(loss.discriminator_loss(REAL, FAKE)) == pytest.approx(d, rel=1e-6)
    assert float(loss.generator_loss(FAKE)) == pytest.approx(_mean([(0.2 - 1) ** 2, (-1.5 - 1) ** 2]), rel=1e-6)


def test_hinge():
    loss = GANLoss("hinge")
    d = _mean([max(0, 1 - 1.0), max(0, 1 + 0.5)]) + _mean([max(0, 1 + 0.2), max(0, 1 - 1.5)])
    assert float(loss.discriminator_loss(REAL, FAKE)) == pytest.approx(d, rel=1e-6)
    assert float(loss.generator_loss(FAKE)) == pytest.approx(-_mean([0.2, -1.5]), rel=1e-6)
    with pytest.raises(ValueError, match="hinge has no target labels"):
        GANLoss("hinge", real_label=0.9)


def test_relativistic_average():
    loss = GANLoss("ragan", real_label=0.9)
    mr, mf = _mean([1.0, -0.5]), _mean([0.2, -1.5])
    d = 0.5 * (_mean([_bce(1.0 - mf, 0.9), _bce(-0.5 - mf, 0.9)]) + _mean([_bce(0.2 - mr, 0.0), _bce(-1.5 - mr, 0.0)]))
    assert float(loss.discriminator_loss(REAL, FAKE)) == pytest.approx(d, rel=1e-6)
    g = 0.5 * (_mean([_bce(1.0 - mf, 0.0), _bce(-0.5 - mf, 0.0)]) + _mean([_bce(0.2 - mr, 1.0), _bce(-1.5 - mr, 1.0)]))
    assert float(loss.generator_loss(FAKE, REAL)) == pytest.approx(g, rel=1e-6)
    with pytest.raises(ValueError, match="scores of real images"):
        loss.generator_loss(FAKE)


def test_ragan_generator_gradient_reaches_fake_only():
    fake, real = FAKE.clone().requires_grad_(), REAL.clone().requires_grad_()
    GANLoss("ragan").generator_loss(fake, real).backward()
    assert real.grad is None and fake.grad is not None and fake.grad.abs().sum() > 0


def test_probabilities():
    assert float(GANLoss("vanilla").probability(REAL)) == pytest.approx(_mean([1 / (1 + math.exp(-1.0)),
                                                                               1 / (1 + math.exp(0.5))]))
    assert float(GANLoss("lsgan").probability(torch.tensor([1.4, 0.3]))) == pytest.approx(0.65)
    assert float(GANLoss("hinge").probability(torch.tensor([0.5, -0.1, 2.0, -3.0]))) == pytest.approx(0.5)


# ---------------------------------------------------------------- the runner


def _options(tmp_path: Path, hr: Path, **train_extra) -> dict:
    return {
        "name": "gan", "model_type": "SRGANModel", "scale": 2, "manual_seed": 5, "device": "cpu",
        "datasets": {
            "train": {"type": "HRImageDataset", "dataroot_gt": str(hr), "gt_size": 16, "batch_size_per_gpu": 2,
                      "num_worker_per_gpu": 0},
            "val": {"name": "v", "type": "HRImageDataset", "dataroot_gt": str(hr)},
        },
        "network_g": {"type": "EDSR", "num_feat": 8, "num_block": 1},
        "network_d": {"type": "PatchGANDiscriminator", "ndf": 8, "n_layers": 2},
        "path": {"experiments_root": str(tmp_path / "exp")},
        "train": {
            "total_iter": 12,
            "optim_g": {"type": "Adam", "lr": 1e-3},
            "optim_d": {"type": "Adam", "lr": 4e-3},
            "ema_decay": 0.9,
            "gan": {"type": "GANLoss", "gan_type": "ragan", "real_label": 0.9, "loss_weight": 0.01},
            "losses": [{"type": "L1Loss"}],
            **train_extra,
        },
        "val": {"val_freq": 6, "metrics": {"psnr": {"type": "calculate_psnr", "crop_border": 2}}},
        "logger": {"print_freq": 2, "save_checkpoint_freq": 6, "use_tb_logger": False, "keep_last": 10},
    }


def _model(tmp_path, hr, **train_extra) -> SRGANModel:
    return SRGANModel(parse_options(_options(tmp_path, hr, **train_extra)), torch.device("cpu"))


def _params(net) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"lq": torch.rand(2, 3, 8, 8, generator=g), "gt": torch.rand(2, 3, 16, 16, generator=g)}


def test_generator_step_leaves_discriminator_alone_and_back(tmp_path, hr_folder):
    model = _model(tmp_path, hr_folder)
    net_g, net_d = model.nets["net_g"], model.nets["net_d"]
    batch = _batch()
    g0, d0 = _params(net_g), _params(net_d)
    # the generator's half of a step
    model.adversary.freeze()
    sr = model.train_nets["net_g"](batch["lq"])
    loss = model.losses({"sr": sr, "gt": batch["gt"], "lq": batch["lq"]}, 1)
    loss = loss + model.adversary.generator_loss(sr, batch["gt"], 1)
    model.backward(loss, "g")
    assert all(p.grad is None for p in net_d.parameters())
    model.optimizer_step("g")
    assert not _same(g0, _params(net_g)) and _same(d0, _params(net_d))
    # the discriminator's half
    g1 = _params(net_g)
    model.adversary.step([batch["gt"]], [sr.detach()])
    assert _same(g1, _params(net_g)) and not _same(d0, _params(net_d))
    assert all(p.grad is None for p in net_g.parameters())


def test_smoothed_labels_reach_the_discriminator_loss(tmp_path, hr_folder):
    model = _model(tmp_path, hr_folder)
    batch = _batch(1)
    fake = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        real_s, fake_s = model.nets["net_d"](batch["gt"]), model.nets["net_d"](fake)
    mr, mf = real_s.mean(), fake_s.mean()
    expected = 0.5 * (torch.nn.functional.binary_cross_entropy_with_logits(real_s - mf, torch.full_like(real_s, 0.9))
                      + torch.nn.functional.binary_cross_entropy_with_logits(fake_s - mr, torch.zeros_like(fake_s)))
    # BatchNorm in train mode: the loss's forward uses the same batch statistics as above
    model.adversary.step([batch["gt"]], [fake])
    logged = model.pop_logs(1)
    assert logged["discriminator/adversarial_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert logged["discriminator/D(y)_prob"] == pytest.approx(float(torch.sigmoid(real_s).mean()), rel=1e-5)
    assert logged["discriminator/D(G(x))_prob"] == pytest.approx(float(torch.sigmoid(fake_s).mean()), rel=1e-5)


def test_phases_and_adversarial_ramp(tmp_path, hr_folder):
    ramp = {"type": "cosine", "from": 4, "to": 12, "start": 0.0, "end": 0.02}
    model = _model(tmp_path, hr_folder, g_pretrain_steps=4, net_d_iters=2, net_d_init_iters=2,
                   gan={"type": "GANLoss", "gan_type": "vanilla", "loss_weight": ramp})
    phases = {i: model.phase(i) for i in range(1, 11)}
    assert all(phases[i] == (True, True, False) for i in range(1, 5))  # generator-only pre-training
    # adversarial iterations a = 1, 2 are discriminator-only, then G on even a (2 D steps per G step)
    assert [phases[i][1] for i in range(5, 11)] == [False, False, False, True, False, True]
    assert all(phases[i][2] for i in range(5, 11))
    for step, expected in {2: 0.0, 4: 0.0, 8: 0.01, 10: 0.02 * (1 - math.cos(math.pi * 6 / 8)) / 2, 12: 0.02}.items():
        scalars = model.status_scalars(step)
        assert scalars["training/adv_loss_weight"] == pytest.approx(expected, abs=1e-12)
        assert scalars["training/pretrain_phase"] == float(step <= 4)


def test_pretrain_steps_do_not_touch_the_discriminator(tmp_path, hr_folder):
    model = _model(tmp_path, hr_folder, g_pretrain_steps=2, net_d_init_iters=1)
    net_g, net_d = model.nets["net_g"], model.nets["net_d"]
    d0, g0 = _params(net_d), _params(net_g)
    model.train_step([_batch(0)], 1)
    assert _same(d0, _params(net_d)) and not _same(g0, _params(net_g))
    assert "discriminator/adversarial_loss" not in model.pop_logs(1)
    g1 = _params(net_g)
    model.train_step([_batch(1)], 3)  # a = 1 <= net_d_init_iters: the discriminator alone
    assert _same(g1, _params(net_g)) and not _same(d0, _params(net_d))


def test_option_checks(tmp_path, hr_folder):
    data = _options(tmp_path, hr_folder)
    data["network_d"] = {"type": "VGGStyleDiscriminator", "num_feat": 8}
    with pytest.raises(OptionsError, match=r"network_d.input_size: .*128x128 images only.*gt_size gives 16"):
        parse_options(data)
    data = _options(tmp_path, hr_folder)
    data["network_d"]["num_in_ch"] = 4
    with pytest.raises(OptionsError, match="network_d.num_in_ch: 4, but network_g writes 3"):
        parse_options(data)
    data = _options(tmp_path, hr_folder)
    data["train"]["gan"] = {"type": "GANLoss", "gan_type": "hinge", "real_label": 0.9}
    with pytest.raises(OptionsError, match="hinge has no target labels"):
        parse_options(data)
    data = _options(tmp_path, hr_folder)
    data["train"]["gan"] = {"type": "L1Loss"}
    with pytest.raises(OptionsError, match="L1Loss is not an adversarial loss"):
        parse_options(data)
    data = _options(tmp_path, hr_folder)
    del data["network_d"]
    data["train"]["gan"]["gan_typo"] = "ragan"
    with pytest.raises(OptionsError) as err:
        parse_options(data)
    assert "network_d" in str(err.value) and "train.gan.gan_typo" in str(err.value)


def test_logged_names_and_saved_networks(tmp_path, hr_folder):
    data = _options(tmp_path, hr_folder, g_pretrain_steps=2, ema_update_after=3, ema_warmup=True,
                    train_metrics={"psnr": {"type": "calculate_psnr", "test_y_channel": False}},
                    scheduler_d={"type": "MultiStepLR", "milestones": [6], "gamma": 0.5})
    data["logger"]["use_tb_logger"] = True
    path = tmp_path / "gan.yml"
    path.write_text(yaml.safe_dump(data))
    exp = Path(train(path)["experiment_dir"])
    acc = EventAccumulator(str(next((exp / "tb_logger").rglob("events.out.tfevents.*")).parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"discriminator/adversarial_loss", "discriminator/D(y)_prob", "discriminator/D(G(x))_prob",
            "generator/content_loss", "generator/total_loss", "training/adv_loss_weight",
            "training/pretrain_phase", "train_metrics/l1", "train_metrics/psnr", "val_metrics/psnr",
            "lr_net_g", "lr_net_d", "EMA/enabled", "EMA/decay", "EMA/update_after_step", "EMA/use_num_updates",
            "EMA/is_active", "EMA/steps_until_activation", "EMA/last_decay", "EMA/num_updates"} <= tags
    pretrain = {e.step: e.value for e in acc.Scalars("training/pretrain_phase")}
    assert pretrain == {2: 1.0, 4: 0.0, 6: 0.0, 8: 0.0, 10: 0.0, 12: 0.0}
    assert {e.step: e.value for e in acc.Scalars("lr_net_d")} == pytest.approx(
        {2: 4e-3, 4: 4e-3, 6: 2e-3, 8: 2e-3, 10: 2e-3, 12: 2e-3})
    until = {e.step: e.value for e in acc.Scalars("EMA/steps_until_activation")}
    assert until[2] == 1.0 and until[4] == 0.0
    # warm-up decay min(0.9, (1 + n) / (10 + n)) with n updates before the latest (steps 3..12 update)
    assert {e.step: e.value for e in acc.Scalars("EMA/num_updates")}[12] == 10.0
    assert {e.step: e.value for e in acc.Scalars("EMA/last_decay")}[12] == pytest.approx(10 / 19)
    models = exp / "models"
    for label in ("net_g_12", "net_g_ema_12", "net_d_12", "net_g_best"):
        assert (models / f"{label}.safetensors").is_file()
    state = torch.load(exp / "training_states" / "12.state", weights_only=False)
    assert set(state["model"]["optimizers"]) == {"g", "d"} and set(state["model"]["schedulers"]) == {"d"}
    d = load_file(models / "net_d_12.safetensors")
    assert all(torch.equal(d[k], v) for k, v in state["model"]["nets"]["net_d"].items() if k in d)


def test_resume_in_the_adversarial_phase_is_bitwise(tmp_path, hr_folder):
    """12 iterations straight == 8, a resume from the state saved there, 4 more (pre-training ends at 3)."""
    data = _options(tmp_path, hr_folder, g_pretrain_steps=3, net_d_iters=2,
                    gan={"type": "GANLoss", "gan_type": "ragan", "real_label": 0.9,
                         "loss_weight": {"type": "cosine", "from": 3, "to": 10, "start": 0.0, "end": 0.05}},
                    scheduler_d={"type": "MultiStepLR", "milestones": [9], "gamma": 0.5})
    data["logger"]["save_checkpoint_freq"] = 4
    data["datasets"]["train"]["num_worker_per_gpu"] = 1
    path = tmp_path / "gan.yml"
    path.write_text(yaml.safe_dump(data))
    straight = Path(train(path, ["name=straight"])["experiment_dir"])
    half = Path(train(path, ["name=half"])["experiment_dir"])
    for n in (12,):
        (half / "training_states" / f"{n}.state").unlink()
    for label in ("net_g", "net_d", "net_g_ema"):
        (half / "models" / f"{label}_12.safetensors").unlink()
    # resume from 8 (the latest state left), in the middle of the adversarial ramp
    torch.manual_seed(1234)
    assert train(path, ["name=half"], auto_resume=True)["iter"] == 12
    for label in ("net_g", "net_d", "net_g_ema"):
        a = load_file(straight / "models" / f"{label}_12.safetensors")
        b = load_file(half / "models" / f"{label}_12.safetensors")
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), label
    d8, d12 = (load_file(half / "models" / f"net_d_{n}.safetensors") for n in (8, 12))
    assert any(not torch.equal(d8[k], d12[k]) for k in d8)


def test_load_options_from_file(tmp_path, hr_folder):
    path = tmp_path / "gan.yml"
    path.write_text(yaml.safe_dump(_options(tmp_path, hr_folder)))
    opt = load_options(path)
    assert opt.train.gan["gan_type"] == "ragan" and opt.train.net_d_iters == 1 and opt.path.strict_load_d


def test_two_process_gloo_gan_training(tmp_path, hr_folder):
    """Real two-process DDP: the discriminator's gradients are averaged in its own step only, and
    both networks, the PatchGAN's batch-norm statistics included, end identical on the two ranks."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.test_ddp import _free_port

    data = _options(tmp_path, hr_folder, g_pretrain_steps=2, net_d_iters=2)
    data["num_gpu"] = "auto"
    path = tmp_path / "gan.yml"
    path.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "train.py", "-opt", str(path), "-o", "train.total_iter=8", "-o", "val.val_freq=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = next((tmp_path / "exp" / "gan").glob("train_*.log")).read_text()
    assert "world size 2" in text and "weights identical on all 2 ranks: True" in text
    assert (tmp_path / "exp" / "gan" / "models" / "net_d_8.safetensors").is_file()
