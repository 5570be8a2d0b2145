"""End-to-end training behaviour on CPU: resume equivalence, Ctrl+C, NaN, logs, retention."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import ROOT, small_train_yaml
from train import train
from utils.checkpoint import list_states


def _weights(exp: Path, label: str, iteration: int) -> dict[str, torch.Tensor]:
    return load_file(str(exp / "models" / f"{label}_{iteration}.safetensors"))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_gives_identical_weights(tmp_path, hr_folder):
    """20 iterations straight == 10 iterations, a resume from the saved state, 10 more."""
    path = small_train_yaml(tmp_path, hr_folder)
    straight = Path(train(path, ["name=straight", "datasets.train.num_worker_per_gpu=1"])["experiment_dir"])
    half = Path(train(path, ["name=half", "train.total_iter=20", "datasets.train.num_worker_per_gpu=1",
                             "logger.save_checkpoint_freq=10"])["experiment_dir"])
    # Cut the second run back to its state at 10 and continue from there in a fresh process state.
    for extra in ("20.state",):
        (half / "training_states" / extra).unlink()
    torch.manual_seed(999)  # a resume must not depend on the caller's RNG
    resumed = train(path, ["name=half", "datasets.train.num_worker_per_gpu=1"], auto_resume=True)
    assert resumed["iter"] == 20
    for label in ("net_g", "net_g_ema"):
        _assert_same(_weights(straight, label, 20), _weights(half, label, 20))
    # And the resumed run really continued rather than restarting: its weights differ from iteration 10.
    assert not torch.equal(_weights(half, "net_g", 10)["conv_first.weight"],
                           _weights(half, "net_g", 20)["conv_first.weight"])
    s_state = torch.load(straight / "training_states" / "20.state", weights_only=False)
    r_state = torch.load(half / "training_states" / "20.state", weights_only=False)
    assert s_state["data"] == r_state["data"]
    assert s_state["model"]["schedulers"] == r_state["model"]["schedulers"]


def _log_once_past(exp: Path, marker: str, seconds: float) -> Path:
    """The run's log file, once it holds ``marker`` (or ``seconds`` have passed)."""
    deadline = time.time() + seconds
    while time.time() < deadline and not list(exp.glob("train_*.log")):
        time.sleep(0.2)
    log_file = next(exp.glob("train_*.log"))
    while time.time() < deadline and marker not in log_file.read_text():
        time.sleep(0.2)
    return log_file


def test_stop_flag_counts_a_burst_as_one_request_and_a_later_signal_as_stop_now():
    from train import _StopFlag

    chld = signal.getsignal(signal.SIGCHLD)
    flag = _StopFlag()
    flag.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun's forwarded copy, a moment later: the same request
        assert flag.requested
        # worker deaths no longer interrupt the save this stop is for
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
        flag._first -= 2 * _StopFlag.SAME_REQUEST_S  # a signal after the burst means: stop now
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGCHLD) == chld and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_group_sigterm_under_torchrun_saves_one_state_on_both_ranks(tmp_path, hr_folder):
    """A group-wide SIGTERM (as a scheduler sends it) reaches torchrun, both ranks and their data
    workers; the ranks run on to the next logging step, where they agree to stop (the workers keep
    serving), and save; torchrun's forwarded second SIGTERM does not turn that into a hard stop."""
    from tests.test_ddp import _free_port

    path = small_train_yaml(tmp_path, hr_folder)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "train.py", "-opt", str(path), "-o", "train.total_iter=100000", "-o", "logger.print_freq=10",
           "-o", "logger.save_checkpoint_freq=100000", "-o", "val.val_freq=100000",
           "-o", "datasets.train.num_worker_per_gpu=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    exp = tmp_path / "exp" / "tiny"
    log_file = _log_once_past(exp, "iter 30/", 240)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    text = log_file.read_text()
    assert "saved; continue with" in text, err[-3000:]
    states = list_states(exp / "training_states")
    assert len(states) == 1 and int(states[0].stem) % 10 == 0  # a logging step, the same on both ranks
    assert "killed by signal" not in err and "exited unexpectedly" not in err


@pytest.mark.parametrize(("sig", "group"), [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGTERM, True)])
def test_ctrl_c_saves_state_and_auto_resume_continues(tmp_path, hr_folder, sig, group):
    """The signal to train.py alone, or (``group``: as `timeout`, Slurm or a terminal's Ctrl+C send
    it) to its whole process group, whose data workers then die before the final save."""
    path = small_train_yaml(tmp_path, hr_folder)
    cmd = [sys.executable, "train.py", "-opt", str(path), "-o", "train.total_iter=100000",
           "-o", "logger.print_freq=1", "-o", "logger.save_checkpoint_freq=100000", "-o", "val.val_freq=100000",
           "-o", f"datasets.train.num_worker_per_gpu={2 if group else 0}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"}, start_new_session=group)
    exp = tmp_path / "exp" / "tiny"
    log_file = _log_once_past(exp, "iter 30/", 120)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    states = list_states(exp / "training_states")
    assert len(states) == 1
    stopped_at = int(states[0].stem)
    assert stopped_at >= 30
    assert (exp / "models" / f"net_g_{stopped_at}.safetensors").is_file()
    assert "--auto_resume" in log_file.read_text()
    result = train(path, [f"train.total_iter={stopped_at + 3}"], auto_resume=True)
    assert result["iter"] == stopped_at + 3


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoints(tmp_path, hr_folder):
    plugin = tmp_path / "nan_loss.py"
    plugin.write_text(
        "import torch\nfrom torch import nn\nfrom utils.registry import LOSS_REGISTRY\n\n\n"
        "@LOSS_REGISTRY.register()\nclass NaNAfterLoss(nn.Module):\n"
        "    def __init__(self, after: int = 12) -> None:\n"
        "        super().__init__()\n        self.after = after\n        self.calls = 0\n\n"
        "    def forward(self, pred, target):\n        self.calls += 1\n"
        "        bad = float('nan') if self.calls > self.after else 1.0\n"
        "        return (pred - target).abs().mean() * bad\n"
    )
    path = small_train_yaml(tmp_path, hr_folder)
    data = yaml.safe_load(path.read_text())
    data["imports"] = [str(plugin)]
    data["train"]["losses"] = [{"type": "NaNAfterLoss", "after": 12}]
    path.write_text(yaml.safe_dump(data))
    from models.sr_model import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="NaN or inf before iteration 15"):
        train(path)
    exp = tmp_path / "exp" / "tiny"
    assert [p.name for p in list_states(exp / "training_states")] == ["10.state"]
    saved = _weights(exp, "net_g", 10)
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert not (exp / "models" / "net_g_15.safetensors").exists()


def test_logs_tensorboard_retention_and_saved_options(tmp_path, hr_folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, ["logger.use_tb_logger=true", "logger.save_checkpoint_freq=5", "logger.keep_last=2",
                          "val.save_img=true"])
    exp = Path(result["experiment_dir"])
    assert [p.name for p in list_states(exp / "training_states")] == ["15.state", "20.state"]
    assert sorted(p.name for p in (exp / "models").glob("net_g_[0-9]*")) == ["net_g_15.safetensors",
                                                                            "net_g_20.safetensors"]
    assert (exp / "models" / "net_g_best.safetensors").is_file()
    acc = EventAccumulator(str(exp / "tb_logger"), size_guidance={"images": 0}).Reload()
    tags = acc.Tags()
    assert {"losses/l1", "losses/total", "lr_net_g", "val_metrics/psnr"} <= set(tags["scalars"])
    psnr_events = acc.Scalars("val_metrics/psnr")
    assert [e.step for e in psnr_events] == [10, 20]
    assert psnr_events[-1].value == pytest.approx(result["metrics"]["tinyval"]["psnr"], rel=1e-6)
    lrs = {e.step: e.value for e in acc.Scalars("lr_net_g")}
    assert lrs[5] == pytest.approx(1e-3) and lrs[20] == pytest.approx(5e-4)  # milestone 0.5T halves it
    assert any(t.startswith("val_images/tinyval/") for t in tags["images"])
    assert len(list((exp / "visualization" / "tinyval").glob("*_20.png"))) == 6
    # The saved options reproduce the run's configuration.
    saved = yaml.safe_load((exp / "options.yml").read_text())
    assert saved["train"]["scheduler"]["milestones"] == [10]
    # Running again without resume archives the old experiment instead of overwriting it.
    train(path, ["train.total_iter=2", "val.val_freq=2"])
    assert len(list((tmp_path / "exp").glob("tiny_archived_*"))) == 1


def test_gradient_accumulation_and_clipping(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    result = train(path, ["train.accumulate_grad_batches=2", "train.grad_clip=0.01", "train.total_iter=4",
                          "val.val_freq=4"])
    state = torch.load(Path(result["experiment_dir"]) / "training_states" / "4.state", weights_only=False)
    assert state["data"] == {"epoch": 2, "position": 4, "batches": 8, "overrides": {}}  # 8 batches of a 3-batch epoch
    assert state["model"]["optimizers"]["g"]["state"][0]["step"].item() == 4


def test_missing_device_is_a_clear_error(tmp_path, hr_folder):
    from utils.device import select_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="'cuda' was requested but CUDA is not available"):
        select_device("cuda")
    assert select_device("auto").type in ("cpu", "mps")
    path = small_train_yaml(tmp_path, hr_folder)
    proc = subprocess.run([sys.executable, "train.py", "-opt", str(path), "-o", "device=cuda:0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "'cuda:0' was requested but CUDA is not available" in proc.stderr
    assert "Traceback" not in proc.stderr
