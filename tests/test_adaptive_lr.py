"""The LR multiplier automation: its rule on synthetic loss curves, one real run, resume, options."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from models.automations.adaptive_lr_automation import AdaptiveLR, fit_curve
from tests.conftest import small_train_yaml
from train import train
from utils.options import OptionsError, load_options

NAME = "intelligent_learning_rate_scheduler"


class FakeCtx:
    """What the automation uses of TrainingContext; records every multiplier it sets."""

    def __init__(self, total_iter: int = 10_000, warmup_iter: int = 0) -> None:
        self.total_iter = total_iter
        scheduler = {"type": "MultiStepLR", "milestones": [], "warmup_iter": warmup_iter}
        self.opt = SimpleNamespace(source="opt.yml", train=SimpleNamespace(scheduler=scheduler))
        self.optimizers = {"g": object()}
        self.iteration = 0
        self.calls: list[tuple[int, float]] = []
        self.reports: list[tuple[int, str, dict | None]] = []

    def loss_log_key(self, label: str | None = None) -> str:
        return "losses/total" if label is None else f"losses/{label}"

    def set_lr_multiplier(self, key: str, value: float) -> None:
        assert key == "g" and value > 0
        self.calls.append((self.iteration, value))

    def report(self, source: str, message: str, scalars: dict[str, float] | None = None) -> None:
        assert source == NAME
        self.reports.append((self.iteration, message, scalars))

    def switches(self) -> list[tuple[int, str]]:
        return [(it, msg) for it, msg, _ in self.reports if msg.startswith("strategy")]


def make(**kwargs: Any) -> AdaptiveLR:
    automation = AdaptiveLR(**kwargs)
    automation.name = NAME
    return automation


def run(automation: AdaptiveLR, ctx: FakeCtx, loss: Callable[[int], float], until: int, print_freq: int) -> None:
    """Steps ctx.iteration+1 .. until; ``losses/total`` handed over every ``print_freq`` steps only."""
    automation.on_train_start(ctx)
    for it in range(ctx.iteration + 1, until + 1):
        ctx.iteration = it
        automation.on_step_end(ctx, {"losses/total": loss(it)} if it % print_freq == 0 else None)


def values(calls: list[tuple[int, float]]) -> list[float]:
    return [m for _, m in calls]


# ------------------------------------------------------------------------------ the curve fit


def test_fit_curve_against_hand_values():
    # a line 1 - 0.002 i over i = 20..110: it falls 0.18, the mean is 0.87 -> drop 0.18 / 0.87, no noise
    drop, noise = fit_curve([(i, 1 - 0.002 * i) for i in range(20, 111, 10)])
    assert drop == pytest.approx(0.18 / 0.87) and noise == pytest.approx(0, abs=1e-12)
    # (0, 1), (1, 0), (2, 1): flat line at 2/3, residuals 1/3, -2/3, 1/3 -> RMS sqrt(2/9), / (2/3) = sqrt(1/2)
    drop, noise = fit_curve([(0, 1.0), (1, 0.0), (2, 1.0)])
    assert drop == pytest.approx(0, abs=1e-12) and noise == pytest.approx(math.sqrt(0.5))


# ------------------------------------------------------------------------------ fixed strategies


def test_cosine_follows_a_half_cosine_sampled_once_per_cooldown():
    """Decision start 100 (start), T = 1100, so f = (it - 100) / 1000 at the changes 200, 300, ..., 1100."""
    ctx = FakeCtx(total_iter=1100)
    run(make(strategy="cosine", start=100, cooldown=100, min_lr_factor=0.1), ctx, lambda it: 1.0, 1100, 100)
    assert [it for it, _ in ctx.calls] == list(range(200, 1101, 100))
    # 0.1 + 0.9 * (1 + cos(pi k / 10)) / 2, k = 1..10
    expected = [0.977975432, 0.914057647, 0.814503364, 0.689057647, 0.55,
                0.410942353, 0.285496636, 0.185942353, 0.122024568, 0.1]
    assert values(ctx.calls) == pytest.approx(expected, abs=1e-8)
    assert ctx.reports[-1][2] == {f"automation/{NAME}/lr_multiplier": pytest.approx(0.1)}


def test_exponential_reaches_min_lr_factor_at_total_iter():
    ctx = FakeCtx(total_iter=1100)
    run(make(strategy="exponential", start=100, cooldown=100, min_lr_factor=0.01), ctx, lambda it: 1.0, 1100, 100)
    m = dict(ctx.calls)
    # 0.01 ** ((it - 100) / 1000)
    assert m[200] == pytest.approx(0.630957344) and m[300] == pytest.approx(0.398107171)
    assert m[600] == pytest.approx(0.1) and m[1100] == pytest.approx(0.01)
    assert values(ctx.calls) == sorted(values(ctx.calls), reverse=True)


def test_plateau_on_a_flat_loss_reduces_every_patience_down_to_the_floor():
    """Flat loss from the decision start 100: best at 100, reductions at 400, 700, 1000 (0.125 clamped to 0.2)."""
    ctx = FakeCtx(total_iter=2000)
    run(make(strategy="plateau", start=100, patience=300, cooldown=100, factor=0.5, min_lr_factor=0.2),
        ctx, lambda it: 1.0, 2000, 100)
    assert ctx.calls == [(400, 0.5), (700, 0.25), (1000, 0.2)]
    assert "has not fallen 1.00% below 1 since iteration 100 (patience 300)" in ctx.reports[1][1]


def test_plateau_uses_the_smoothed_loss_and_the_relative_threshold():
    """Logs every 100 from 100: loss 1.0, then 0.5. Smoothing 0.5 gives s = 1, .75, .625, .5625, .53125,
    .515625, .5078125 (700), .50390625 (800), .501953125 (900), .5009765625, ... An improvement needs
    s < 0.99 * best: 200..700 qualify; 800 does not (.50390625 > .50273438 = .99 * .5078125); 900 does
    (.50195313 < .50273438); later s stays above .99 * .50195313 = .49693359. Patience 300: reductions at 1200
    and, the clock restarted, 1500."""
    ctx = FakeCtx(total_iter=1500)
    automation = make(strategy="plateau", start=100, patience=300, cooldown=100, smoothing=0.5, threshold=0.01)
    run(automation, ctx, lambda it: 1.0 if it <= 100 else 0.5, 1500, 100)
    assert ctx.calls == [(1200, 0.5), (1500, 0.25)]
    assert automation.best == 0.501953125
    assert automation.smoothed == pytest.approx(0.5 + 0.5 ** 15)


# ---------------------------------------------------------------------------------- adaptive

CURVES = {
    # first pick at 110 from the logs 20..110: drop 0.18 / 0.87 = 20.7 % >= 10 %
    "fast": (lambda it: 1 - 0.002 * it, "cosine", "drop 20.69% >= fast_threshold 10.00%"),
    # drop 0.045 / 0.9675 = 4.65 %: above threshold 1 % and the noise 0, below 10 %
    "steady": (lambda it: 1 - 0.0005 * it, "exponential", "drop 4.65% above the noise 0.00%"),
    "flat": (lambda it: 0.7, "plateau", "drop 0.00% <= max(threshold 1.00%, noise 0.00%)"),
    # the steady fall plus 0.2 * (+1, -1, ..., -1) over the 10 logs k = 0..9: the alternation's own
    # least-squares slope is -0.2 * 5 / 82.5 per log, so the line falls 0.045 + 9 * 0.2 * 5 / 82.5 = 0.15409,
    # drop 0.15409 / 0.9675 = 15.93 %; residual RMS 0.2 * sqrt((10 - 10 / 16.5 + 82.5 / 16.5**2) / 10)
    # = 0.19695, noise 20.36 %: the fall is within the noise
    "noisy": (lambda it: 1 - 0.0005 * it + 0.2 * (-1) ** (it // 10), "plateau", None),
}


@pytest.mark.parametrize("curve", list(CURVES))
def test_adaptive_picks_the_documented_strategy(curve):
    loss, strategy, why = CURVES[curve]
    ctx = FakeCtx()
    automation = make(window=100, cooldown=100, patience=1000)
    run(automation, ctx, loss, 150, 10)
    (it, message), = ctx.switches()
    assert it == 110 and message.startswith(f"strategy none -> {strategy} (")
    drop, noise = fit_curve([(i, loss(i)) for i in range(20, 111, 10)])
    assert why is None or why in message
    assert f"drop {drop:.2%}" in message and (strategy != "plateau" or drop <= max(0.01, noise))
    scalars = next(s for i, m, s in ctx.reports if m.startswith("strategy"))
    assert scalars == {f"automation/{NAME}/drop": drop, f"automation/{NAME}/noise": noise,
                       f"automation/{NAME}/strategy": {"cosine": 0.0, "exponential": 1.0, "plateau": 2.0}[strategy]}
    if curve == "noisy":
        assert drop == pytest.approx(0.15409 / 0.9675, abs=1e-5) and noise == pytest.approx(0.19695 / 0.9675, abs=1e-5)


def test_adaptive_reevaluates_at_most_every_cooldown_and_never_raises_the_lr():
    """Falling fast until 300, flat after: cosine at 110; the windows ending at 210 and 310 still fall;
    (310, 410] is flat: plateau at 410. The multiplier starts the plateau where the cosine left it."""
    ctx = FakeCtx(total_iter=2000)
    automation = make(window=100, cooldown=100, patience=200, min_lr_factor=0.05)
    run(automation, ctx, lambda it: 1 - 0.002 * min(it, 300), 2000, 10)
    assert [(it, msg.split(" (")[0]) for it, msg in ctx.switches()] == [
        (110, "strategy none -> cosine"), (410, "strategy cosine -> plateau")]
    steps = [it for it, _ in ctx.calls]
    assert all(b - a >= 100 for a, b in zip(steps, steps[1:]))
    ms = values(ctx.calls)
    assert ms == sorted(ms, reverse=True) and all(0.05 <= m <= 1.0 for m in ms)
    before = [m for it, m in ctx.calls if it <= 410][-1]
    assert [m for it, m in ctx.calls if it > 410][0] == pytest.approx(before * 0.5)  # plateau's first reduction


def test_multiplier_is_clamped_to_the_factors():
    """max_lr_factor 0.5: set at the decision start, and the cosine runs from 0.5 down to 0.1."""
    ctx = FakeCtx(total_iter=1100)
    run(make(strategy="cosine", start=100, cooldown=100, min_lr_factor=0.1, max_lr_factor=0.5),
        ctx, lambda it: 1.0, 1100, 100)
    assert ctx.calls[0] == (100, 0.5)
    assert dict(ctx.calls)[600] == pytest.approx(0.3)  # 0.1 + 0.4 * (1 + cos(pi / 2)) / 2
    assert all(0.1 <= m <= 0.5 for m in values(ctx.calls)) and ctx.calls[-1] == (1100, pytest.approx(0.1))
    with pytest.raises(ValueError, match="min_lr_factor"):
        make(min_lr_factor=0.5, max_lr_factor=0.4)


@pytest.mark.parametrize(("start", "first"), [(0, 500), (700, 700)])
def test_no_decision_during_the_schedulers_warmup_or_before_start(start, first):
    ctx = FakeCtx(total_iter=1500, warmup_iter=500)
    run(make(strategy="exponential", start=start, cooldown=100), ctx, lambda it: 1.0, 1500, 100)
    assert ctx.reports[0][:2] == (first, "decisions start with strategy exponential")
    assert ctx.calls[0] == (first + 100, pytest.approx(0.01 ** (100 / (1500 - first))))


def test_state_round_trip_continues_identically():
    loss = lambda it: 1 - 0.002 * min(it, 300) + 0.01 * math.sin(it)  # noqa: E731
    straight, ctx = make(window=100, cooldown=50, patience=100), FakeCtx(total_iter=800)
    run(straight, ctx, loss, 800, 10)
    first, ctx1 = make(window=100, cooldown=50, patience=100), FakeCtx(total_iter=800)
    run(first, ctx1, loss, 370, 10)
    resumed, ctx2 = make(window=100, cooldown=50, patience=100), FakeCtx(total_iter=800)
    resumed.load_state_dict(first.state_dict())
    ctx2.iteration = 370
    run(resumed, ctx2, loss, 800, 10)
    assert ctx1.calls + ctx2.calls == ctx.calls and len(ctx2.calls) > 0
    assert resumed.state_dict() == straight.state_dict()


# ---------------------------------------------------------------------------------- real runs


def test_real_run_lr_follows_the_exponential_rule(tmp_path, hr_folder):
    """Scheduler: warm-up 5, then 1e-3 halved at 10 (0.5T). Decisions from 5 (end of warm-up), every 5
    (cooldown, print_freq): m = 0.01 ** ((it - 5) / 15) set after the log at 10 and 15. Logged LR (the LR
    of the next step, logged before the step's hook): 5: 1e-3; 10: 5e-4; 15: 5e-4 * 0.01 ** (1/3);
    20: 5e-4 * 0.01 ** (2/3)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, ["logger.use_tb_logger=true", "train.scheduler.warmup_iter=5",
                          f"train.training_automations={{{NAME}: {{strategy: exponential, cooldown: 5}}}}"])
    acc = EventAccumulator(str(Path(result["experiment_dir"]) / "tb_logger")).Reload()
    lrs = {e.step: e.value for e in acc.Scalars("lr_net_g")}
    assert lrs == pytest.approx({5: 1e-3, 10: 5e-4, 15: 5e-4 * 0.215443469, 20: 5e-4 * 0.0464158883}, rel=1e-6)
    ms = {e.step: e.value for e in acc.Scalars(f"automation/{NAME}/lr_multiplier")}
    assert ms == pytest.approx({10: 0.215443469, 15: 0.0464158883, 20: 0.01}, rel=1e-6)
    state = torch.load(Path(result["experiment_dir"]) / "training_states" / "20.state", weights_only=False)
    assert state["model"]["optimizers"]["g"]["param_groups"][0]["lr_scale"] == pytest.approx(0.01)


def test_resume_gives_identical_weights_and_state(tmp_path, hr_folder):
    """20 iterations straight == 10, resume, 10 more; adaptive, logging every 2 steps, switches strategies."""
    path = small_train_yaml(tmp_path, hr_folder)
    opts = ["logger.print_freq=2",
            f"train.training_automations={{{NAME}: {{window: 6, cooldown: 2, patience: 3}}}}"]
    straight = Path(train(path, ["name=straight", *opts])["experiment_dir"])
    half = Path(train(path, ["name=half", *opts])["experiment_dir"])
    (half / "training_states" / "20.state").unlink()
    torch.manual_seed(999)
    assert train(path, ["name=half", *opts], auto_resume=True)["iter"] == 20
    from safetensors.torch import load_file

    for label in ("net_g_20", "net_g_ema_20"):
        a, b = (load_file(str(e / "models" / f"{label}.safetensors")) for e in (straight, half))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    s_state, r_state = (torch.load(e / "training_states" / "20.state", weights_only=False) for e in (straight, half))
    saved = s_state["loop"]["automations"][NAME]
    assert saved == r_state["loop"]["automations"][NAME]
    assert saved["active"] is not None and saved["m"] < 1.0  # it did act
    assert s_state["model"]["optimizers"]["g"]["param_groups"] == r_state["model"]["optimizers"]["g"]["param_groups"]


def test_misspelt_key_and_bad_strategy_are_option_errors(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    with pytest.raises(OptionsError) as err:
        load_options(path, [f"train.training_automations={{{NAME}: {{stratgy: cosine}}}}"])
    assert f"train.training_automations.{NAME}.stratgy" in str(err.value)
    assert "did you mean 'strategy'" in str(err.value)
    with pytest.raises(OptionsError, match=rf"{NAME}.strategy: Input should be 'adaptive', 'cosine', 'exponential' "
                       "or 'plateau'"):
        load_options(path, [f"train.training_automations={{{NAME}: {{strategy: linear}}}}"])
