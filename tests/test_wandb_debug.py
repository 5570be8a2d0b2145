"""Weights & Biases logging (offline: real run files, read back) and ``--debug`` runs."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import small_train_yaml
from train import load_run_options, main, train
from utils.checkpoint import list_states
from utils.options import OptionsError

WANDB = "logger.wandb={project: upforge-test}"


@pytest.fixture
def wandb_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """wandb writing offline run files only: nothing is sent, nothing waits on the network, and
    nothing lands in the user's wandb settings."""
    wandb = pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
                       "WANDB_DISABLE_CODE": "true", "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
                       "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
                       "WANDB_DATA_DIR": str(tmp_path / "wandb_data")}.items():
        monkeypatch.setenv(key, value)
    yield wandb
    # wandb keeps its service process (wandb-core) for the life of the calling process; stop it here
    # so it does not outlive the test
    wandb.teardown()


# ------------------------------------------------------------------ reading a run's .wandb file


def wandb_records(path: Path) -> list[Any]:
    """The records of a run's transaction log, ``run-<id>.wandb``.

    The format is LevelDB's log: a 7-byte file header (``:W&B``, magic 0xBEE1, version 0), then
    32 KiB blocks of chunks, each with a 7-byte header (CRC32C, length, type: 1 full, 2 first,
    3 middle, 4 last); a block's tail shorter than a header is padding. A record is the chunks
    from a full or first one to the matching last one: a serialized ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # padding at the end of a block
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero-filled rest of the file
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history(records: list[Any]) -> dict[int, dict[str, Any]]:
    """The logged rows by step: ``{step: {key: value}}`` (an image as its ``key/_type``, ``key/path`` ...)."""
    rows = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows[int(row["_step"])] = row
    return rows


def run_record(records: list[Any]) -> Any:
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


def offline_runs(exp: Path) -> list[Path]:
    return sorted((exp / "wandb").glob("offline-run-*"))


# ----------------------------------------------------------------------------------- W&B


def test_wandb_offline_run_logs_what_tensorboard_logs(tmp_path, hr_folder, wandb_offline):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, ["logger.use_tb_logger=true", WANDB])
    wandb_offline.teardown()  # finish() returns before wandb-core has flushed the run file; this waits for it
    exp = Path(result["experiment_dir"])
    run_id = (exp / "wandb_run_id.txt").read_text().strip()
    [run_dir] = offline_runs(exp)
    records = wandb_records(run_dir / f"run-{run_id}.wandb")

    run = run_record(records)
    assert (run.run_id, run.project, run.display_name) == (run_id, "upforge-test", "tiny")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["train"]["total_iter"] == 20 and config["train"]["scheduler"]["milestones"] == [10]

    rows = history(records)
    tb = EventAccumulator(str(exp / "tb_logger")).Reload()
    for tag in ("losses/l1", "lr_net_g"):
        tb_values = {e.step: e.value for e in tb.Scalars(tag)}
        assert sorted(tb_values) == [5, 10, 15, 20]
        for step, value in tb_values.items():  # TensorBoard keeps float32
            assert rows[step][tag] == pytest.approx(value, rel=1e-6), (tag, step)
    assert rows[15]["lr_net_g"] == pytest.approx(5e-4)
    assert rows[20]["val_metrics/psnr"] == pytest.approx(result["metrics"]["tinyval"]["psnr"], rel=1e-9)
    images = {k[:-len("/_type")]: rows[20][k] for k in rows[20] if k.startswith("val_images/tinyval/")
              and k.endswith("/_type")}
    assert len(images) == 3 and set(images.values()) == {"image-file"}
    for tag in images:
        assert (run_dir / "files" / rows[20][f"{tag}/path"]).is_file()
    assert records[-1].WhichOneof("record_type") == "exit"  # close() finished the run


def test_wandb_resume_continues_the_same_run(tmp_path, hr_folder, wandb_offline):
    path = small_train_yaml(tmp_path, hr_folder)
    train(path, [WANDB, "train.total_iter=10"])
    exp = tmp_path / "exp" / "tiny"
    first_id = (exp / "wandb_run_id.txt").read_text().strip()
    resumed = train(path, [WANDB], auto_resume=True)
    assert resumed["iter"] == 20
    # an explicit resume_id names the run to continue (BasicSR's logger.wandb.resume_id)
    other = Path(train(path, ["name=other", "train.total_iter=2", "val.val_freq=2",
                              "logger.wandb={project: upforge-test, resume_id: abc123}"])["experiment_dir"])
    wandb_offline.teardown()  # flush the run files before reading them
    # offline, each start writes a run file of its own (folders named by start time and id)
    files = sorted(exp.glob("wandb/offline-run-*/*.wandb"), key=lambda f: f.stat().st_mtime)
    assert {run_record(wandb_records(f)).run_id for f in files} == {first_id}
    assert sorted(history(wandb_records(files[-1]))) == [15, 20]  # the curves continue where the first part stopped
    assert (other / "wandb_run_id.txt").read_text().strip() == "abc123"
    assert run_record(wandb_records(next(offline_runs(other)[0].glob("*.wandb")))).run_id == "abc123"


def test_missing_wandb_stops_before_training_with_a_clear_message(tmp_path, hr_folder, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    path = small_train_yaml(tmp_path, hr_folder)
    with pytest.raises(OptionsError, match=r"logger\.wandb: the wandb package is not installed: pip install wandb"):
        train(path, [WANDB])
    assert not (tmp_path / "exp").exists()  # nothing built, no folder made
    assert main(["-opt", str(path), "-o", WANDB]) == 2
    err = capsys.readouterr().err
    assert "pip install wandb" in err and "Traceback" not in err
    assert main(["-opt", str(path), "-o", WANDB, "--check"]) == 0  # a note: the file may be for another machine
    assert "# note: logger.wandb: the wandb package is not installed: pip install wandb" in capsys.readouterr().out
    train(path, ["train.total_iter=1", "val.val_freq=1"])  # without logger.wandb, wandb is never needed


def test_a_run_that_fails_is_marked_failed_in_wandb(tmp_path, hr_folder, monkeypatch):
    """A NaN stops the run: W&B's run must end with exit code 1 (failed), a clean run with 0."""
    import train as train_module

    finished: list[int] = []

    class FakeRun:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def scalars(self, values: dict[str, float], step: int) -> None:
            pass

        def image(self, tag: str, chw: Any, step: int) -> None:
            pass

        def close(self, failed: bool = False) -> None:
            finished.append(1 if failed else 0)

    monkeypatch.setattr(train_module, "WandbWriter", FakeRun)
    path = small_train_yaml(tmp_path, hr_folder)
    train(path, [WANDB, "train.total_iter=2", "val.val_freq=2"])
    with pytest.raises(RuntimeError, match="NaN or inf"):
        train(path, [WANDB, "train.optim_g.lr=1.0e+30", "train.total_iter=40", "logger.print_freq=20"])
    assert finished == [0, 1]


# ---------------------------------------------------------------------------------- --debug


@pytest.mark.parametrize("how", ["flag", "name"])
def test_debug_run_is_short_validates_and_saves(tmp_path, hr_folder, how):
    path = small_train_yaml(tmp_path, hr_folder)
    # an absolute step beyond the short run is scaled with it (16 of 20 -> 6 of 8); the file's
    # fraction (scheduler milestone 0.5T) follows the short total
    overrides = ["train.ema_update_after=16"]
    for _ in range(2):  # a second debug run replaces the first one's folder rather than archiving it
        if how == "flag":
            assert main(["-opt", str(path), "--debug"] + [a for o in overrides for a in ("-o", o)]) == 0
        else:
            train(path, ["name=debug_tiny", *overrides])
    exps = sorted(p.name for p in (tmp_path / "exp").iterdir())
    assert exps == ["debug_tiny"]  # never the real run's folder, no debug_debug_, no archives
    exp = tmp_path / "exp" / "debug_tiny"
    assert sorted(p.name for p in (exp / "models").glob("net_g_[0-9]*")) == ["net_g_4.safetensors",
                                                                            "net_g_8.safetensors"]
    assert [p.name for p in list_states(exp / "training_states")] == ["4.state", "8.state"]
    saved = yaml.safe_load((exp / "options.yml").read_text())
    assert saved["train"]["total_iter"] == 8
    assert saved["train"]["scheduler"]["milestones"] == [4]  # 0.5T of the short run
    assert saved["train"]["ema_update_after"] == 6
    assert saved["val"]["val_freq"] == 4 and saved["logger"]["save_checkpoint_freq"] == 4
    assert saved["logger"]["print_freq"] == 1
    assert saved["datasets"]["val"]["indices"] == [0]  # one validation image
    metrics = json.loads((exp / "metrics.json").read_text())
    assert metrics["iter"] == 8 and "psnr" in metrics["metrics"]["tinyval"]
    [log] = exp.glob("train_*.log")
    text = log.read_text()
    assert "debug mode: name debug_tiny; total_iter 20 -> 8" in text
    assert "train.ema_update_after 16 -> 6" in text
    assert "validation tinyval @ 4" in text and "validation tinyval @ 8" in text
    assert all(f"iter {i}/8" in text for i in range(1, 9))


def test_debug_scales_absolute_steps_that_would_outlast_the_short_run(tmp_path, hr_folder, capsys):
    """A cosine warm-up of 15 of 20 iterations is valid, but not of 8: debug mode scales it (to 6)
    instead of failing; a ramp keeps its end after its start; the schedule keys move too."""
    path = small_train_yaml(tmp_path, hr_folder)
    overrides = ["train.scheduler={type: CosineAnnealingLR, warmup_iter: 15}",
                 "train.losses[0].loss_weight={type: linear, from: 10, to: 11, start: 0.5, end: 1.0}",
                 "datasets.train.batch_size_per_gpu={0: 2, 19: 3}"]
    with pytest.raises(OptionsError, match="warmup_iter .15. must be below total_iter .8."):
        train(path, [*overrides, "train.total_iter=8"], check=True)  # what a plain cut to 8 would meet
    opt, notice = load_run_options(path, overrides, debug=True)
    assert opt.train.total_iter == 8 and opt.name == "debug_tiny"
    assert opt.train.scheduler["warmup_iter"] == 6 and opt.train.scheduler["total_iter"] == 8
    assert opt.train.losses[0]["loss_weight"].to_spec() == {"type": "linear", "from": 4, "to": 5,
                                                             "start": 0.5, "end": 1.0}
    assert opt.datasets["train"]["batch_size_per_gpu"].to_spec() == {0: 2, 8: 3}
    assert "train.scheduler.warmup_iter 15 -> 6" in notice
    assert "datasets.train.batch_size_per_gpu[19] 19 -> 8" in notice
    opt, notice = load_run_options(path, [WANDB], debug=True)
    assert opt.logger.wandb.mode == "offline" and notice.endswith("; W&B offline")  # debug runs stay out of the project
    assert main(["-opt", str(path), "--debug", "--check"] + [a for o in overrides for a in ("-o", o)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# debug mode: name debug_tiny;") and "total_iter: 8" in out
    assert not (tmp_path / "exp").exists()
