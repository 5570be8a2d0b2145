"""scripts/benchmark_loader.py on the tiny option file: counts, steps, live settings and worker settings.

The rates themselves are never asserted (timing); their relations to the counted batches and
seconds are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scripts import benchmark_loader as bl
from tests.conftest import small_train_yaml


def _run(tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / "bench.jsonl"
    out.unlink(missing_ok=True)
    assert bl.main([*args, "--json", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_counts_fields_and_rates(tmp_path: Path, hr_folder: Path) -> None:
    opt = small_train_yaml(tmp_path, hr_folder)
    (result,) = _run(tmp_path, "-opt", str(opt), "--steps", "4", "--warmup", "1", "--workers", "0")
    # warm-up takes step 1, the timed steps are 2..5; batch 2 of 16 px gt and 8 px lq (x2)
    assert (result["steps"], result["batches"], result["samples"]) == (4, 4, 8)
    assert (result["step"], result["last_step"]) == (2, 5)
    assert result["batch_size"] == 2 and result["gt_size"] == 16 and result["knobs_changed"] == []
    assert result["shapes"] == {"lq": [2, 3, 8, 8], "gt": [2, 3, 16, 16]}
    assert result["workers"] == 0 and result["prefetch_factor"] is None and result["cache"] is None
    assert result["device"] == "cpu" and result["dataset"] == "HRImageDataset" and result["accumulate"] == 1
    assert result["batches_per_s"] == pytest.approx(4 / result["seconds"])
    assert result["samples_per_s"] == pytest.approx(2 * result["batches_per_s"])
    assert result["ms_per_batch"] == pytest.approx(1000 / result["batches_per_s"])
    assert result["steps_per_s"] == pytest.approx(result["batches_per_s"])


def test_at_step_follows_the_patch_schedule(tmp_path: Path, hr_folder: Path) -> None:
    opt = str(small_train_yaml(tmp_path, hr_folder))
    sched = "datasets.train.gt_size={0: 16, 8: 24}"
    # 0.35T of total_iter 20 is step 7; one warm-up step, then steps 8..10 are timed at gt 24
    (late,) = _run(tmp_path, "-opt", opt, "-o", sched, "--steps", "3", "--warmup", "1", "--at-step", "0.35T")
    assert (late["step"], late["last_step"], late["gt_size"]) == (8, 10, 24)
    assert late["shapes"]["gt"] == [2, 3, 24, 24] and late["shapes"]["lq"] == [2, 3, 12, 12]
    # from step 1 without warm-up, 9 steps cross the change at step 8: reported, not hidden
    (mixed,) = _run(tmp_path, "-opt", opt, "-o", sched, "--steps", "9", "--warmup", "0")
    assert (mixed["step"], mixed["last_step"], mixed["gt_size"]) == (1, 9, 16)
    assert mixed["knobs_changed"] == ["gt_size"] and mixed["batches"] == 9


def test_accumulation_counts_batches_per_step(tmp_path: Path, hr_folder: Path) -> None:
    opt = small_train_yaml(tmp_path, hr_folder)
    (result,) = _run(tmp_path, "-opt", str(opt), "-o", "train.accumulate_grad_batches=2", "--steps", "3",
                     "--warmup", "1")
    assert (result["steps"], result["batches"], result["samples"]) == (3, 6, 12)
    assert (result["step"], result["last_step"]) == (2, 4)
    assert result["steps_per_s"] == pytest.approx(result["batches_per_s"] / 2)


def test_worker_and_prefetch_settings(tmp_path: Path, hr_folder: Path) -> None:
    opt = small_train_yaml(tmp_path, hr_folder)
    results = _run(tmp_path, "-opt", str(opt), "--steps", "3", "--warmup", "1", "--workers", "0,1",
                   "--prefetch-factor", "3")
    # 0 workers has no prefetch factor, so it is measured once; 1 worker with factor 3
    assert [(r["workers"], r["prefetch_factor"], r["batches"]) for r in results] == [(0, None, 3), (1, 3, 3)]
    options = bl.load_options(opt)
    stream = bl.build_stream(options, torch.device("cpu"), workers=1, prefetch_factor=3)
    iterator = iter(stream.loader)
    try:
        assert iterator._prefetch_factor == 3 and iterator._num_workers == 1  # the loader really uses them
    finally:
        iterator._shutdown_workers()
    # the option file's own worker count when none is asked
    default = bl.build_stream(options, torch.device("cpu"))
    assert default.loader.num_workers == 0 and default.loader.prefetch_factor is None


def test_cache_makes_batches_without_workers(tmp_path: Path, hr_folder: Path) -> None:
    opt = small_train_yaml(tmp_path, hr_folder)
    (result,) = _run(tmp_path, "-opt", str(opt), "-o", "datasets.train.cache=ram", "--steps", "2", "--warmup",
                     "1", "--workers", "2")
    assert result["cache"] == "ram" and result["workers"] == 0 and result["prefetch_factor"] is None
    assert result["batches"] == 2 and result["shapes"]["gt"] == [2, 3, 16, 16]


def test_errors(tmp_path: Path, hr_folder: Path) -> None:
    opt = str(small_train_yaml(tmp_path, hr_folder))
    with pytest.raises(ValueError, match="--workers: expected comma-separated whole numbers, got 'a'"):
        bl.parse_counts("a", "--workers", 0)
    with pytest.raises(ValueError, match="--prefetch-factor: expected .* >= 1, got '0'"):
        bl.parse_counts("0", "--prefetch-factor", 1)
    assert bl.parse_counts("0,4, 8", "--workers", 0) == [0, 4, 8]
    with pytest.raises(ValueError, match="--at-step must be >= 1"):
        list(bl.benchmark(opt, at_step=0))
    with pytest.raises(ValueError, match="--steps must be >= 1"):
        list(bl.benchmark(opt, steps=0))
    assert bl.main(["-opt", opt, "--workers", "-1"]) == 1
    if not torch.cuda.is_available():
        assert bl.main(["-opt", opt, "--device", "cuda", "--steps", "1"]) == 1  # a clear "CUDA is not available"
