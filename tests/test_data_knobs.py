"""Live data settings: patch and batch sizes that change during a run, with workers and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from data.data_loader import build_dataloader, build_loaders
from data.hr_image_dataset import HRImageDataset
from data.resumable_sampler import ResumableBatchSampler, ResumableSampler
from tests.conftest import small_train_yaml
from train import train
from utils.options import load_options
from utils.schedule import Schedule


def test_batch_sampler_maps_batches_to_steps_with_accumulation():
    sampler = ResumableSampler(40, seed=1)
    batches = ResumableBatchSampler(sampler, Schedule.parse({0: 2, 3: 3}), {"gt_size": Schedule.parse({0: 8, 2: 16})},
                                    accumulate=2)
    out = list(batches)
    # batch k belongs to step k // 2 + 1: steps 1, 1, 2, 2, 3, 3, ...
    assert [len(b) for b in out[:8]] == [2, 2, 2, 2, 3, 3, 3, 3]
    assert [b[0][2]["gt_size"] for b in out[:4]] == [8, 8, 16, 16]
    assert all(len({item[2]["gt_size"] for item in b}) == 1 for b in out)  # no batch mixes patch sizes
    flat = [(i, s) for b in out for i, s, _ in b]
    assert flat == sampler.order()[:len(flat)]  # consecutive samples of the epoch order
    assert len(sampler.order()) - len(flat) < 3  # the tail shorter than a batch is dropped


def test_patch_size_schedule_reaches_the_batches(tmp_path, hr_folder):
    opt = load_options(small_train_yaml(tmp_path, hr_folder), ["datasets.train.gt_size={0: 8, 3: 16, 0.25T: 24}"])
    stream, _ = build_loaders(opt, torch.device("cpu"))
    sizes = [stream.next()["gt"].shape[-1] for _ in range(6)]
    assert sizes == [8, 8, 16, 16, 24, 24]  # 0.25T of 20 iterations = step 5


def test_bad_scheduled_value_names_the_option(tmp_path, hr_folder):
    from utils.options import OptionsError

    with pytest.raises((OptionsError, ValueError), match="gt_size must be a positive multiple of scale 2"):
        opt = load_options(small_train_yaml(tmp_path, hr_folder), ["datasets.train.gt_size={0: 8, 3: 15}"])
        build_loaders(opt, torch.device("cpu"))


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_size_change_drops_and_repeats_nothing(tmp_path, hr_folder, workers):
    from data.batch_stream import BatchStream

    ds = HRImageDataset(str(hr_folder), scale=2, phase="train", gt_size=8)
    loader = build_dataloader(ds, "train", 2, workers, seed=4, persistent_workers=True, dataset_enlarge_ratio=4)
    stream = BatchStream(loader, torch.device("cpu"))
    seen = [p for _ in range(3) for p in stream.next()["gt_path"]]
    stream.set_knob("batch_size", 5)  # prefetched batches of 2 are thrown away and remade
    seen += [p for _ in range(2) for p in stream.next()["gt_path"]]
    stream.set_knob("gt_size", 12)
    big = stream.next()
    seen += big["gt_path"]
    assert big["gt"].shape == (5, 3, 12, 12)
    assert stream.state() == {"epoch": 0, "position": 21, "batches": 6, "overrides": {"batch_size": 5, "gt_size": 12}}
    order = [str(ds.gt_paths[i]) for i, _ in loader.batch_sampler.sampler.order()]
    assert seen == order[:21]
    with pytest.raises(KeyError, match="live settings: batch_size, gt_size, aug_prob"):
        stream.set_knob("gt_szie", 12)
    with pytest.raises(ValueError, match="multiple of scale 2"):
        stream.set_knob("gt_size", 11)


def test_shutdown_stops_persistent_workers_and_close_does_not(tmp_path, hr_folder):
    from data.batch_stream import BatchStream

    ds = HRImageDataset(str(hr_folder), scale=2, phase="train", gt_size=8)
    loader = build_dataloader(ds, "train", 2, 2, seed=4, persistent_workers=True, dataset_enlarge_ratio=4)
    stream = BatchStream(loader, torch.device("cpu"))
    first = stream.next()["gt_path"]
    workers = list(loader._iterator._workers)
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    stream.close()  # a restart (new knob, rewind): the workers stay for the next batches
    assert all(w.is_alive() for w in workers)
    assert stream.next()["gt_path"] != first  # the stream goes on from its position
    stream.shutdown()  # the run's end: the workers are gone before the interpreter exits
    assert not any(w.is_alive() for w in workers)
    assert loader._iterator is None


KNOB_AUTOMATION = '''
from models.automations.base import Automation
from utils.registry import AUTOMATION_REGISTRY


@AUTOMATION_REGISTRY.register("knob_changer")
class KnobChanger(Automation):
    """Test automation: batch size 3 from step 8, gt_size 24 from step 13."""

    def on_step_end(self, ctx, logs):
        if ctx.iteration == 7:
            ctx.set_data("batch_size", 3)
        if ctx.iteration == 12:
            ctx.set_data("gt_size", 24)
'''


def test_resume_with_patch_and_batch_changes_is_bitwise(tmp_path, hr_folder):
    """20 iterations straight == 10 + resume + 10, with a batch-size change before the cut, a
    patch-size change by automation after it and one by schedule inside the window."""
    plugin = tmp_path / "knob_plugin.py"
    plugin.write_text(KNOB_AUTOMATION)
    path = small_train_yaml(tmp_path, hr_folder)
    data = yaml.safe_load(path.read_text())
    data["imports"] = [str(plugin)]
    data["train"]["training_automations"] = {"knob_changer": {}}
    data["datasets"]["train"].update(gt_size={0: 16, 15: 20}, num_worker_per_gpu=1, dataset_enlarge_ratio=3)
    path.write_text(yaml.safe_dump(data))
    straight = Path(train(path, ["name=straight"])["experiment_dir"])
    half = Path(train(path, ["name=half"])["experiment_dir"])
    (half / "training_states" / "20.state").unlink()
    torch.manual_seed(123)
    assert train(path, ["name=half"], auto_resume=True)["iter"] == 20
    for label in ("net_g", "net_g_ema"):
        a = load_file(str(straight / "models" / f"{label}_20.safetensors"))
        b = load_file(str(half / "models" / f"{label}_20.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)
    s = torch.load(straight / "training_states" / "20.state", weights_only=False)
    r = torch.load(half / "training_states" / "20.state", weights_only=False)
    # 18 samples per epoch: steps 1-7 take 14 in batches of 2, step 8 three more (the 1-sample tail is
    # dropped); epoch 1 is steps 9-14 and epoch 2 steps 15-20, six batches of 3 each.
    assert s["data"] == r["data"] == {"epoch": 2, "position": 18, "batches": 20,
                                      "overrides": {"batch_size": 3, "gt_size": 24}}
