"""cuda_graph: the whole step captured and replayed. On a GPU the replayed run must train exactly
as the eager one (weights, EMA, logged losses, the scheduled LR and a loss weight that changes);
everywhere the option must refuse what it cannot do, naming why."""

from __future__ import annotations

import io

import pytest
import torch

from models.sr_model import SRModel
from models.srgan_model import SRGANModel
from tests.conftest import small_train_yaml
from utils.options import OptionsError, load_options

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def _model(tmp_path, hr_folder, *overrides: str, device: str = "cpu") -> SRModel:
    opt = load_options(small_train_yaml(tmp_path, hr_folder), [f"device={device}", *overrides])
    torch.manual_seed(0)
    return SRModel(opt, torch.device(device))


def _batch(seed: int, n: int = 2, size: int = 8, device: str = "cpu") -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {"lq": torch.rand(n, 3, size, size, generator=g), "gt": torch.rand(n, 3, 2 * size, 2 * size, generator=g)}
    return {k: v.to(device) for k, v in batch.items()}


def test_options_refuse_what_a_graph_cannot_replay(tmp_path, hr_folder):
    with pytest.raises(OptionsError) as err:
        load_options(small_train_yaml(tmp_path, hr_folder),
                     ["cuda_graph=true", "amp=fp16", "compile=reduce-overhead"])
    text = str(err.value)
    assert "amp: fp16 scales the loss" in text
    assert "compile: reduce-overhead replays its own CUDA graphs" in text
    assert "CUDA graphs need a CUDA GPU, and device is cpu" in text
    opt = load_options(small_train_yaml(tmp_path, hr_folder), ["device=auto", "cuda_graph=true"])
    assert SRModel.step_graph_problems(opt) == []
    assert "changes with the GAN phase" in SRGANModel.step_graph_problems(opt)[0]


def test_a_cpu_run_with_cuda_graph_stops_with_the_reason(tmp_path, hr_folder):
    # device: auto passes the option check; the run then lands on the CPU
    opt = load_options(small_train_yaml(tmp_path, hr_folder), ["device=auto", "cuda_graph=true"])
    with pytest.raises(RuntimeError, match="cuda_graph: true needs a CUDA GPU, and this run is on cpu"):
        SRModel(opt, torch.device("cpu"))


def test_signature_names_the_host_decisions_of_a_step(tmp_path, hr_folder):
    # a piecewise loss weight: 1.0 until iteration 6, then 0.25
    model = _model(tmp_path, hr_folder, "train.losses[0].loss_weight={1: 1.0, 6: 0.25}")
    a = model.step_signature([_batch(0)], 3)
    assert a == model.step_signature([_batch(1)], 5)  # other values, same layout and weights
    assert a != model.step_signature([_batch(0)], 6)  # the weight changed
    assert a != model.step_signature([_batch(0, size=12)], 3)  # a larger patch
    assert a != model.step_signature([_batch(0), _batch(1)], 3)  # two micro-batches
    model.sync_gradients = False  # an automation's rank-local trial step
    assert a != model.step_signature([_batch(0)], 3)
    model.sync_gradients = True
    model.net_g.conv_first.weight.requires_grad_(False)  # an automation froze a layer
    assert a != model.step_signature([_batch(0)], 3)
    model.net_g.conv_first.weight.requires_grad_(True)
    assert a == model.step_signature([_batch(0)], 3)
    assert model.step_signature([_batch(0)], 3)[-1] == (1.0,)
    assert model.step_signature([_batch(0)], 7)[-1] == (0.25,)


def test_loading_a_state_drops_the_captured_steps(tmp_path, hr_folder, monkeypatch):
    # the graphs hold the optimiser state and log sums a load replaces: replaying them afterwards
    # would train on stale tensors while checkpoints saved the new ones
    model = _model(tmp_path, hr_folder)
    model.train_step([_batch(0)], 1)
    state = model.state_dict()
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    model.step_graph = object()  # stands in for a StepGraph (which needs CUDA)
    model.load_state_dict(state)
    assert model.step_graph is None and synced == [model.device]


def _train(model: SRModel, steps: int, size_at: dict[int, int] | None = None) -> list[dict[str, float]]:
    logs = []
    size = 8
    for it in range(1, steps + 1):
        size = (size_at or {}).get(it, size)
        model.train_step([_batch(it, size=size, device="cuda")], it)
        if it % 5 == 0 or it == steps:
            logs.append(model.pop_logs(it))
    torch.cuda.synchronize()
    return logs


def _assert_same_training(eager: SRModel, graph: SRModel, logs_e: list, logs_g: list) -> None:
    for (name, pe), pg in zip(eager.net_g.named_parameters(), graph.net_g.parameters(), strict=True):
        assert torch.allclose(pe, pg, rtol=1e-4, atol=1e-6), name
    for pe, pg in zip(eager.ema.module.parameters(), graph.ema.module.parameters(), strict=True):
        assert torch.allclose(pe, pg, rtol=1e-4, atol=1e-6)
    assert len(logs_e) == len(logs_g)
    for le, lg in zip(logs_e, logs_g, strict=True):
        assert le.keys() == lg.keys()
        for key in le:
            assert lg[key] == pytest.approx(le[key], rel=1e-4, abs=1e-7), key


@needs_cuda
def test_replayed_steps_train_as_the_eager_steps(tmp_path, hr_folder):
    # MultiStepLR halves the LR at iteration 10: the replays must read the new LR
    eager = _model(tmp_path, hr_folder, device="cuda")
    graph = _model(tmp_path, hr_folder, "cuda_graph=true", device="cuda")
    logs_e, logs_g = _train(eager, 14), _train(graph, 14)
    assert graph.step_graph.captures == 1
    assert graph.step_graph.replays == 14 - 3  # three eager warm-up steps, then the capture's own replay
    assert graph.optimizers["g"].param_groups[0]["lr"] == eager.optimizers["g"].param_groups[0]["lr"] == 5e-4
    _assert_same_training(eager, graph, logs_e, logs_g)
    # the weights moved: a graph replaying nothing would fail the comparison above only if eager
    # had not moved either
    start = _model(tmp_path, hr_folder, device="cuda")
    assert not torch.allclose(start.net_g.conv_first.weight, graph.net_g.conv_first.weight)


@needs_cuda
def test_a_changed_loss_weight_or_patch_size_gets_its_own_capture(tmp_path, hr_folder):
    weight = "train.losses[0].loss_weight={1: 1.0, 9: 0.25}"
    eager = _model(tmp_path, hr_folder, weight, device="cuda")
    graph = _model(tmp_path, hr_folder, weight, "cuda_graph=true", device="cuda")
    sizes = {12: 6}  # the patch shrinks at iteration 12
    logs_e, logs_g = _train(eager, 16, sizes), _train(graph, 16, sizes)
    # 1-3 eager, 4 captured, 5-8 replayed; 9 eager (new weight), 10 captured, 11 replayed;
    # 12 eager (new shape), 13 captured, 14-16 replayed
    assert graph.step_graph.captures == 3
    assert graph.step_graph.replays == 5 + 2 + 4
    _assert_same_training(eager, graph, logs_e, logs_g)


@needs_cuda
def test_a_state_saved_without_the_graph_resumes_under_it(tmp_path, hr_folder):
    eager = _model(tmp_path, hr_folder, device="cuda")
    _train(eager, 4)
    buffer = io.BytesIO()  # through a file's bytes, as a resume reads it: no tensor shared with `eager`
    torch.save(eager.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    graph = _model(tmp_path, hr_folder, "cuda_graph=true", device="cuda")
    graph.load_state_dict(state)
    assert graph.optimizers["g"].param_groups[0]["capturable"] is True
    logs_e, logs_g = [], []
    for it in range(5, 13):
        for model, logs in ((eager, logs_e), (graph, logs_g)):
            model.train_step([_batch(it, device="cuda")], it)
            if it % 4 == 0:
                logs.append(model.pop_logs(it))
    torch.cuda.synchronize()
    assert graph.step_graph.captures == 1
    _assert_same_training(eager, graph, logs_e, logs_g)
