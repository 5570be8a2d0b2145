"""The four shipped pixel-art stages run as a chain on CPU: x2 tail -> x2 trunk -> x4 tail -> x4 trunk.

The shipped option files are used as they are, scaled down only where a CPU test must be (a few
iterations, tiny patches and batches, no compile/AMP, LPIPS without ImageNet weights). What the
chain must show: every stage loads the previous stage's best weights; tail-only stages leave the
loaded trunk untouched; the x4 tail stage takes the x2 trunk and starts a fresh x4 upsampler; the
x4 stages distil from the two-pass x2 trunk; test.py then scores every stage in one table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from archs.edsr_arch import EDSR
from models.evaluation import evaluate
from tests.conftest import ROOT, write_png
from train import train
from utils.weights import network_metadata, save_network

STAGES = ["x2_tail", "x2_trunk", "x4_tail", "x4_trunk"]
TAIL = ("upsample.", "conv_last.")


def _sprites(root: Path, count: int = 24) -> None:
    """Few-colour sprites with hard edges in nested folders, as the Kenney packs keep them."""
    rng = np.random.default_rng(0)
    for i in range(count):
        palette = rng.integers(0, 256, (5, 3), dtype=np.uint8)
        cells = rng.integers(0, 5, (8, 8))
        img = palette[np.kron(cells, np.ones((6, 6), dtype=int))]  # 48 x 48; 6 px cells do not survive x4
        write_png(root / f"pack{i % 3}" / f"sprite{i:02d}.png", img)


def _overrides(root: Path, exp: Path, stage: str) -> list[str]:
    scale = int(stage[1])
    return [
        f"datasets.train.dataroot_gt={root}", f"datasets.val.dataroot_gt={root}",
        "datasets.train.min_size=32", "datasets.val.min_size=16",
        f"datasets.train.gt_size={{0: 16, 0.5T: {24 if scale == 2 else 32}}}",
        "datasets.train.batch_size_per_gpu=4", "datasets.train.num_worker_per_gpu=0",
        "amp=none", "channels_last=false", "compile=false", "device=cpu",
        "train.total_iter=6", "train.scheduler.warmup_iter=2", "train.swa.update_every=1",
        "train.losses[3].pretrained=false", "train.losses[3].loss_weight=0",  # AlexNet needs > 16 px
        "val.val_freq=3", "logger.save_checkpoint_freq=3",
        "logger.print_freq=3", "logger.use_tb_logger=false", f"path.experiments_root={exp}",
    ]


def _fix_paths(path: Path, exp: Path) -> Path:
    """The shipped file with its experiments/ paths (pretrained weights, teachers) under ``exp``."""
    text = (ROOT / path).read_text().replace("experiments/", f"{exp}/")
    out = exp.parent / path.name
    out.write_text(text)
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("pixelart")
    root, exp = tmp / "pixelart", tmp / "experiments"
    _sprites(root)
    torch.manual_seed(0)
    generic = EDSR(num_feat=64, num_block=16, scale=2)  # stands in for the generic x2 EDSR-M
    save_network(generic, exp / "train_EDSR_Mx2" / "models" / "net_g_best.safetensors",
                 network_metadata({"type": "EDSR", "num_feat": 64, "num_block": 16}, scale=2))
    results = {}
    for stage in STAGES:
        opt_file = _fix_paths(Path(f"options/train/PixelArt/edsr_64x32_{stage}.yml"), exp)
        results[stage] = train(opt_file, _overrides(root, exp, stage))
    return {"root": root, "exp": exp, "results": results, "generic": generic.state_dict()}


def _best(exp: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(exp / f"PixelArt_edsr_64x32_{stage}" / "models" / "net_g_best.safetensors"))


def _trunk(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith(TAIL)}


def test_every_stage_trains_and_writes_its_best_weights(chain):
    for stage in STAGES:
        result = chain["results"][stage]
        assert result["iter"] == 6, stage
        models = chain["exp"] / f"PixelArt_edsr_64x32_{stage}" / "models"
        assert (models / "net_g_best.safetensors").is_file(), stage
        assert (models / "net_g_swa_final.safetensors").is_file(), stage  # SWA from 0.8T


def test_the_x2_tail_stage_keeps_the_loaded_trunk_and_trains_the_tail(chain):
    best, generic = _best(chain["exp"], "x2_tail"), chain["generic"]
    # the 16 generic blocks load into the first 16 of 32; tail-only training leaves them as loaded
    assert torch.equal(best["body.0.conv1.weight"], generic["body.0.conv1.weight"])
    assert torch.equal(best["body.15.conv2.weight"], generic["body.15.conv2.weight"])
    assert torch.equal(best["conv_first.weight"], generic["conv_first.weight"])
    assert not torch.equal(best["conv_last.weight"], generic["conv_last.weight"])  # the tail trained
    # the 16 new blocks start as the identity, and stay so while the trunk is frozen
    assert best["body.16.conv2.weight"].abs().sum() == 0 and best["body.31.conv2.bias"].abs().sum() == 0


def test_the_x4_tail_stage_takes_the_x2_trunk_and_a_fresh_upsampler(chain):
    x2, x4 = _best(chain["exp"], "x2_trunk"), _best(chain["exp"], "x4_tail")
    trunk2, trunk4 = _trunk(x2), _trunk(x4)
    assert trunk2.keys() == trunk4.keys()
    assert all(torch.equal(trunk2[k], trunk4[k]) for k in trunk2)  # loaded, then frozen
    # x4 has two pixel-shuffle stages where x2 has one
    assert "upsample.2.weight" in x4 and "upsample.2.weight" not in x2


def test_trunk_stages_train_the_trunk(chain):
    for before, after in (("x2_tail", "x2_trunk"), ("x4_tail", "x4_trunk")):
        a, b = _best(chain["exp"], before), _best(chain["exp"], after)
        # a loaded block and one the x2 tail added (it started as the identity: conv2 zero)
        for key in ("body.0.conv1.weight", "body.20.conv2.weight"):
            assert not torch.equal(a[key], b[key]), (after, key)


def test_test_py_scores_every_stage_in_one_table(chain, tmp_path):
    exp, root = chain["exp"], chain["root"]
    opt_file = tmp_path / "test_x4.yml"
    opt_file.write_text((ROOT / "options/test/PixelArt/test_pixelart_x4.yml").read_text()
                        .replace("experiments/", f"{exp}/"))
    metrics = evaluate(opt_file, [f"datasets.test_1.dataroot_gt={root}", "datasets.test_1.min_size=16",
                              "datasets.test_1.num_worker_per_gpu=0", "device=cpu",
                              f"path.results_root={tmp_path / 'results'}"])
    written = json.loads(next((tmp_path / "results").rglob("metrics.json")).read_text())
    assert written.keys() == metrics.keys()
    names = set(metrics)
    assert {"nearest", "bicubic"} <= names
    assert any("twopass" in n for n in names) and any("x4_trunk" in n for n in names)
    for name, sets in metrics.items():
        assert np.isfinite(sets["PixelArt"]["psnr"]["mean"]), name
