"""Early stopping: the rule on a fake context, then real runs (a plateau stops, progress does not, resume)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from models.automations.early_stopping_automation import EarlyStopping
from tests.conftest import small_train_yaml
from train import train
from utils.options import OptionsError, load_options

NAME = "early_stopping"


class FakeCtx:
    """The part of TrainingContext early stopping uses; records stop requests and reports."""

    def __init__(self, metrics: dict[str, str] | None = None, sets: tuple[str, ...] = ("val",)) -> None:
        self.better = metrics if metrics is not None else {"psnr": "higher", "lpips": "lower"}
        datasets = {"train": {}, **{f"val_{i}": {"name": s} for i, s in enumerate(sets)}}
        self.opt = SimpleNamespace(source="opt.yml", datasets=datasets,
                                   val=SimpleNamespace(metrics=dict.fromkeys(self.better, {})))
        self.sets = sets
        self.iteration = 0
        self.stops: list[tuple[int, str]] = []
        self.reports: list[tuple[int, str, dict | None]] = []

    def default_monitor(self) -> tuple[str, str] | None:
        return (self.sets[0], next(iter(self.better))) if self.sets and self.better else None

    def metric_better(self, metric: str) -> str:
        return self.better[metric]

    def request_stop(self, reason: str) -> None:
        self.stops.append((self.iteration, reason))

    def report(self, source: str, message: str, scalars: dict[str, float] | None = None) -> None:
        self.reports.append((self.iteration, message, scalars))


def make(**kwargs: Any) -> EarlyStopping:
    automation = EarlyStopping(**kwargs)
    automation.name = NAME
    return automation


def feed(automation: EarlyStopping, ctx: FakeCtx, values: dict[int, float], metric: str = "psnr",
         dataset: str = "val") -> None:
    """Validations at the given iterations; stops once a stop was requested, as the loop does."""
    automation.on_train_start(ctx)
    for it, value in values.items():
        ctx.iteration = it
        automation.on_validation_end(ctx, {dataset: {metric: value}})
        if ctx.stops:
            return


# ------------------------------------------------------------------------------------ the rule


def test_stops_once_patience_iterations_pass_without_improvement():
    ctx = FakeCtx()
    automation = make(patience=300)
    # best 11 at 200; 300 and 400 are worse, 500 only equals it: 500 - 200 = 300 >= patience
    feed(automation, ctx, {100: 10.0, 200: 11.0, 300: 11.0, 400: 10.5, 500: 11.0, 600: 9.0})
    assert [it for it, _ in ctx.stops] == [500]
    reason = ctx.stops[0][1]
    assert "val/psnr" in reason and "best 11 " in reason and "iteration 200" in reason and "patience 300" in reason
    assert automation.state_dict() == {"monitor": "val/psnr", "best": 11.0, "best_iter": 200}
    assert ctx.reports[-1][2] == {f"automation/{NAME}/iterations_since_best": 300.0, f"automation/{NAME}/best": 11.0}


def test_a_metric_that_keeps_improving_is_never_stopped():
    ctx = FakeCtx()
    automation = make(patience=100)  # as short as the validation interval
    feed(automation, ctx, {it: 20.0 + it / 1e4 for it in range(100, 5001, 100)})
    assert ctx.stops == []
    assert automation.best_iter == 5000


def test_min_improvement_is_an_absolute_margin_that_must_be_exceeded():
    ctx = FakeCtx()
    automation = make(patience=200, min_improvement=0.5)
    # 10.5 gains exactly 0.5 (not more): no new best; 10.9 gains 0.9: best at 300; 11.3 and 11.39
    # gain 0.4 and 0.49 on it: no new best, and 500 - 300 = 200 >= patience
    feed(automation, ctx, {100: 10.0, 200: 10.5, 300: 10.9, 400: 11.3, 500: 11.39})
    assert [it for it, _ in ctx.stops] == [500]
    assert (automation.best, automation.best_iter) == (10.9, 300)


def test_min_iterations_delays_the_stop():
    ctx = FakeCtx()
    automation = make(patience=100, min_iterations=1000)
    feed(automation, ctx, {it: 30.0 for it in range(100, 2001, 100)})  # patience runs out at 200
    assert [it for it, _ in ctx.stops] == [1000]


def test_lower_is_better_metric_by_dataset_slash_metric():
    ctx = FakeCtx(sets=("val", "div2k"))
    automation = make(monitor="div2k/lpips", patience=200)
    # lower is better: 0.4 at 200 is the best; 0.45 is worse, 0.4 again only equals it
    feed(automation, ctx, {100: 0.5, 200: 0.4, 300: 0.45, 400: 0.4}, metric="lpips", dataset="div2k")
    assert [it for it, _ in ctx.stops] == [400]
    assert (automation.best, automation.best_iter) == (0.4, 200)


def test_a_nan_value_never_becomes_the_best():
    ctx = FakeCtx()
    automation = make(patience=200)
    feed(automation, ctx, {100: float("nan"), 200: float("nan")})
    assert automation.best is None
    assert [it for it, _ in ctx.stops] == [200]  # no finite value for 200 iterations from the start


def test_unknown_monitor_or_no_validation_is_a_clear_error_at_train_start():
    with pytest.raises(OptionsError, match=r"monitor: 'ssim' is not a validation metric; valid metric names: "
                       r"psnr, lpips"):
        make(monitor="ssim").on_train_start(FakeCtx())
    with pytest.raises(OptionsError, match=r"set among: val"):
        make(monitor="div2k/psnr").on_train_start(FakeCtx())
    with pytest.raises(OptionsError, match=r"early_stopping: early stopping watches a validation metric"):
        make().on_train_start(FakeCtx(metrics={}))


def test_state_round_trip_continues_the_same_way():
    values = {100: 1.0, 200: 2.0, 300: 1.5, 400: 1.9, 500: 1.0, 600: 1.2}
    straight_ctx = FakeCtx()
    feed(make(patience=350), straight_ctx, values)
    first = make(patience=350)
    feed(first, FakeCtx(), dict(list(values.items())[:3]))
    resumed, ctx = make(patience=350), FakeCtx()
    resumed.load_state_dict(first.state_dict())
    feed(resumed, ctx, dict(list(values.items())[3:]))
    assert ctx.stops == straight_ctx.stops and [it for it, _ in ctx.stops] == [600]


# ------------------------------------------------------------------------------------ real runs


def test_plateaued_run_stops_at_the_first_validation_past_patience(tmp_path, hr_folder):
    """LR 0: the weights and so the PSNR never change. Validations every 5: best at 5; at 10 it has
    waited 5 < 10; at 15, 15 - 5 = 10 >= patience: stop at 15 (of 100)."""
    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, ["train.total_iter=100", "train.optim_g.lr=0", "val.val_freq=5",
                          "train.training_automations={early_stopping: {patience: 10}}"])
    assert result["iter"] == 15
    assert result["stopped_early"]["iter"] == 15
    reason = result["stopped_early"]["reason"]
    assert "tinyval/psnr has not improved" in reason and "(iteration 5) for 10 iterations (patience 10)" in reason
    exp = Path(result["experiment_dir"])
    log = next(exp.glob("train_*.log")).read_text()
    assert f"stopping early at iteration 15: {reason}" in log
    assert (exp / "training_states" / "15.state").is_file()
    assert (exp / "models" / "net_g_best.safetensors").is_file()
    assert not (exp / "models" / "net_g_20.safetensors").exists()
    state = torch.load(exp / "training_states" / "15.state", weights_only=False)
    first = result["best"]["tinyval"]["psnr"]["value"]
    assert state["loop"]["automations"][NAME] == {"monitor": "tinyval/psnr", "best": first, "best_iter": 5}


def test_min_iterations_in_a_real_run(tmp_path, hr_folder):
    """The same plateau with min_iterations 0.2T = 20 of 100: patience runs out at 15, the stop waits for 20."""
    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, ["train.total_iter=100", "train.optim_g.lr=0", "val.val_freq=5",
                          "train.training_automations={early_stopping: {patience: 10, min_iterations: 0.2T}}"])
    assert result["stopped_early"]["iter"] == result["iter"] == 20


def test_improving_run_is_not_stopped(tmp_path, hr_folder):
    """A real run whose PSNR rises at every validation (5, 10, 15, 20) with patience = one interval."""
    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, ["val.val_freq=5", "datasets.val.num_worker_per_gpu=0",
                          "train.training_automations={early_stopping: {patience: 5}}"])
    assert result["iter"] == 20 and "stopped_early" not in result
    state = torch.load(Path(result["experiment_dir"]) / "training_states" / "20.state", weights_only=False)
    assert state["loop"]["automations"][NAME]["best_iter"] == 20


def test_resume_gives_identical_weights_and_state(tmp_path, hr_folder):
    """20 iterations straight == 10, a resume from the state at 10, 10 more (weights and automation state)."""
    path = small_train_yaml(tmp_path, hr_folder)
    opts = ["val.val_freq=5", "train.training_automations={early_stopping: {patience: 10}}"]
    straight = Path(train(path, ["name=straight", *opts])["experiment_dir"])
    half = Path(train(path, ["name=half", *opts])["experiment_dir"])
    (half / "training_states" / "20.state").unlink()
    torch.manual_seed(999)  # a resume must not depend on the caller's RNG
    assert train(path, ["name=half", *opts], auto_resume=True)["iter"] == 20
    from safetensors.torch import load_file

    for label in ("net_g_20", "net_g_ema_20"):
        a, b = (load_file(str(e / "models" / f"{label}.safetensors")) for e in (straight, half))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    s_state, r_state = (torch.load(e / "training_states" / "20.state", weights_only=False) for e in (straight, half))
    assert s_state["loop"]["automations"][NAME] == r_state["loop"]["automations"][NAME]
    assert s_state["loop"]["automations"][NAME]["best_iter"] == 20


def test_misspelt_key_names_the_path_and_the_fix(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    with pytest.raises(OptionsError) as err:
        load_options(path, ["train.training_automations={early_stopping: {patiense: 10}}"])
    assert "train.training_automations.early_stopping.patiense" in str(err.value)
    assert "did you mean 'patience'" in str(err.value)
    with pytest.raises(OptionsError, match=r"early_stopping.patience: Input should be greater than or equal to 1"):
        load_options(path, ["train.training_automations={early_stopping: {patience: 0}}"])
    opt = load_options(path, ["train.training_automations={early_stopping: {patience: 0.5T}}"])
    assert opt.train.training_automations["early_stopping"]["patience"] == 10  # 0.5 x total_iter 20
