"""VRAM batch sizing: the search with fake probes, the CUDA path with a simulated allocator, the
out-of-memory back-off, the CPU run, the state and the options."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from models.automations import vram_batch_automation as vba
from models.automations.vram_batch_automation import VramBatchAutomation, largest_fitting, lr_factor
from tests.conftest import small_train_yaml
from train import train
from utils.options import OptionsError, load_options

NAME = "dynamic_batch_size_optimizer"
GIB = 2**30


def _recording(threshold: int) -> tuple[list[int], Callable[[int], bool]]:
    probes: list[int] = []

    def fits(b: int) -> bool:
        probes.append(b)
        return b <= threshold

    return probes, fits


# ---------------------------------------------------------------------------- the search


@pytest.mark.parametrize("threshold, start, lo, hi, answer, sequence", [
    # grow 4..32, 64 fails, bisect (32, 64): 48 x, 40 x, 36 ok, 38 x, 37 ok
    (37, 4, 1, 1000, 37, [4, 8, 16, 32, 64, 48, 40, 36, 38, 37]),
    # the start does not fit: halve 16 -> 8 -> 4 -> 2 (fits), bisect (2, 4): 3
    (3, 16, 1, 1000, 3, [16, 8, 4, 2, 3]),
    # the cap fits: stop there
    (1000, 4, 1, 50, 50, [4, 8, 16, 32, 50]),
    # nothing fits, down to lo
    (0, 8, 2, 100, None, [8, 4, 2]),
    # only lo fits
    (2, 8, 2, 100, 2, [8, 4, 2, 3]),
    # a start above hi is clipped to hi
    (10, 500, 1, 40, 10, [40, 20, 10, 15, 12, 11]),
])
def test_largest_fitting_against_hand_derived_probes(threshold, start, lo, hi, answer, sequence):
    probes, fits = _recording(threshold)
    assert largest_fitting(fits, start, lo, hi) == answer
    assert probes == sequence


def test_largest_fitting_matches_brute_force_with_few_probes():
    hi = 128
    bound = 2 * math.ceil(math.log2(hi)) + 2
    for lo in (1, 3):
        for start in (1, 5, 16, 100, 128):
            for threshold in range(0, 140):
                probes, fits = _recording(threshold)
                expected = min(threshold, hi) if threshold >= lo else None
                assert largest_fitting(fits, start, lo, hi) == expected, (lo, start, threshold)
                assert len(probes) == len(set(probes)) and len(probes) <= bound, (lo, start, threshold, probes)


def test_out_of_memory_counts_as_not_fitting_and_other_errors_propagate():
    probes: list[int] = []
    cleanups: list[int] = []

    def fits(b: int) -> bool:
        probes.append(b)
        if b > 20:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory at {b}")
        return True

    assert largest_fitting(fits, 4, 1, 100, on_oom=lambda: cleanups.append(probes[-1])) == 20
    assert probes == [4, 8, 16, 32, 24, 20, 22, 21]
    assert cleanups == [32, 24, 22, 21]  # one cleanup per out-of-memory probe

    def broken(b: int) -> bool:
        raise RuntimeError("cuDNN error: not an out-of-memory")

    with pytest.raises(RuntimeError, match="cuDNN"):
        largest_fitting(broken, 4, 1, 100)
    with pytest.raises(ValueError, match="lo <= hi"):
        largest_fitting(broken, 4, 8, 4)


def test_lr_factor_rules():
    assert lr_factor("linear", 24, 8) == 3.0
    assert lr_factor("sqrt", 32, 8) == 2.0
    assert lr_factor("none", 32, 8) == 1.0


# ------------------------------------------------------------------ CUDA path, simulated


class FakeContext:
    """What the automation uses of TrainingContext, with a batch size and LR multipliers."""

    def __init__(self, batch: int, device: str = "cuda", files: int = 100, memory: FakeMemory | None = None):
        self.device = torch.device(device)
        self.batch = batch
        self.lr = {"g": 1.0}
        self.optimizers = {"g": object()}
        self.files = [f"img{i}.png" for i in range(files)]
        self.opt = SimpleNamespace(datasets={"train": {"dataset_enlarge_ratio": 1}})
        self.memory = memory
        self.trials: list[int] = []
        self.set_calls: list[tuple[str, int]] = []
        self.releases = 0
        self.reports: list[tuple[str, str, dict[str, float]]] = []

    def data_value(self, name: str) -> int:
        assert name == "batch_size"
        return self.batch

    def set_data(self, name: str, value: int) -> None:
        self.set_calls.append((name, value))
        self.batch = value

    def lr_multiplier(self, key: str) -> float:
        return self.lr[key]

    def set_lr_multiplier(self, key: str, value: float) -> None:
        self.lr[key] = value

    def train_files(self) -> list[str]:
        return self.files

    def trial_step(self, batch: int) -> None:
        self.trials.append(batch)
        self.memory.step(batch)

    def release_memory(self) -> None:
        self.releases += 1

    def report(self, source: str, message: str, scalars: dict[str, float] | None = None) -> None:
        self.reports.append((source, message, dict(scalars or {})))


class FakeMemory:
    """A step of batch b reserves 1 GiB + b/4 GiB of a 10 GiB card; beyond 10 GiB it runs out."""

    total = 10 * GIB

    def __init__(self) -> None:
        self.peak = 0

    def step(self, batch: int) -> None:
        need = GIB + batch * GIB // 4
        self.peak = max(self.peak, min(need, self.total))
        if need > self.total:
            raise torch.cuda.OutOfMemoryError(f"tried to allocate {need}")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: setattr(self, "peak", 0))
        monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: self.peak)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(
            total_memory=self.total))


def _automation(**kwargs) -> VramBatchAutomation:
    a = VramBatchAutomation(**kwargs)
    a.name = NAME
    return a


@pytest.mark.parametrize("kwargs, files, answer, trials, factor", [
    # limit 8.5 GiB -> b <= 30: 8, 16 fit, 32 does not, bisect 24, 28, 30 fit, 31 does not
    ({}, 100, 30, [8, 16, 32, 24, 28, 30, 31], math.sqrt(30 / 8)),
    # the whole card: b <= 36 fits, above it runs out of memory (cleaned up, not fatal)
    ({"target_vram_usage": 1.0, "lr_scaling": "linear"}, 100, 36, [8, 16, 32, 64, 48, 40, 36, 38, 37], 36 / 8),
    ({"max_batch_size": 20, "lr_scaling": "none"}, 100, 20, [8, 16, 20], 1.0),
    ({}, 12, 12, [8, 12], math.sqrt(12 / 8)),  # 12 images: no batch larger than an epoch
])
def test_cuda_probe_with_simulated_memory(monkeypatch, kwargs, files, answer, trials, factor):
    memory = FakeMemory()
    memory.install(monkeypatch)
    ctx = FakeContext(8, files=files, memory=memory)
    a = _automation(**kwargs)
    a.on_train_start(ctx)
    assert ctx.trials == trials
    assert ctx.batch == answer and ctx.set_calls == [("batch_size", answer)]
    assert ctx.lr["g"] == pytest.approx(factor, rel=1e-12)
    assert ctx.releases >= len(trials)  # memory freed before every probe
    (source, message, scalars), = ctx.reports
    assert source == NAME and f"batch size 8 -> {answer}" in message
    assert scalars["vram_batch/batch_size"] == answer and scalars["vram_batch/lr_factor"] == pytest.approx(factor)
    assert scalars["vram_batch/peak_reserved_gb"] == pytest.approx(1 + answer / 4)
    state = a.state_dict()
    assert state["probed"] and answer in state["fitting"] and all(b > answer for b in state["failing"])
    # A resumed run keeps the batch from the data state and probes nothing.
    b = _automation(**kwargs)
    b.load_state_dict(state)
    resumed = FakeContext(answer, files=files, memory=memory)
    b.on_train_start(resumed)
    assert resumed.trials == [] and resumed.set_calls == [] and resumed.lr["g"] == 1.0 and resumed.reports == []
    assert b.state_dict() == state


def test_ddp_takes_the_smallest_batch_of_all_ranks(monkeypatch):
    memory = FakeMemory()
    memory.install(monkeypatch)
    # Rank 0 is this process; the other rank agrees with every probe but ends at 20.
    monkeypatch.setattr(vba.dist, "all_gather_objects", lambda obj: [obj, obj if isinstance(obj, bool) else 20])
    monkeypatch.setattr(vba.dist, "get_world_size", lambda: 2)
    ctx = FakeContext(8, files=100, memory=memory)  # 50 samples per rank and epoch
    _automation().on_train_start(ctx)
    assert ctx.batch == 20 and ctx.lr["g"] == pytest.approx(math.sqrt(20 / 8))


# ------------------------------------------------------------------------ out of memory


def test_out_of_memory_backs_off_then_gives_up_at_min_batch_size():
    a = _automation(lr_scaling="linear", min_batch_size=4)
    a.load_state_dict({"probed": True, "fitting": [8], "failing": [], "peaks_gb": {}})
    ctx = FakeContext(16, device="cpu")
    error = torch.cuda.OutOfMemoryError("out of memory")
    assert a.on_out_of_memory(ctx, error)  # 16 -> 8, the largest batch known to fit
    assert (ctx.batch, ctx.lr["g"]) == (8, 0.5)
    assert a.on_out_of_memory(ctx, error)  # 8 -> 6 = 3/4 of 8 (nothing known below)
    assert (ctx.batch, ctx.lr["g"]) == (6, 0.5 * 6 / 8)
    assert a.on_out_of_memory(ctx, error)  # 6 -> max(4, 4)
    assert (ctx.batch, ctx.lr["g"]) == (4, 0.5 * 6 / 8 * 4 / 6)
    assert not a.on_out_of_memory(ctx, error)  # at min_batch_size: not handled, nothing changed
    assert (ctx.batch, ctx.lr["g"]) == (4, 0.25)
    assert ctx.set_calls == [("batch_size", 8), ("batch_size", 6), ("batch_size", 4)]
    assert a.state_dict()["failing"] == [6, 8, 16] and a.state_dict()["fitting"] == []
    assert [r[2].get("vram_batch/batch_size") for r in ctx.reports] == [8, 6, 4, None]


def test_out_of_memory_sqrt_rule_and_state_round_trip():
    a = _automation(min_batch_size=2)
    a.load_state_dict({"probed": True, "fitting": [2, 5, 9], "failing": [12], "peaks_gb": {"9": 7.5}})
    ctx = FakeContext(9, device="cpu")
    assert a.on_out_of_memory(ctx, RuntimeError())
    assert ctx.batch == 5 and ctx.lr["g"] == pytest.approx(math.sqrt(5 / 9))
    state = a.state_dict()
    assert state == {"probed": True, "fitting": [2, 5], "failing": [9, 12], "peaks_gb": {9: 7.5}}
    b = _automation()
    b.load_state_dict(state)
    assert b.state_dict() == state


# ------------------------------------------------------------------------------ real CPU run


def test_cpu_run_reports_cuda_only_and_keeps_the_batch(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, ["train.total_iter=4", "val.val_freq=4", f"train.training_automations.{NAME}={{}}"])
    exp = Path(result["experiment_dir"])
    log = "".join(p.read_text() for p in exp.glob("train_*.log"))
    assert log.count(f"[{NAME}] iter 0: measures CUDA memory only; on cpu the batch size stays 2") == 1
    state = torch.load(exp / "training_states" / "4.state", weights_only=False)
    # 4 steps of the configured 2 samples from a 3-batch epoch of 6 images, no override
    assert state["data"] == {"epoch": 1, "position": 2, "batches": 4, "overrides": {}}
    assert state["loop"]["automations"][NAME] == {"probed": False, "fitting": [], "failing": [], "peaks_gb": {}}
    assert all(g.get("lr_scale", 1.0) == 1.0 for g in state["model"]["optimizers"]["g"]["param_groups"])


def test_misspelt_option_names_the_key_and_suggests(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    key = f"train.training_automations.{NAME}"
    with pytest.raises(OptionsError) as err:
        load_options(path, [f"{key}={{enabled: true, target_vram_usag: 0.8}}"])
    assert f"{key}.target_vram_usag" in str(err.value) and "did you mean 'target_vram_usage'" in str(err.value)
    with pytest.raises(OptionsError, match=f"{key}.target_vram_usage"):
        load_options(path, [f"{key}={{target_vram_usage: 1.5}}"])
    with pytest.raises(OptionsError, match=f"{key}.lr_scaling"):
        load_options(path, [f"{key}={{lr_scaling: cubic}}"])
    opt = load_options(path, [f"{key}={{max_batch_size: 64}}"])
    assert opt.train.training_automations[NAME]["max_batch_size"] == 64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_probe_takes_the_largest_batch_under_the_budget(tmp_path, hr_folder):
    """On a GPU: a budget of 512 MiB; the batch taken fits it and the next larger batch was measured
    over it; training then runs with that batch and the scaled LR."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    total = torch.cuda.get_device_properties(0).total_memory
    target = 512 * 2**20 / total
    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, ["device=cuda", "train.total_iter=4", "val.val_freq=4", "logger.print_freq=4",
                          "logger.use_tb_logger=true", "datasets.train.gt_size=32",
                          "datasets.train.dataset_enlarge_ratio=1000", "network_g.num_feat=64",
                          "network_g.num_block=4",
                          f"train.training_automations.{NAME}={{target_vram_usage: {target}}}"])
    exp = Path(result["experiment_dir"])
    state = torch.load(exp / "training_states" / "4.state", weights_only=False)
    auto = state["loop"]["automations"][NAME]
    chosen = state["data"]["overrides"]["batch_size"]
    limit = target * total / 2**30
    assert auto["probed"] and chosen in auto["fitting"] and chosen > 2
    assert auto["peaks_gb"][chosen] <= limit < auto["peaks_gb"][chosen + 1]
    assert chosen + 1 in auto["failing"]
    groups = state["model"]["optimizers"]["g"]["param_groups"]
    assert groups[0]["lr_scale"] == pytest.approx(math.sqrt(chosen / 2))
    assert state["data"]["position"] == 4 * chosen and state["data"]["batches"] == 4
    acc = EventAccumulator(str(exp / "tb_logger")).Reload()
    assert acc.Scalars("vram_batch/batch_size")[0].value == chosen
    assert acc.Scalars("vram/peak_gb")[-1].value <= auto["peaks_gb"][chosen]  # training used what the probe saw


def test_trial_step_leaves_weights_and_running_log_sums_as_they_were(tmp_path, hr_folder):
    from models.context import TrainingContext
    from models.sr_model import SRModel

    torch.manual_seed(0)
    model = SRModel(load_options(small_train_yaml(tmp_path, hr_folder)), torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    batch = {"lq": torch.rand(2, 3, 8, 8, generator=g), "gt": torch.rand(2, 3, 16, 16, generator=g)}
    model.train_step([batch], 1)  # a step into the running sums of the next logging step
    sums = {k: v.clone() for k, v in model._log_sums.items()}
    counts = dict(model._log_counts)
    weights = [p.detach().clone() for p in model.net_g.parameters()]
    loop = SimpleNamespace(model=model, opt=model.opt, stream=SimpleNamespace(sample_batch=lambda n, it: batch))
    ctx = TrainingContext(loop)
    ctx.iteration = 1
    ctx.trial_step(2)
    assert model._log_counts == counts
    assert model._log_sums.keys() == sums.keys()
    for key, value in sums.items():  # the trial's own losses are not in them
        assert torch.equal(model._log_sums[key], value), key
    for p, w in zip(model.net_g.parameters(), weights, strict=True):
        assert torch.equal(p, w)


def test_pop_logs_means_each_interval_and_leaves_out_terms_not_logged_since(tmp_path, hr_folder):
    from models.sr_model import SRModel

    model = SRModel(load_options(small_train_yaml(tmp_path, hr_folder)), torch.device("cpu"))
    model.log_value("a", torch.tensor(1.0))
    model.log_value("a", torch.tensor(3.0))
    model.log_value("b", torch.tensor(4.0))
    logs = model.pop_logs(1)
    assert (logs["a"], logs["b"]) == (2.0, 4.0)
    model.log_value("a", torch.tensor(5.0))  # added into the emptied running sum
    logs = model.pop_logs(2)
    assert logs["a"] == 5.0 and "b" not in logs
    assert "a" not in model.pop_logs(3)
