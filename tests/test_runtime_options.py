"""channels_last, torch.compile and AMP on the CPU: the same training as eager fp32, clean saved keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import small_train_yaml
from train import train


def _run(tmp_path, hr_folder, name, *extra):
    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, [f"name={name}", "train.total_iter=4", "val.val_freq=4", *extra])
    return load_file(str(Path(result["experiment_dir"]) / "models" / "net_g_4.safetensors"))


@pytest.fixture
def reference(tmp_path, hr_folder):
    return _run(tmp_path, hr_folder, "eager")


@pytest.mark.parametrize(
    ("extra", "rel"),
    [
        (["channels_last=true"], 1e-3),
        (["compile=true"], 1e-3),
        (["amp=bf16"], 0.3),  # low precision: the steps stay close to fp32's, not equal
        (["amp=fp16"], 0.3),
    ],
)
def test_runtime_option_trains_like_eager_fp32(tmp_path, hr_folder, reference, extra, rel):
    weights = _run(tmp_path, hr_folder, "variant", *extra)
    start = _run(tmp_path, hr_folder, "zero", "train.optim_g.lr=0.0")
    assert set(weights) == set(reference)  # no _orig_mod. / module. prefixes
    assert all(v.dtype == torch.float32 for v in weights.values())  # AMP never leaks into saved weights
    deviation = torch.cat([(weights[k] - reference[k]).abs().flatten() for k in reference]).mean()
    movement = torch.cat([(reference[k] - start[k]).abs().flatten() for k in reference]).mean()
    assert movement > 1e-4  # training moved the weights, so the comparison means something
    assert deviation < rel * movement, (deviation.item(), movement.item())
