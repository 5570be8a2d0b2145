"""SWA: the running mean against hand values, validation/promotion, the final file, resume, options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from models.automations.swa_automation import SWA
from tests.conftest import small_train_yaml
from train import train
from utils.options import OptionsError, load_options


def tiny_net() -> nn.Module:
    # float parameters, float buffers (running stats) and an integer buffer (num_batches_tracked)
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def set_weights(net: nn.Module, value: float) -> None:
    """Every float tensor = value + its position in the state (so tensors differ); integers = value."""
    with torch.no_grad():
        for index, t in enumerate(net.state_dict().values()):
            t.fill_(value + index if t.is_floating_point() else int(value))


class FakeCtx:
    """Live and EMA networks with weights set per iteration; records validations, proposals, saves."""

    def __init__(self, ema: bool = True, swa_metrics: dict | None = None) -> None:
        self.live, self.ema = tiny_net(), tiny_net() if ema else None
        self.nets = {"net_g": self.live}
        self.iteration = 0
        self.swa_metrics = swa_metrics or {"val": {"psnr": 30.5}}
        self.validated: list[int] = []
        self.proposed: list[tuple[int, dict, str]] = []
        self.saved: list[tuple[str, dict[str, torch.Tensor], dict]] = []
        self.reports: list[tuple[int, str, dict | None]] = []

    def eval_net(self) -> nn.Module:
        return self.ema if self.ema is not None else self.live

    def validate(self, net: nn.Module) -> dict:
        self.validated.append(self.iteration)
        return self.swa_metrics

    def propose_best(self, net: nn.Module, metrics: dict, source: str) -> bool:
        self.proposed.append((self.iteration, metrics, source))
        return True

    def save_weights(self, label: str, net: nn.Module, metadata: dict | None = None) -> None:
        self.saved.append((label, {k: v.clone() for k, v in net.state_dict().items()}, metadata))

    def report(self, source: str, message: str, scalars: dict[str, float] | None = None) -> None:
        assert source == "swa"
        self.reports.append((self.iteration, message, scalars))


def make(**kwargs: Any) -> SWA:
    automation = SWA(**kwargs)
    automation.name = "swa"
    return automation


def steps(automation: SWA, ctx: FakeCtx, until: int, live: Any, ema: Any) -> None:
    """Steps ctx.iteration+1 .. until with the weights ``live(it)`` / ``ema(it)`` after each step."""
    for it in range(ctx.iteration + 1, until + 1):
        ctx.iteration = it
        set_weights(ctx.live, live(it))
        if ctx.ema is not None:
            set_weights(ctx.ema, ema(it))
        automation.on_step_end(ctx, None)


def square(it: int) -> float:
    return float(it * it)


def other(it: int) -> float:
    return -1000.0


# ------------------------------------------------------------------------------------ the average


@pytest.mark.parametrize("average", ["ema", "live"])
def test_average_is_the_mean_of_the_snapshots(average):
    """start 3, every 2, to 9: snapshots at 3, 5, 7, 9 of w = it^2 -> (9 + 25 + 49 + 81) / 4 = 41
    (plus each tensor's offset); integer buffers hold the last snapshot's 81. The other weights (-1000)
    must not leak in."""
    ctx = FakeCtx()
    automation = make(start=3, update_every=2, average=average)
    automation.on_train_start(ctx)
    live, ema = (square, other) if average == "live" else (other, square)
    steps(automation, ctx, 9, live, ema)
    assert (automation.count, automation.first, automation.last) == (4, 3, 9)
    for index, (key, t) in enumerate(automation.net.state_dict().items()):
        expected = 81 if key.endswith("num_batches_tracked") else 41.0 + index
        assert torch.equal(t, torch.full_like(t, expected)), key


def test_without_ema_the_live_weights_are_averaged_and_the_log_says_so():
    ctx = FakeCtx(ema=False)
    automation = make(start=1, update_every=3)  # average: ema by default
    automation.on_train_start(ctx)
    steps(automation, ctx, 7, square, other)  # snapshots 1, 4, 7: (1 + 16 + 49) / 3 = 22
    assert "no EMA" in ctx.reports[0][1] and automation.source == "live"
    weight = automation.net[0].weight
    assert torch.allclose(weight, torch.full_like(weight, 22.0), rtol=1e-6)


def test_validation_compares_reports_and_proposes_the_average():
    ctx = FakeCtx(swa_metrics={"val": {"psnr": 30.5}})
    automation = make(start=4)
    automation.on_train_start(ctx)
    steps(automation, ctx, 3, square, square)
    automation.on_validation_end(ctx, {"val": {"psnr": 30.0}})
    assert ctx.validated == [] and ctx.proposed == []  # nothing averaged yet: nothing to validate
    steps(automation, ctx, 6, square, square)
    automation.on_validation_end(ctx, {"val": {"psnr": 30.0}})
    assert ctx.validated == [6]
    assert ctx.proposed == [(6, {"val": {"psnr": 30.5}}, "swa")]
    iteration, message, scalars = ctx.reports[-1]
    assert "SWA 30.5000 vs EMA 30.0000 (+0.5000)" in message
    assert scalars == {"automation/swa/count": 3.0, "automation/swa/psnr": 30.5, "automation/swa/psnr_vs_ema": 0.5}


def test_train_end_writes_the_final_average_with_metadata():
    ctx = FakeCtx()
    automation = make(start=2, update_every=4)
    automation.on_train_start(ctx)
    automation.on_train_end(ctx)
    assert ctx.saved == [] and "no snapshot was taken" in ctx.reports[-1][1]
    steps(automation, ctx, 10, other, square)  # snapshots 2, 6, 10: (4 + 36 + 100) / 3
    automation.on_validation_end(ctx, {"val": {"psnr": 31.0}})
    automation.on_train_end(ctx)
    (label, weights, meta), = ctx.saved
    assert label == "net_g_swa_final"
    assert meta == {"iter": "10", "swa_count": "3", "swa_first": "2", "swa_last": "10", "swa_source": "ema",
                    "swa_start": "2", "swa_update_every": "4"}
    assert torch.allclose(weights["0.weight"], torch.full((2, 2), 140.0 / 3), rtol=1e-6)
    assert "SWA 30.5000 vs EMA 31.0000 (-0.5000)" in ctx.reports[-1][1]


def test_state_round_trip_continues_bitwise():
    weights = lambda it: it * 0.37 + 1 / it  # noqa: E731 - values whose running mean rounds
    straight, ctx = make(start=2, update_every=1), FakeCtx()
    straight.on_train_start(ctx)
    steps(straight, ctx, 12, other, weights)
    first, ctx1 = make(start=2, update_every=1), FakeCtx()
    first.on_train_start(ctx1)
    steps(first, ctx1, 6, other, weights)
    state = first.state_dict()
    resumed, ctx2 = make(start=2, update_every=1), FakeCtx()
    resumed.load_state_dict(state)  # the loop loads the state before on_train_start
    resumed.on_train_start(ctx2)
    ctx2.iteration = 6
    steps(resumed, ctx2, 12, other, weights)
    a, b = straight.state_dict(), resumed.state_dict()
    assert (a["count"], a["first"], a["last"]) == (b["count"], b["first"], b["last"]) == (11, 2, 12)
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


# ------------------------------------------------------------------------------------ real runs


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def _scalars(exp: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return {e.step: e.value for e in EventAccumulator(str(exp / "tb_logger")).Reload().Scalars(tag)}


def _expected_best(ema: dict[int, float], swa: dict[int, float]) -> tuple[str, int, float]:
    """Replay the proposals of each validation in order: the EMA's, then SWA's; the best must beat
    the best so far (a tie keeps the old one)."""
    best: tuple[str, int, float] | None = None
    for it in sorted(ema):
        for source, value in (("ema", ema[it]), ("swa", swa.get(it))):
            if value is not None and (best is None or value > best[2]):
                best = (source, it, value)
    return best


def _check_best(exp: Path) -> tuple[str, int, float]:
    source, it, value = _expected_best(_scalars(exp, "val_metrics/psnr"), _scalars(exp, "automation/swa/psnr"))
    meta = _metadata(exp / "models" / "net_g_best.safetensors")
    assert meta["swa_promoted"] == ("true" if source == "swa" else "false")
    assert (meta["source"], meta["iter"]) == (source, str(it))
    assert float(meta["psnr"]) == pytest.approx(value, abs=1e-4)  # TensorBoard keeps float32
    return source, it, value


def test_final_average_equals_the_mean_of_the_ema_checkpoints(tmp_path, hr_folder):
    """Snapshots of the EMA at 10, 15 and 20, each also saved as net_g_ema_<it> by the checkpoints."""
    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, ["logger.use_tb_logger=true", "val.val_freq=5", "logger.save_checkpoint_freq=5",
                          "train.swa={start: 0.5T, update_every: 5, average: ema}"])
    exp = Path(result["experiment_dir"])
    ema = [load_file(str(exp / "models" / f"net_g_ema_{it}.safetensors")) for it in (10, 15, 20)]
    swa = load_file(str(exp / "models" / "net_g_swa_final.safetensors"))
    assert swa.keys() == ema[0].keys()
    for key in swa:
        torch.testing.assert_close(swa[key], (ema[0][key] + ema[1][key] + ema[2][key]) / 3, rtol=1e-5, atol=1e-7)
    meta = _metadata(exp / "models" / "net_g_swa_final.safetensors")
    assert {k: meta[k] for k in ("swa_count", "swa_first", "swa_last", "swa_source")} == {
        "swa_count": "3", "swa_first": "10", "swa_last": "20", "swa_source": "ema"}
    assert sorted(_scalars(exp, "automation/swa/psnr")) == [10, 15, 20]  # validated once it holds a model
    # at 10 the average is the EMA itself (a tie: not promoted); later it lags behind the improving EMA
    assert _check_best(exp)[0] == "ema"
    log = next(exp.glob("train_*.log")).read_text()
    assert "final average of 3 snapshots (iterations 10..20) saved as net_g_swa_final: tinyval psnr: SWA" in log


def test_an_average_that_beats_the_best_is_promoted(tmp_path, hr_folder):
    """EMA decay 0.999 keeps the EMA near the initial weights; the average of the live weights beats it."""
    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, ["logger.use_tb_logger=true", "val.val_freq=5", "train.ema_decay=0.999",
                          "train.swa={start: 1, average: live}"])
    exp = Path(result["experiment_dir"])
    assert _check_best(exp)[:2] == ("swa", 20)
    best = load_file(str(exp / "models" / "net_g_best.safetensors"))
    final = load_file(str(exp / "models" / "net_g_swa_final.safetensors"))
    assert all(torch.equal(best[k], final[k]) for k in final)
    assert _metadata(exp / "models" / "net_g_swa_final.safetensors")["swa_count"] == "20"


def test_resume_gives_identical_weights_and_state(tmp_path, hr_folder):
    """20 iterations straight == 10, resume, 10 more: snapshots at 5, 7, ..., 19 span the resume."""
    path = small_train_yaml(tmp_path, hr_folder)
    opts = ["train.swa={start: 5, update_every: 2}"]
    straight = Path(train(path, ["name=straight", *opts])["experiment_dir"])
    half = Path(train(path, ["name=half", *opts])["experiment_dir"])
    (half / "training_states" / "20.state").unlink()
    torch.manual_seed(999)
    assert train(path, ["name=half", *opts], auto_resume=True)["iter"] == 20
    for label in ("net_g_20", "net_g_ema_20", "net_g_swa_final"):
        a, b = (load_file(str(e / "models" / f"{label}.safetensors")) for e in (straight, half))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), label
    s, r = (torch.load(e / "training_states" / "20.state", weights_only=False)["loop"]["automations"]["swa"]
            for e in (straight, half))
    assert (s["count"], s["first"], s["last"]) == (r["count"], r["first"], r["last"]) == (8, 5, 19)
    assert s["weights"].keys() == r["weights"].keys()
    assert all(torch.equal(s["weights"][k], r["weights"][k]) for k in s["weights"])


def test_options_misspelt_key_fraction_and_bounds(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    with pytest.raises(OptionsError) as err:
        load_options(path, ["train.swa={start: 10, update_evry: 5}"])
    assert "train.swa.update_evry" in str(err.value) and "did you mean 'update_every'" in str(err.value)
    with pytest.raises(OptionsError) as err:
        load_options(path, ["train.swa={update_every: 0, average: mean}"])
    text = str(err.value)
    assert "train.swa.start: required by swa but missing" in text
    assert "train.swa.update_every: Input should be greater than or equal to 1" in text
    assert "train.swa.average: Input should be 'ema' or 'live'" in text
    opt = load_options(path, ["train.swa={start: 0.8T, update_every: 10, average: ema}"])
    assert opt.train.swa["start"] == 16  # 0.8 x total_iter 20
