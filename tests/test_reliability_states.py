"""Checkpoints, training states, resume and saving: nothing lost, nothing silent, nothing executed.

Each test guards one row of docs/reliability.md. Most damage a private copy of one shared
20-iteration run (states and weights at 10 and 20) and check what a resume or a save does then.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

import train as train_module
from models.base_model import NonFiniteLossError
from tests.conftest import ROOT, small_train_yaml, write_png
from train import main, resume_command, train
from utils.checkpoint import (
    CheckpointError,
    UnsafeStateError,
    find_resume_state,
    list_states,
    load_training_state,
    plain_state,
    rng_state,
    set_rng_state,
)
from utils.weights import (
    CheckpointWriteError,
    NonFiniteWeightsError,
    atomic_write,
    atomic_write_file,
    save_network,
)

KILL_BUDGET_S = 30.0  # wall time of the kill -9 cycles (the reference and the final run come on top)


# ------------------------------------------------------------------ helpers


def _images(folder: Path) -> Path:
    """The six 48x48 images of conftest's ``hr_folder``, for a module-scoped run."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48]
    for i in range(6):
        base = np.stack([np.sin((xx + 3 * i) / (4 + c)) + np.cos(yy / (3 + c)) for c in range(3)], -1)
        img = np.clip((base + rng.normal(0, 0.1, base.shape) + 2) / 4 * 255, 0, 255).astype(np.uint8)
        write_png(folder / f"img{i:02d}.png", img)
    return folder


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run of small_train_yaml: states and weights at 10 and 20, net_g_best. Never modified."""
    root = tmp_path_factory.mktemp("base")
    hr = _images(root / "hr")
    train(small_train_yaml(root, hr))
    return root


def _copy_run(base: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the base run: (its option file, its experiment folder)."""
    shutil.copytree(base / "exp", tmp_path / "exp")
    return small_train_yaml(tmp_path, base / "hr"), tmp_path / "exp" / "tiny"


def _weights(exp: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(exp / "models" / f"{name}.safetensors"))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _newest_log(exp: Path) -> str:
    return sorted(exp.glob("train_*.log"), key=lambda p: p.stat().st_mtime)[-1].read_text()


def _leftovers(exp: Path) -> list[str]:
    return sorted(p.name for p in exp.rglob("*.tmp"))


class _Exploit:
    """Pickles as a call of os.system: what a crafted .state would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _write_exploit(path: Path, marker: Path, form: str = "zip") -> None:
    """A state whose unpickling calls os.system: torch's zip format, its legacy format, a raw pickle."""
    state = {"iter": 30, "model": _Exploit(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        if form == "raw":
            pickle.dump(state, f)
        else:
            torch.save(state, f, _use_new_zipfile_serialization=form == "zip")


# ------------------------------------------------------ 1: no code is executed


@pytest.mark.parametrize("form", ["zip", "legacy", "raw"])
def test_state_pickling_a_callable_is_refused_and_nothing_runs(tmp_path, form):
    control = tmp_path / "control"
    _write_exploit(tmp_path / "control.state", control, form)
    with open(tmp_path / "control.state", "rb") as f:  # the exploit is real: unrestricted unpickling runs it
        pickle.load(f) if form == "raw" else torch.load(f, weights_only=False)
    assert control.exists()

    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.state"
    _write_exploit(bad, marker, form)
    # torch's formats are unpickled by the restricted unpickler and refused by name; a raw pickle is
    # not a torch file at all and is never unpickled
    expected = CheckpointError if form == "raw" else UnsafeStateError
    with pytest.raises(expected, match=rf"(refusing to load training state|training state) {bad}") as err:
        load_training_state(bad)
    assert form == "raw" or "posix.system" in str(err.value)
    assert not marker.exists()


def test_crafted_state_via_auto_resume_or_resume_state_stops_cleanly(tmp_path, hr_folder, capsys):
    path = small_train_yaml(tmp_path, hr_folder)
    marker = tmp_path / "pwned"
    bad = tmp_path / "exp" / "tiny" / "training_states" / "30.state"
    _write_exploit(bad, marker)
    # dropped into training_states/ and picked by --auto_resume: refused, a clear message, no traceback
    assert main(["-opt", str(path), "--auto_resume"]) == 2
    err = capsys.readouterr().err
    assert f"refusing to load training state {bad}: it holds a pickled Python object (posix.system)" in err
    assert "Traceback" not in err
    # given as path.resume_state: the same
    with pytest.raises(UnsafeStateError, match=str(bad)):
        train(path, [f"path.resume_state={bad}"])
    assert not marker.exists()
    assert bad.exists()  # refused, not renamed aside: tampering needs a person, not a silent fallback


def test_states_hold_only_tensors_and_plain_values(tmp_path, hr_folder):
    """Every producer of state content (runner, EMA, data stream, automations, scores) writes what
    weights_only loads without any allowlist; a resume then runs through the safe loader."""
    path = small_train_yaml(tmp_path, hr_folder)
    opts = ["train.total_iter=10", "val.val_freq=5", "logger.save_checkpoint_freq=5",
            "logger.keep_best={metric: psnr, k: 1}", "train.swa={start: 2, update_every: 2}",
            "train.losses=[{type: L1Loss, loss_weight: 1.0}, {type: GradientLoss, loss_weight: 0.5}]",
            "train.dynamic_loss_scheduling={enabled: true}",
            "train.training_automations={early_stopping: {patience: 100}, "
            "intelligent_learning_rate_scheduler: {strategy: cosine, cooldown: 1}}"]
    exp = Path(train(path, opts)["experiment_dir"])
    for state_file in list_states(exp / "training_states"):
        state = torch.load(state_file, map_location="cpu", weights_only=True)  # no allowlist at all
        assert isinstance(state["model"]["rng"]["numpy"]["key"], torch.Tensor)
        assert set(state["loop"]["automations"]) >= {"swa", "early_stopping", "intelligent_learning_rate_scheduler",
                                                     "dynamic_loss_scheduling"}
    assert train(path, [*opts[1:], "train.total_iter=12"], auto_resume=True)["iter"] == 12


def test_plain_state_converts_numpy_and_refuses_objects():
    state = plain_state({"a": np.float64(1.5), "b": [np.int64(3), np.arange(3)], "c": (None, "x")})
    assert state["a"] == 1.5 and type(state["a"]) is float and type(state["b"][0]) is int
    assert torch.equal(state["b"][1], torch.arange(3))
    with pytest.raises(TypeError, match=r"state\.model\.odd is a builtins\.object"):
        plain_state({"model": {"odd": object()}})


def test_rng_state_round_trip_and_legacy_numpy_states_load(tmp_path):
    saved = rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(saved)
    assert (random.random(), np.random.rand()) == draws[:2] and torch.equal(torch.rand(1), draws[2])
    # a state written before RNG states were tensors (numpy's tuple with its ndarray) still loads, safely
    legacy = {**saved, "numpy": np.random.get_state()}
    torch.save({"iter": 1, "model": {"rng": legacy}}, tmp_path / "1.state")
    loaded = load_training_state(tmp_path / "1.state")
    set_rng_state(loaded["model"]["rng"])
    after = np.random.rand()
    np.random.set_state(legacy["numpy"])
    assert np.random.rand() == after


# ------------------------------------------------------- 2: no NaN weight file


@pytest.mark.parametrize("source", ["loss", "ema"])
def test_nan_before_a_validation_off_the_print_steps_writes_no_weights(tmp_path, hr_folder, monkeypatch, source):
    """NaN appears at iteration 7; 8 validates but does not log (print_freq 5): the run must stop
    there, before a net_g_best full of NaN is written (the first validation always wins 'best')."""
    path = small_train_yaml(tmp_path, hr_folder)
    if source == "loss":
        plugin = tmp_path / "nan_loss.py"
        plugin.write_text(
            "from torch import nn\nfrom utils.registry import LOSS_REGISTRY\n\n\n"
            "@LOSS_REGISTRY.register()\nclass NaNFromLoss(nn.Module):\n"
            "    def __init__(self) -> None:\n        super().__init__()\n        self.calls = 0\n\n"
            "    def forward(self, pred, target):\n        self.calls += 1\n"
            "        return (pred - target).abs().mean() * (float('nan') if self.calls > 6 else 1.0)\n")
        data = yaml.safe_load(path.read_text())
        data["imports"] = [str(plugin)]
        data["train"]["losses"] = [{"type": "NaNFromLoss"}]
        path.write_text(yaml.safe_dump(data))
        expected = "the training loss became NaN or inf before iteration 8"
    else:  # the loss stays finite; only the EMA copy (the validated network) goes bad
        from utils.ema import ModelEMA

        update = ModelEMA.update

        def poisoned(self, net, step):
            update(self, net, step)
            if step == 7:
                next(self.module.parameters()).data.fill_(float("nan"))

        monkeypatch.setattr(ModelEMA, "update", poisoned)
        expected = r"the weights \(net_g_ema\.\S+\) became NaN or inf before iteration 8"
    with pytest.raises(NonFiniteLossError, match=expected):
        train(path, ["logger.print_freq=5", "val.val_freq=8", "logger.save_checkpoint_freq=4"])
    exp = tmp_path / "exp" / "tiny"
    assert not (exp / "models" / "net_g_best.safetensors").exists()
    assert [p.name for p in list_states(exp / "training_states")] == ["4.state"]
    for name in ("net_g_4", "net_g_ema_4"):
        assert all(torch.isfinite(v).all() for v in _weights(exp, name).values())


def test_save_network_refuses_nonfinite_weights_and_keeps_the_previous_file(tmp_path):
    net = torch.nn.Conv2d(3, 3, 3)
    path = tmp_path / "net_g_best.safetensors"
    save_network(net, path)
    before = path.read_bytes()
    with torch.no_grad():
        net.bias[1] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=rf"refusing to write {path}: 'bias' holds NaN or inf"):
        save_network(net, path)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


# ------------------------------------------------- 3, 9: unusable newest state


def test_auto_resume_skips_a_truncated_newest_state(base_run, tmp_path):
    path, exp = _copy_run(base_run, tmp_path)
    newest = exp / "training_states" / "20.state"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    assert train(path, auto_resume=True)["iter"] == 20
    log = _newest_log(exp)
    assert f"skipped {newest}: training state {newest} is unreadable (truncated or corrupt)" in log
    assert "renamed to 20.state.corrupt" in log and "resumed from" in log and "10.state at iteration 10" in log
    assert (exp / "training_states" / "20.state.corrupt").is_file()
    for name in ("net_g_20", "net_g_ema_20"):  # continued from 10, bit for bit
        _assert_same(_weights(exp, name), _weights(base_run / "exp" / "tiny", name))


def test_auto_resume_skips_a_newest_state_holding_nan(base_run, tmp_path):
    path, exp = _copy_run(base_run, tmp_path)
    newest = exp / "training_states" / "20.state"
    state = torch.load(newest, weights_only=True)
    first = next(iter(state["model"]["nets"]["net_g"]))
    state["model"]["nets"]["net_g"][first].view(-1)[0] = float("nan")
    torch.save(state, newest)
    assert train(path, auto_resume=True)["iter"] == 20
    assert f"holds NaN or inf (state.model.nets.net_g.{first})" in _newest_log(exp)
    _assert_same(_weights(exp, "net_g_20"), _weights(base_run / "exp" / "tiny", "net_g_20"))


def test_missing_weights_beside_a_good_state_do_not_matter(base_run, tmp_path):
    path, exp = _copy_run(base_run, tmp_path)
    (exp / "training_states" / "20.state").unlink()
    for name in ("net_g_10", "net_g_ema_10"):  # the newest state's weight files are gone
        (exp / "models" / f"{name}.safetensors").unlink()
    assert train(path, auto_resume=True)["iter"] == 20
    for name in ("net_g_20", "net_g_ema_20"):
        _assert_same(_weights(exp, name), _weights(base_run / "exp" / "tiny", name))


def test_explicit_unusable_resume_state_is_an_error_naming_it(base_run, tmp_path, capsys):
    path, exp = _copy_run(base_run, tmp_path)
    newest = exp / "training_states" / "20.state"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=rf"training state {newest} is unreadable"):
        train(path, [f"path.resume_state={newest}"])  # no fallback to 10.state
    assert newest.exists() and not list(exp.rglob("*.corrupt"))
    assert main(["-opt", str(path), "-o", f"path.resume_state={newest}"]) == 2
    err = capsys.readouterr().err
    assert str(newest) in err and "Traceback" not in err and "PytorchStreamReader" in err
    # with --auto_resume, states that all fail are an error too (not a silent fresh start)
    older = exp / "training_states" / "10.state"
    older.write_bytes(b"not a state")
    with pytest.raises(CheckpointError, match=r"no training state in .* can be resumed from"):
        find_resume_state(exp / "training_states")


def test_partial_files_of_interrupted_writes_are_removed_and_reported(base_run, tmp_path):
    path, exp = _copy_run(base_run, tmp_path)
    junk = [exp / "models" / "net_g_30.safetensors.tmp", exp / "training_states" / "30.state.tmp"]
    for tmp in junk:
        tmp.write_bytes(b"half a file")
    assert train(path, auto_resume=True)["iter"] == 20  # resumes at 20: nothing left to train
    assert _leftovers(exp) == []
    log = _newest_log(exp)
    for tmp in junk:
        assert f"removed {tmp}: a partial file left by an interrupted write" in log
    assert not (exp / "training_states" / "30.state").exists()


# --------------------------------------------------- 4: disk full, read-only


def _full_disk_fsync(monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """fsync of a file ending in ``suffix`` fails with ENOSPC (where quotas and delayed
    allocation report a full disk), after its bytes were written: a partial file exists."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(suffix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _torch_save_fills_disk(obj, f, *args, **kwargs) -> None:
    f.write(b"PK" + b"\0" * 4000)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell files apart")
@pytest.mark.parametrize("target", ["weights", "state"])
def test_disk_full_stops_with_a_clear_message_and_keeps_everything(base_run, tmp_path, monkeypatch, capsys, target):
    path, exp = _copy_run(base_run, tmp_path)
    # every earlier state and numbered weight file (net_g_best may legitimately improve at 25)
    before = {p: p.read_bytes() for p in sorted(exp.rglob("*[0-9].s*")) if p.suffix in (".state", ".safetensors")}
    assert len(before) == 6
    if target == "weights":
        _full_disk_fsync(monkeypatch, ".safetensors.tmp")
        wanted = rf"cannot write {exp / 'models'}/net_g_\w+\.safetensors: no space left on device"
    else:
        monkeypatch.setattr(torch, "save", _torch_save_fills_disk)
        wanted = rf"cannot write {exp / 'training_states' / '25.state'}: no space left on device"
    assert main(["-opt", str(path), "--auto_resume", "-o", "train.total_iter=25",
                 "-o", "logger.save_checkpoint_freq=5"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # the console may wrap a long line
    assert "error: CheckpointWriteError: " in err and "Traceback" not in err
    assert re.search(wanted, err), err
    assert _leftovers(exp) == []
    assert not (exp / "training_states" / "25.state").exists()
    for p, data in before.items():
        assert p.read_bytes() == data, p


_RANK0_DISK_FULL = """
import errno, os, runpy, sys
sys.path.insert(0, os.getcwd())
if os.environ.get("RANK") == "0":
    real = os.fsync
    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".safetensors.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)
    os.fsync = fsync
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell files apart")
def test_ddp_write_failure_on_rank_0_stops_every_rank(tmp_path, hr_folder):
    """Rank 0's disk is full at the first checkpoint: rank 1 must stop too (not wait forever in the
    next gradient all-reduce), each with a clear message."""
    import socket

    path = small_train_yaml(tmp_path, hr_folder)
    wrapper = tmp_path / "rank0_disk_full.py"
    wrapper.write_text(_RANK0_DISK_FULL)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(wrapper), "-opt", str(path), "-o", "train.total_iter=6", "-o", "val.val_freq=100",
           "-o", "logger.save_checkpoint_freq=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "COLUMNS": "300"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode != 0
    err = " ".join(proc.stderr.split())
    models = tmp_path / "exp" / "tiny" / "models"
    assert f"error: CheckpointWriteError: cannot write {models}/net_g_3.safetensors: no space left on device" in err
    assert "error: CheckpointWriteError: rank 0 could not write the checkpoint of iteration 3" in err
    ranks = err.split("torch/distributed/elastic")[0]  # torchrun then reports the failed children itself
    assert "Traceback" not in ranks
    assert _leftovers(tmp_path / "exp" / "tiny") == []


def _permissions_ignored(folder: Path) -> bool:
    """Whether this process may write into a 0555 folder (root, unless it dropped CAP_DAC_OVERRIDE)."""
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
        return True
    except PermissionError:
        return False
    finally:
        folder.chmod(0o755)


def test_read_only_models_folder_stops_with_a_clear_message(base_run, tmp_path, capsys):
    if _permissions_ignored(tmp_path / "probe"):
        pytest.skip(f"this process (euid {os.geteuid()}) ignores folder permissions, as root does")
    path, exp = _copy_run(base_run, tmp_path)
    models = exp / "models"
    models.chmod(0o555)
    try:
        assert main(["-opt", str(path), "--auto_resume", "-o", "train.total_iter=25"]) == 2
    finally:
        models.chmod(0o755)
    err = " ".join(capsys.readouterr().err.split())
    assert f"cannot write {models}/" in err and "permission denied" in err and "Traceback" not in err
    assert [p.name for p in list_states(exp / "training_states")] == ["10.state", "20.state"]
    assert _leftovers(exp) == []


def test_write_failures_name_the_file_and_the_cause(tmp_path, monkeypatch):
    path = tmp_path / "20.state"
    path.write_bytes(b"the earlier file")

    def torch_internal(f) -> None:  # what torch.save says on a full disk: no path, no errno
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 72896 vs 72796")

    monkeypatch.setattr("utils.weights.shutil.disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(CheckpointWriteError, match=rf"cannot write {path}: no space left on device \(0\.0 MiB free"):
        atomic_write_file(path, torch_internal)
    monkeypatch.undo()

    def denied(f) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    with pytest.raises(CheckpointWriteError, match=rf"cannot write {path}: permission denied"):
        atomic_write_file(path, denied)
    assert path.read_bytes() == b"the earlier file" and _leftovers(tmp_path) == []


def test_path_based_atomic_write_keeps_its_contract(tmp_path):
    """onnx and tifffile writers get a path: their errors propagate unchanged, the partial file goes."""
    path = tmp_path / "out.onnx"

    def fails(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise ValueError("the writer's own error")

    with pytest.raises(ValueError, match="the writer's own error"):
        atomic_write(path, fails)
    assert not path.exists() and _leftovers(tmp_path) == []
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(b"done"))
    assert path.read_bytes() == b"done"


# ------------------------------------------------ 5, 6, 7: hint, archive, modes


def test_resume_hint_after_ctrl_c_keeps_every_override(tmp_path, hr_folder, monkeypatch):
    path = small_train_yaml(tmp_path, hr_folder)
    overrides = ["train.total_iter=12", "name=my run", "val.val_freq=6", "logger.print_freq=2"]
    monkeypatch.setattr(train_module, "stop_agreed", lambda requested, it, freq: it == 3)  # Ctrl+C at 3
    assert train(path, overrides)["interrupted"]
    monkeypatch.undo()
    exp = tmp_path / "exp" / "my run"
    hint = _newest_log(exp).split("saved; continue with: ", 1)[1].splitlines()[0]
    expected = (f"python train.py -opt {shlex.quote(str(path))} -o train.total_iter=12 -o 'name=my run' "
                "-o val.val_freq=6 -o logger.print_freq=2 --auto_resume")
    assert hint == expected
    argv = shlex.split(hint)
    assert argv[:2] == ["python", "train.py"] and main(argv[2:]) == 0  # the printed command continues the run
    assert (exp / "models" / "net_g_12.safetensors").is_file() and "resumed from" in _newest_log(exp)
    # --debug is kept; a pinned path.resume_state is dropped (it would resume the old state again)
    assert resume_command("a b.yml", ["x=1", "path.resume_state=/s/3.state"], debug=True) == \
        "python train.py -opt 'a b.yml' -o x=1 --debug --auto_resume"


def test_archiving_an_earlier_run_is_announced(tmp_path, hr_folder, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one console line per message
    path = small_train_yaml(tmp_path, hr_folder)
    train(path, ["train.total_iter=1", "val.val_freq=1"])
    capsys.readouterr()
    train(path, ["train.total_iter=1", "val.val_freq=1"])
    exp = tmp_path / "exp" / "tiny"
    archived = next((tmp_path / "exp").glob("tiny_archived_*"))
    message = f"an earlier run was in {exp}: moved to {archived} (archived)"
    assert message in _newest_log(exp)
    assert message in " ".join(capsys.readouterr().err.split())


def test_weight_files_get_the_permissions_of_every_other_file(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    old = os.umask(0o027)
    try:
        exp = Path(train(path, ["train.total_iter=1", "val.val_freq=1"])["experiment_dir"])
    finally:
        os.umask(old)
    expected = (exp / "options.yml").stat().st_mode & 0o777
    assert expected == 0o640
    for name in ("models/net_g_1.safetensors", "models/net_g_best.safetensors", "training_states/1.state"):
        assert (exp / name).stat().st_mode & 0o777 == expected, name


# ------------------------------------------------------------------- 8: kill -9


def _after_kill(exp: Path) -> str:
    """What a kill left: always a resumable folder (never a corrupt state); ``.tmp`` files mean it
    landed inside a checkpoint write."""
    point = find_resume_state(exp / "training_states")  # raises if every state were unusable
    assert point.skipped == [], point.skipped  # atomic writes: a kill never leaves a corrupt state
    where = "before the first state" if point.path is None else f"state {point.path.stem}"
    return where + (" (inside a write: " + ", ".join(_leftovers(exp)) + ")" if _leftovers(exp) else "")


# Runs train.py, but SIGKILLs itself inside its KILL_WRITE-th atomic write, after KILL_BYTES bytes
# of the file (or, for a smaller file, once it is written but not yet renamed into place).
_SELF_KILLER = """
import os, runpy, signal, sys
sys.path.insert(0, os.getcwd())
import utils.checkpoint, utils.weights

real, state = utils.weights.atomic_write_file, {"writes": 0}
target, cut = int(os.environ["KILL_WRITE"]), int(os.environ["KILL_BYTES"])

class Dying:
    def __init__(self, f):
        self.f, self.n = f, 0
    def write(self, data):
        written = self.f.write(data)
        self.n += written
        if self.n >= cut:
            os.kill(os.getpid(), signal.SIGKILL)
        return written
    def flush(self):
        self.f.flush()

def atomic_write_file(path, write_fn):
    state["writes"] += 1
    if state["writes"] != target:
        return real(path, write_fn)
    def dying(f):
        write_fn(Dying(f))
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, dying)

utils.weights.atomic_write_file = utils.checkpoint.atomic_write_file = atomic_write_file
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def _watch(proc: subprocess.Popen, steps: int) -> tuple[threading.Event, list[bytes], threading.Thread]:
    """A thread keeping the tail of ``proc``'s console; the event is set once it has logged
    ``steps`` training steps (print_freq 1: one line per step)."""
    reached = threading.Event()
    tail: list[bytes] = []

    def read() -> None:
        seen = 0
        for line in proc.stderr:
            tail[:] = [*tail[-50:], line]
            seen += b"iter " in line
            if seen >= steps:
                reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reached, tail, reader


def _run_and_kill(args: list[str], env: dict[str, str], rng: random.Random, killer: Path) -> str | None:
    """One start of the run, killed by SIGKILL at a seeded random moment; returns how, or None if
    the run finished first. Half the starts are killed from outside: one in five during start-up
    (0-3 s after launch), the others after their k-th step (k in 1..12) plus 0-50 ms, so the kills
    follow the run's progress whatever the machine's speed. The other half die inside a checkpoint
    write (the n-th write, after b bytes), which outside kills rarely hit on a tiny network."""
    inside = rng.random() < 0.5
    steps = rng.randint(1, 12)
    if inside:
        write, cut = rng.randint(1, 24), rng.randint(1, 30000)
        env = {**env, "KILL_WRITE": str(write), "KILL_BYTES": str(cut)}
        cmd = [sys.executable, str(killer), *args]
    else:
        cmd = [sys.executable, "train.py", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reached, tail, reader = _watch(proc, steps)
    if inside:
        delay, how = 120.0, f"write {write}, byte {cut}"
    elif rng.random() < 0.2:
        delay, how = rng.uniform(0.0, 3.0), "start-up +{:.2f} s"
    else:
        reached.wait(timeout=120)
        delay, how = rng.uniform(0.0, 0.05), f"step {steps} of this start +{{:.3f}} s"
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    reader.join()
    if proc.returncode == -signal.SIGKILL:
        return how.format(delay)
    assert proc.returncode == 0, b"".join(tail).decode(errors="replace")
    return None


def test_kill_9_at_random_moments_then_auto_resume_is_bit_for_bit(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    opts = ["train.total_iter=60", "logger.save_checkpoint_freq=1", "logger.keep_last=2", "logger.print_freq=1",
            "val.val_freq=20"]
    reference = Path(train(path, ["name=reference", *opts])["experiment_dir"])
    exp = tmp_path / "exp" / "tiny"
    killer = tmp_path / "self_killer.py"
    killer.write_text(_SELF_KILLER)
    args = ["-opt", str(path), "--auto_resume", *(a for o in opts for a in ("-o", o))]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "COLUMNS": "200"}  # as the reference
    rng = random.Random(20240611)
    outcomes: list[str] = []
    deadline = time.monotonic() + KILL_BUDGET_S
    while time.monotonic() < deadline:
        killed = _run_and_kill(args, env, rng, killer)
        if killed is None:
            outcomes.append("finished before its kill")
            break
        outcomes.append(f"killed at {killed}: {_after_kill(exp)}")
    print(f"\nkill -9 cycles: {sum(o.startswith('killed') for o in outcomes)}", *outcomes, sep="\n  ")
    assert any("(inside a write" in o for o in outcomes)
    result = train(path, opts, auto_resume=True)
    assert result["iter"] == 60
    assert load_training_state(exp / "training_states" / "60.state")["iter"] == 60
    for name in ("net_g_60", "net_g_ema_60", "net_g_best"):
        _assert_same(_weights(exp, name), _weights(reference, name))
    with safe_open(str(exp / "models" / "net_g_60.safetensors"), "pt") as f:
        assert f.metadata()["iteration"] == "60"


def test_truncated_safetensors_names_the_file(tmp_path: Path) -> None:
    """safetensors' own error ('incomplete metadata, file not fully covered') names no file."""
    from scripts.upscale import build_model
    from utils.weights import network_metadata, read_metadata, read_weights, save_network

    net = torch.nn.Conv2d(3, 3, 3)
    path = tmp_path / "half.safetensors"
    save_network(net, path, metadata=network_metadata({"type": "EDSR", "num_feat": 8, "num_block": 1}, 2))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    expected = rf"{re.escape(str(path))} \({len(raw) // 2} bytes\): not a complete \.safetensors file"
    for read in (read_weights, read_metadata, build_model):
        with pytest.raises(ValueError, match=expected):
            read(path)
