"""The training benchmarks' own logic: benchmark_train's modes in one run, benchmark_ddp's log
parsing and command lines (the GPU numbers themselves are in docs/speed.md)."""

from __future__ import annotations

import sys

import pytest

from scripts import benchmark_ddp
from scripts.benchmark_train import benchmark, step_time_summary
from tests.conftest import small_train_yaml

LOG = """\
[11/30/26 01:00:01] INFO     iter 250/1000  61.00 it/s  eta 12s  l1 0.1
[11/30/26 01:00:05] INFO     iter 500/1000  100.00 it/s  eta 5s  l1 0.05
[11/30/26 01:00:07] INFO     iter 750/1000  104.00 it/s  eta 2s  l1 0.04
[11/30/26 01:00:09] INFO     iter 1000/1000  98.00 it/s  eta 0s  l1 0.04
[11/30/26 01:00:10] INFO     DDP: weights identical on all 2 ranks: True
"""


def test_ddp_rate_is_the_median_after_the_skipped_intervals():
    assert benchmark_ddp.parse_rates(LOG) == [(250, 61.0), (500, 100.0), (750, 104.0), (1000, 98.0)]
    assert benchmark_ddp.run_rate(LOG, skip=1) == 100.0  # median of 100, 104, 98
    assert benchmark_ddp.run_rate(LOG, skip=0) == 99.0   # median of 61, 100, 104, 98
    assert benchmark_ddp.replicas_identical(LOG) is True
    assert benchmark_ddp.replicas_identical(LOG.replace(": True", ": False")) is False
    assert benchmark_ddp.replicas_identical("no ddp here") is None
    with pytest.raises(RuntimeError, match="no it/s after the skipped intervals"):
        benchmark_ddp.run_rate(LOG, skip=4)


def test_ddp_commands_run_train_py_alone_and_under_torchrun(tmp_path):
    one = benchmark_ddp.command("a.yml", ["amp=bf16"], 1, 3000, 250, tmp_path)
    two = benchmark_ddp.command("a.yml", ["amp=bf16"], 2, 3000, 250, tmp_path)
    assert one[:4] == [sys.executable, "train.py", "-opt", "a.yml"]
    assert two[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # the same train.py arguments, but each run in its own experiment folder
    assert [a.replace("2gpu", "1gpu") for a in two[5:]] == one[1:]
    assert "name=ddp_bench_2gpu" in two
    for expected in ("train.total_iter=3000", "val.val_freq=3000", "logger.print_freq=250", "amp=bf16"):
        assert one[one.index(expected) - 1] == "-o"
    assert one[-1] == "amp=bf16"  # the user's overrides come last and win
    bound = benchmark_ddp.command("a.yml", [], 2, 3000, 250, tmp_path, numa_binding="exclusive")
    assert bound[5] == "--numa-binding=exclusive" and bound[6] == "train.py"
    assert "--numa-binding=exclusive" not in benchmark_ddp.command("a.yml", [], 1, 3000, 250, tmp_path, "exclusive")
    with pytest.raises(SystemExit):
        benchmark_ddp.main(["-opt", "a.yml", "--pin", "--numa-binding", "node"])


def test_benchmark_train_measures_every_mode_in_one_run(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    results = benchmark(str(path), ["datasets.train.cache=ram"], iters=4, warmup=1, modes=("full", "step", "data"))
    assert [r["mode"] for r in results] == ["full", "step", "data"]
    assert all(r["cache"] == "ram" and r["workers"] == 0 and r["it_per_s"] > 0 for r in results)
    assert all(abs(r["ms_per_it"] * r["it_per_s"] - 1000) < 1e-6 for r in results)
    # per-step times beside the mean: steps 2-5 are full (after one warm-up step), 6-9 step, 10-13 data
    assert [[s for s, _ in r["slowest_steps"]] for r in results] == [[2, 3, 4, 5], [6, 7, 8, 9], [10, 11, 12, 13]]
    assert all(r["step_ms_median"] > 0 and r["step_ms_p99"] >= r["step_ms_median"] for r in results)
    with pytest.raises(ValueError, match="unknown mode"):
        benchmark(str(path), [], iters=1, warmup=1, modes=("fast",))


def test_step_times_show_the_stalls_the_mean_hides():
    # 97 steps of 4 ms, then stalls of 40 and 100 ms at the 31st and 71st timed steps, and a 10 ms one
    durations = [0.004] * 100
    durations[30], durations[70], durations[50] = 0.040, 0.100, 0.010
    summary = step_time_summary(durations, first_step=201, slowest=3)
    assert summary["step_ms_median"] == pytest.approx(4.0)
    assert summary["median_it_per_s"] == pytest.approx(250.0)  # the mean rate is 100 / 0.538 = 185.9
    assert summary["step_ms_p99"] == pytest.approx(40.0)  # the 99th of 100 sorted values
    # stalls: steps over 3 x 4 = 12 ms, beyond the median: 36 + 96 ms of 538 ms in all
    assert summary["stall_share"] == pytest.approx(0.132 / 0.538)
    assert summary["slowest_steps"] == [[231, pytest.approx(40.0)], [251, pytest.approx(10.0)],
                                        [271, pytest.approx(100.0)]]
    with pytest.raises(ValueError, match="no steps"):
        step_time_summary([])


def test_pinned_slices_are_equal_and_keep_hyperthreads_together():
    alone = lambda c: frozenset([c])  # noqa: E731
    assert benchmark_ddp.cpu_slices([7, 0, 1, 2, 3, 4, 5, 6], 2, alone) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert benchmark_ddp.cpu_slices(list(range(10)), 3, alone) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]  # 9 left out
    # 8 logical CPUs on 4 cores, siblings (n, n + 4): halves of whole cores, not 0-3 / 4-7
    paired = lambda c: frozenset([c % 4, c % 4 + 4])  # noqa: E731
    assert benchmark_ddp.cpu_slices(list(range(8)), 2, paired) == [[0, 1, 4, 5], [2, 3, 6, 7]]
    # a sibling outside the allowed set (taskset) is not handed out
    assert benchmark_ddp.cpu_slices([0, 1, 2, 3], 2, paired) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="2 cores cannot be shared among 3 processes"):
        benchmark_ddp.cpu_slices([0, 1], 3, alone)
    assert benchmark_ddp._siblings(0) >= {0}  # sysfs here, or the CPU alone


def test_pinned_two_process_run_trains_and_reports(tmp_path, hr_folder, capsys):
    """--pin launches the ranks itself (torchrun's variables, one CPU slice each): a real two-process
    gloo run whose replicas end identical."""
    import json

    path = small_train_yaml(tmp_path, hr_folder)
    out = tmp_path / "r.jsonl"
    assert benchmark_ddp.main(["-opt", str(path), "--gpus", "2", "--iters", "6", "--print-freq", "2", "--skip", "0",
                               "--pin", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["pinned"] and result["replicas_identical"] is True
    assert result["one_gpu_it_per_s"] > 0 and result["per_rank_it_per_s"] > 0
    assert result["scaling"] == pytest.approx(2 * result["per_rank_it_per_s"] / result["one_gpu_it_per_s"])
