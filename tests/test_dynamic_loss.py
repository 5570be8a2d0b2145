"""Dynamic loss weights: the update rule against hand-computed multipliers, the calibration on two
real datasets, bounds on a real run, resume equivalence, option checking."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from data.image_io import list_images, read_image
from models.automations import dynamic_loss_automation as dla
from models.automations.dynamic_loss_automation import DynamicLossAutomation
from tests.conftest import SHARED, small_train_yaml
from train import train
from utils.image_statistics import sample_statistics
from utils.options import OptionsError, load_options

NAME = "dynamic_loss_scheduling"
TWO_LOSSES = "train.losses=[{type: L1Loss, loss_weight: 1.0}, {type: GradientLoss, loss_weight: 0.5}]"


class FakeContext:
    """The part of TrainingContext the automation uses; losses are (label, type, scheduled weight)."""

    def __init__(self, losses: list[tuple[str, str, float]], files: list[str] | None = None) -> None:
        self.opt = SimpleNamespace(train=SimpleNamespace(losses=[{"type": t} for _, t, _ in losses]))
        self.weights = {label: w for label, _, w in losses}
        self.multipliers = dict.fromkeys(self.weights, 1.0)
        self.files = files or []
        self.reports: list[tuple[str, str, dict[str, float]]] = []
        self.iteration = 0

    def loss_labels(self) -> list[str]:
        return list(self.weights)

    def loss_log_key(self, label: str | None = None) -> str:
        return "losses/total" if label is None else f"losses/{label}"

    def loss_weight(self, label: str) -> float:
        return self.weights[label]

    def loss_multiplier(self, label: str) -> float:
        return self.multipliers[label]

    def set_loss_multiplier(self, label: str, value: float) -> None:
        self.multipliers[label] = value

    def train_files(self) -> list[str]:
        return self.files

    def read_train_image(self, path: str) -> np.ndarray:
        return read_image(path, keep_channels=True, as_float=False)

    def report(self, source: str, message: str, scalars: dict[str, float] | None = None) -> None:
        self.reports.append((source, message, dict(scalars or {})))


def _automation(**kwargs) -> DynamicLossAutomation:
    a = DynamicLossAutomation(**kwargs)
    a.name = NAME
    return a


# --------------------------------------------------------------------------- the update rule


@pytest.mark.parametrize("min_weight, max_weight", [(0.1, 10.0), (0.1, 1.0), (0.46, 10.0)])
def test_update_rule_against_hand_computed_multipliers(min_weight, max_weight):
    ctx = FakeContext([("l1", "L1Loss", 1.0), ("gradient", "GradientLoss", 0.5), ("ssim", "SSIMLoss", 0.0)])
    ctx.multipliers["ssim"] = 0.7  # weight 0 at these steps: must be left alone
    a = _automation(auto_calibrate=False, smoothing=0.5, adaptation_rate=0.5, min_weight=min_weight,
                    max_weight=max_weight)
    a.on_train_start(ctx)
    a.on_step_end(ctx, None)
    assert ctx.reports == [] and ctx.multipliers == {"l1": 1.0, "gradient": 1.0, "ssim": 0.7}
    # Logging step 1: e*L = 1*0.2, 0.5*0.4 -> shares 1/2, 1/2 become the targets: nothing moves.
    a.on_step_end(ctx, {"losses/l1": 0.2, "losses/gradient": 0.4, "losses/ssim": 0.3, "losses/total": 0.4})
    assert ctx.reports == [] and ctx.multipliers == {"l1": 1.0, "gradient": 1.0, "ssim": 0.7}
    assert a.targets == {"l1": 0.5, "gradient": 0.5}
    # Logging step 2: L_l1 = 0.5*0.2 + 0.5*0.1 = 0.15, L_grad = 0.4; parts 0.15, 0.2 -> shares 3/7, 4/7.
    a.on_step_end(ctx, {"losses/l1": 0.1, "losses/gradient": 0.4, "losses/ssim": 0.3, "losses/total": 0.3})
    m_l1, m_grad = math.sqrt(0.5 / (3 / 7)), math.sqrt(0.5 / (4 / 7))  # (tau/share) ** 0.5
    scale = 1.5 / (1.0 * m_l1 + 0.5 * m_grad)  # keep sum of effective weights = 1.0 + 0.5
    e_l1 = min(max(m_l1 * scale, min_weight), max_weight)  # 1.046745 unclamped
    e_grad = min(max(0.5 * m_grad * scale, min_weight), max_weight)  # 0.453253 unclamped
    assert ctx.multipliers["l1"] == pytest.approx(e_l1 / 1.0, rel=1e-12)
    assert ctx.multipliers["gradient"] == pytest.approx(e_grad / 0.5, rel=1e-12)
    assert ctx.multipliers["ssim"] == 0.7
    assert a.magnitudes == pytest.approx({"l1": 0.15, "gradient": 0.4})
    assert (max_weight == 1.0) == (ctx.multipliers["l1"] == 1.0)  # the clamp engaged exactly when due
    (source, _, scalars), = ctx.reports
    assert source == NAME and scalars == {"dynamic_weight/l1": ctx.multipliers["l1"],
                                          "dynamic_weight/gradient": ctx.multipliers["gradient"]}


def test_rate_one_reaches_the_targets_in_one_step():
    ctx = FakeContext([("a", "L1Loss", 1.0), ("b", "MSELoss", 2.0), ("c", "SSIMLoss", 1.0)])
    a = _automation(auto_calibrate=False, smoothing=0.0, adaptation_rate=1.0)
    a.targets = {"a": 0.5, "b": 0.25, "c": 0.25}
    a.on_step_end(ctx, {"losses/a": 0.1, "losses/b": 0.02, "losses/c": 0.3})
    got = dla.shares(ctx.weights, ctx.multipliers, {"a": 0.1, "b": 0.02, "c": 0.3})
    assert got == pytest.approx(a.targets, rel=1e-12)
    assert sum(ctx.weights[k] * ctx.multipliers[k] for k in "abc") == pytest.approx(4.0, rel=1e-12)


def test_calibrated_targets_rate_and_initial_multipliers_by_hand(monkeypatch):
    stats = {"texture_variance": 0.005, "edge_density": 0.3, "colour_variation": 0.06}
    calls = []
    monkeypatch.setattr(dla, "sample_statistics", lambda *args, **kw: calls.append(args) or dict(stats, complexity=0.9))
    ctx = FakeContext([("l1", "L1Loss", 1.0), ("mse", "MSELoss", 0.0), ("ssim", "SSIMLoss", 0.2),
                       ("gradient", "GradientLoss", 0.3)], files=["a.png", "b.png"])
    a = _automation(calibration_samples=7, calibration_crop=32, seed=5)
    a.on_train_start(ctx)
    assert calls == [(["a.png", "b.png"], 32, 7, 5)]
    # structure = (0.005/0.01 + 0.3/0.4) / 2 = 0.625 -> S = 0.1 + 0.4 * 0.625 = 0.35;
    # pixel terms (l1, mse) 0.65 / 2 each, structural (ssim, gradient) 0.35 / 2 each.
    assert a.targets == pytest.approx({"l1": 0.325, "mse": 0.325, "ssim": 0.175, "gradient": 0.175}, rel=1e-12)
    # complexity = (0.5 + 0.75 + 0.06/0.12) / 3 = 0.583333 -> r = 0.1 + 0.4 * 0.583333
    assert a.rate == pytest.approx(0.1 + 0.4 * 1.75 / 3, rel=1e-12)
    # Initial: active l1, ssim, gradient (mse has weight 0): e_i = tau_i / 0.675 * 1.5.
    assert ctx.multipliers == pytest.approx({"l1": 0.325 / 0.675 * 1.5, "mse": 1.0,
                                             "ssim": 0.175 / 0.675 * 1.5 / 0.2,
                                             "gradient": 0.175 / 0.675 * 1.5 / 0.3}, rel=1e-12)
    stats_report, weights_report = ctx.reports
    assert stats_report[2]["dynamic_loss/edge_density"] == 0.3
    assert weights_report[2]["dynamic_weight/ssim"] == ctx.multipliers["ssim"]
    # A resumed run (state loaded) does not measure again.
    b = _automation()
    b.load_state_dict(a.state_dict())
    b.on_train_start(FakeContext([("l1", "L1Loss", 1.0)], files=["a.png"]))
    assert len(calls) == 1 and b.state_dict() == a.state_dict()


def test_invalid_bounds_are_rejected():
    with pytest.raises(ValueError, match="min_weight <= max_weight"):
        DynamicLossAutomation(min_weight=2.0, max_weight=1.0)
    with pytest.raises(ValueError, match="smoothing"):
        DynamicLossAutomation(smoothing=1.0)


# --------------------------------------------------------------------------- real runs


def _copy(files: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, f in enumerate(files):
        shutil.copy(f, folder / f"{i:02d}_{f.name}")
    return folder


def _no_val(path: Path) -> Path:
    data = yaml.safe_load(path.read_text())
    del data["val"], data["datasets"]["val"]
    path.write_text(yaml.safe_dump(data))
    return path


def _scalars(exp: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(exp / "tb_logger")).Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def _state(exp: Path, iteration: int) -> dict:
    return torch.load(exp / "training_states" / f"{iteration}.state", weights_only=False)


def test_calibration_on_two_real_datasets(tmp_path):
    div2k = sorted((SHARED / "data" / "DIV2K_valid_256crop" / "HR").glob("*.png"))[:4]
    pixel = SHARED / "data" / "pixelart"
    tilemaps = [pixel / "kenney_tiny-town" / "Tilemap" / "tilemap_packed.png",
                pixel / "kenney_desert-shooter-pack_1.0" / "PNG" / "Interface" / "Tilemap" / "tilemap_packed.png",
                pixel / "kenney_desert-shooter-pack_1.0" / "PNG" / "Weapons" / "Tilemap" / "tilemap_packed.png"]
    if len(div2k) < 4 or not all(p.is_file() for p in tilemaps):
        pytest.skip("shared data missing")
    results = {}
    for label, files in (("photo", div2k), ("pixelart", tilemaps)):
        folder = _copy(files, tmp_path / label)
        path = _no_val(small_train_yaml(tmp_path, folder))
        exp = Path(train(path, [f"name={label}", "train.total_iter=2", "logger.use_tb_logger=true", TWO_LOSSES,
                                f"train.{NAME}={{enabled: true, auto_calibrate: true}}"])["experiment_dir"])
        state = _state(exp, 2)["loop"]["automations"][NAME]
        # The reported statistics are sample_statistics over the training files (64 crops of 96 px, seed 0).
        direct = sample_statistics(list_images(folder), 96, 64, 0)
        assert state["calibrated"] and state["statistics"] == {k: direct[k] for k in state["statistics"]}
        for key, value in state["statistics"].items():
            assert _scalars(exp, f"dynamic_loss/{key}")[0] == pytest.approx(value, rel=1e-6)
        # The documented rule, written out again.
        tv, ed, cv = (direct[k] for k in ("texture_variance", "edge_density", "colour_variation"))
        structure = (min(tv / 0.01, 1) + min(ed / 0.4, 1)) / 2
        s = 0.1 + 0.4 * structure
        rate = 0.1 + 0.4 * (min(tv / 0.01, 1) + min(ed / 0.4, 1) + min(cv / 0.12, 1)) / 3
        assert state["targets"] == pytest.approx({"l1": 1 - s, "gradient": s}, rel=1e-12)
        assert state["calibrated_rate"] == pytest.approx(rate, rel=1e-12)
        initial = {k: _scalars(exp, f"dynamic_weight/{k}")[0] for k in ("l1", "gradient")}
        assert initial == pytest.approx({"l1": (1 - s) * 1.5 / 1.0, "gradient": s * 1.5 / 0.5}, rel=1e-6)
        results[label] = (direct, s, rate)
    (photo, s_photo, r_photo), (art, s_art, r_art) = results["photo"], results["pixelart"]
    # Pixel-art tilemaps are all hard edges and flat areas: more edges, more local variance, less colour.
    assert art["edge_density"] > photo["edge_density"] + 0.2
    assert art["colour_variation"] < photo["colour_variation"]
    assert s_art > s_photo + 0.15 and r_art > r_photo + 0.05


def _run_overrides(name: str) -> list[str]:
    return [f"name={name}", TWO_LOSSES, "logger.print_freq=2", "logger.use_tb_logger=true",
            f"train.{NAME}={{min_weight: 0.45, max_weight: 1.0}}"]


def test_real_run_moves_weights_within_bounds_and_resumes_identically(tmp_path, hr_folder, monkeypatch):
    calls = []
    real = dla.sample_statistics
    monkeypatch.setattr(dla, "sample_statistics", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    path = small_train_yaml(tmp_path, hr_folder)
    straight = Path(train(path, _run_overrides("straight"))["experiment_dir"])
    # The multipliers move at every logging step after the calibration, and stay within the bounds.
    weights = {k: _scalars(straight, f"dynamic_weight/{k}") for k in ("l1", "gradient")}
    # reported at the calibration (0) and at logging steps while they change (not once both sit at a bound)
    assert sorted(weights["l1"])[:6] == [0, 2, 4, 6, 8, 10] and set(weights["l1"]) <= set(range(0, 21, 2))
    last = weights["l1"][max(weights["l1"])]
    assert last < 0.7 * weights["l1"][0]  # measurably moved (by more than 30 %)
    effective = [v * 1.0 for v in weights["l1"].values()] + [v * 0.5 for v in weights["gradient"].values()]
    assert all(0.45 - 1e-6 <= e <= 1.0 + 1e-6 for e in effective)
    assert min(effective) == pytest.approx(0.45) and max(effective) == pytest.approx(1.0)  # both bounds engaged
    # 10 iterations, a resume from the state at 10, 10 more == 20 straight, bit for bit.
    half = Path(train(path, _run_overrides("half"))["experiment_dir"])
    (half / "training_states" / "20.state").unlink()
    torch.manual_seed(999)
    assert train(path, _run_overrides("half"), auto_resume=True)["iter"] == 20
    assert len(calls) == 2  # calibrated once per fresh run, not on the resume
    for label in ("net_g", "net_g_ema"):
        a, b = (load_file(str(e / "models" / f"{label}_20.safetensors")) for e in (straight, half))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    s_state, r_state = _state(straight, 20), _state(half, 20)
    assert s_state["loop"]["automations"][NAME] == r_state["loop"]["automations"][NAME]
    assert s_state["model"]["loss_multipliers"] == r_state["model"]["loss_multipliers"]
    assert s_state["model"]["loss_multipliers"] != {"l1": 1.0, "gradient": 1.0}


def test_misspelt_option_names_the_key_and_suggests(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    with pytest.raises(OptionsError) as err:
        load_options(path, [f"train.{NAME}={{enabled: true, smothing: 0.5}}"])
    assert f"train.{NAME}.smothing" in str(err.value) and "did you mean 'smoothing'" in str(err.value)
    with pytest.raises(OptionsError, match=f"train.{NAME}.min_weight"):
        load_options(path, [f"train.{NAME}={{min_weight: -1}}"])
    opt = load_options(path, [f"train.training_automations.{NAME}={{max_weight: 3}}"])
    assert opt.train.training_automations[NAME]["max_weight"] == 3.0
