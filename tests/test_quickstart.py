"""The README's demo: the quickstart run beats the nearest and bicubic baselines it prints."""

from __future__ import annotations

from tests.conftest import ROOT
from train import train


def test_quickstart_beats_nearest_and_bicubic(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the option file's dataset paths are relative to the repository
    result = train("options/train/quickstart.yml", [f"path.experiments_root={tmp_path}"])
    model = result["metrics"]["pixelart_val"]["psnr"]
    nearest = result["baselines"]["pixelart_val (nearest)"]["psnr"]
    bicubic = result["baselines"]["pixelart_val (bicubic)"]["psnr"]
    assert 25.0 < nearest < 26.5 and 25.0 < bicubic < 26.5  # the held-out crops, scored on Y
    assert model > max(nearest, bicubic) + 1.0, (model, nearest, bicubic)
