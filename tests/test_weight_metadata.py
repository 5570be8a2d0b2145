"""Weights that describe themselves: every file training writes rebuilds its network alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from scripts.upscale import build_model
from tests.conftest import small_train_yaml
from train import train
from utils.weights import arch_from_metadata, network_metadata, read_metadata


def test_metadata_round_trip():
    meta = network_metadata({"type": "SRResNet", "num_in_ch": 4, "num_out_ch": 4, "n_blocks": 2}, 4, 120, "ema")
    assert meta["arch"] == "SRResNet" and meta["scale"] == "4" and meta["num_in_ch"] == "4"
    assert meta["iteration"] == "120" and meta["copy"] == "ema" and meta["upforge_version"]
    assert arch_from_metadata(meta) == {"type": "SRResNet", "num_in_ch": 4, "num_out_ch": 4, "n_blocks": 2}
    assert arch_from_metadata({}) is None
    with pytest.raises(ValueError, match="not valid JSON"):
        arch_from_metadata({"upforge_arch": "{oops"})


def test_trained_weights_rebuild_a_non_inferable_arch(tmp_path, hr_folder):
    """SRResNet cannot be recognised from its keys; its files name it, so upscale.py rebuilds it."""
    import yaml

    path = small_train_yaml(tmp_path, hr_folder)
    data = yaml.safe_load(path.read_text())
    data["network_g"] = {"type": "SRResNet", "n_channels": 8, "n_blocks": 1, "block_type": "rcab"}
    data["train"]["total_iter"] = 4
    data["val"]["val_freq"] = 4
    path.write_text(yaml.safe_dump(data))
    exp = Path(train(path)["experiment_dir"])
    models = exp / "models"
    for label, copy in (("net_g_4", "live"), ("net_g_ema_4", "ema"), ("net_g_best", "ema")):
        meta = read_metadata(models / f"{label}.safetensors")
        assert json.loads(meta["upforge_arch"]) == {"type": "SRResNet", "n_channels": 8, "n_blocks": 1,
                                                      "block_type": "rcab", "scale": 2}, label
        assert meta["copy"] == copy and meta["scale"] == "2"
    net, kwargs = build_model(models / "net_g_ema_4.safetensors")
    assert type(net).__name__ == "SRResNet" and kwargs["block_type"] == "rcab" and kwargs["scale"] == 2
    saved = load_file(models / "net_g_ema_4.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    x = torch.rand(1, 3, 6, 6)
    assert net(x).shape == (1, 3, 12, 12) and np.isfinite(net(x).detach().numpy()).all()
    # test.py: a models: entry without network_g is built from its file's description, not from
    # the test file's own (EDSR) network_g; the score equals the trained run's validation
    from models.evaluation import evaluate

    test_opt = {
        "name": "meta_test", "scale": 2, "device": "cpu",
        "datasets": {"val": {"name": "tinyval", "type": "HRImageDataset", "dataroot_gt": str(hr_folder)}},
        "network_g": {"type": "EDSR", "num_feat": 8, "num_block": 1},
        "path": {"results_root": str(tmp_path / "results")},
        "val": {"metrics": {"psnr": {"type": "calculate_psnr", "crop_border": 2}}},
        "models": [{"name": "srresnet", "path": str(models / "net_g_ema_4.safetensors")}],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test_opt))
    scores = evaluate(tmp_path / "test.yml")
    trained = json.loads((exp / "metrics.json").read_text())["metrics"]["tinyval"]["psnr"]
    assert scores["srresnet"]["tinyval"]["psnr"]["mean"] == pytest.approx(trained, abs=1e-9)


def test_warm_start_without_network_g_builds_the_recorded_network(tmp_path, hr_folder):
    """A file whose path.pretrain_network_g records its network needs no network_g section."""
    import yaml

    from models.base_model import build_network
    from utils.options import OptionsError, load_options
    from utils.weights import save_network

    section = {"type": "SRResNet", "n_channels": 8, "n_blocks": 1, "block_type": "res", "scale": 2}
    net = build_network(section)
    weights = tmp_path / "warm.safetensors"
    save_network(net, weights, metadata=network_metadata(section, 2, 10, "ema"))
    path = small_train_yaml(tmp_path, hr_folder)
    data = yaml.safe_load(path.read_text())
    del data["network_g"]
    data["path"]["pretrain_network_g"] = str(weights)
    data["train"]["total_iter"] = 2
    path.write_text(yaml.safe_dump(data))
    assert load_options(path).network_g == section
    result = train(path)
    started = load_file(Path(result["experiment_dir"]) / "models" / "net_g_2.safetensors")
    assert set(started) == set(net.state_dict())  # the SRResNet was built and trained, not the EDSR default

    for target, expected in ((tmp_path / "missing.safetensors", "missing.safetensors does not exist"),
                             (None, "set path.pretrain_network_g")):
        data["path"]["pretrain_network_g"] = str(target) if target else None
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(OptionsError, match=expected):
            load_options(path)
    bare = tmp_path / "bare.safetensors"
    save_network(net, bare)  # no metadata
    data["path"]["pretrain_network_g"] = str(bare)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(OptionsError, match="bare.safetensors does not record its network"):
        load_options(path)
    data["scale"] = 4  # the recorded x2 network under an x4 run: named, not silently rebuilt
    data["path"]["pretrain_network_g"] = str(weights)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(OptionsError, match="differs from the top-level scale 4"):
        load_options(path)
