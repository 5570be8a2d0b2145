"""Option files and --check: nothing lost (a key written twice), nothing silent (a value read as
another), and what --check passes starts; each fault is reported as a message naming the file,
never as a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import train as train_module
from models import evaluation
from tests.conftest import ROOT, small_train_yaml
from utils.cli import run_reporting_errors
from utils.options import OptionsError, load_options

TEST_FILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "options" / "test").rglob("*.yml"))
GAN_FILE = ROOT / "options/train/ESRGAN/train_ESRGAN_x4.yml"


def _problems(path: Path, *overrides: str) -> dict[str, str]:
    """The problems of loading ``path`` with ``overrides``, by key path (messages of one key joined)."""
    with pytest.raises(OptionsError) as info:
        load_options(path, overrides)
    assert str(path) in str(info.value)
    out: dict[str, str] = {}
    for where, msg in info.value.problems:
        out[where] = f"{out[where]} | {msg}" if where in out else msg
    return out


def _write(tmp_path: Path, text: str, name: str = "opt.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _run(main, argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ silent wrong results


@pytest.mark.parametrize("value", ["2.0", "'2'", "true", "16", "0", "5", "null"])
def test_scale_that_is_not_a_whole_supported_number_is_refused(tmp_path, hr_folder, value):
    # before: anything but an int fell back to 4 for the networks and datasets while the top
    # level showed 2, so an x4 model trained without a word
    problems = _problems(small_train_yaml(tmp_path, hr_folder), f"scale={value}")
    assert list(problems) == ["scale"], problems  # nothing else is checked against a guessed scale


@pytest.mark.parametrize("scale", [1, 2, 3, 4, 8])
def test_the_scale_shown_is_the_scale_injected(tmp_path, hr_folder, scale):
    size = 8 * scale  # a gt_size every scale divides
    opt = load_options(small_train_yaml(tmp_path, hr_folder), [f"scale={scale}", f"datasets.train.gt_size={size}"])
    assert opt.scale == scale and opt.network_g["scale"] == scale
    assert {ds["scale"] for ds in opt.datasets.values()} == {scale}
    assert yaml.safe_load(opt.to_yaml())["network_g"]["scale"] == scale


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path, hr_folder):
    text = small_train_yaml(tmp_path, hr_folder).read_text()
    text += "train:\n  total_iter: 5\n  optim_g: {type: Adam, lr: 1.0e-3, lr: 2.0e-3}\n"
    text = text.replace("  val_freq: 10\n", "  val_freq: 10\n  val_freq: 4\n")
    lines = text.splitlines()
    first_train = lines.index("train:") + 1
    second_train = len(lines) - 2
    val_freq = [i + 1 for i, line in enumerate(lines) if line.startswith("  val_freq:")]
    problems = _problems(_write(tmp_path, text, "twice.yml"))
    assert f"at lines {first_train} and {second_train}" in problems["train"]
    assert f"at lines {val_freq[0]} and {val_freq[1]}" in problems["val.val_freq"]  # nested mappings too
    assert "at line" in problems["train.optim_g.lr"] and "columns" in problems["train.optim_g.lr"]


def test_anchors_and_merge_keys_are_not_duplicates(tmp_path, hr_folder):
    text = small_train_yaml(tmp_path, hr_folder).read_text()
    text = text.replace("  val:\n    name: tinyval\n", "  val: &val\n    name: tinyval\n")
    text = text.replace("network_g:", "  test_b:\n    <<: *val\n    name: other\nnetwork_g:")
    opt = load_options(_write(tmp_path, text, "merge.yml"))
    assert opt.datasets["test_b"]["name"] == "other"  # an explicit key overrides a merged one
    assert opt.datasets["test_b"]["dataroot_gt"] == str(hr_folder)


def test_a_key_written_twice_in_an_override_is_refused(tmp_path, hr_folder):
    problems = _problems(small_train_yaml(tmp_path, hr_folder), "train.optim_g={type: Adam, lr: 1, lr: 2}")
    assert "writes the key 'lr' twice" in problems["-o"]


@pytest.mark.parametrize(("override", "where", "words"), [
    ("logger.print_freq=true", "logger.print_freq", "whole number, got the boolean true"),
    ("val.save_img=1", "val.save_img", "expected true or false, got 1"),
    ("train.total_iter=20.0", "train.total_iter", "without a decimal point"),
    ("manual_seed='3'", "manual_seed", "without quotes"),
    ("num_gpu=true", "num_gpu", "boolean"),
    ("train.ema_decay=true", "train.ema_decay", "boolean"),
    ("train.training_automations={early_stopping: {enabled: 1, metric: psnr}}",
     "train.training_automations.early_stopping.enabled", "true or false"),
    # component keywords: typed by the registered class's constructor
    ("network_g.num_feat=true", "network_g.num_feat", "boolean"),
    ("network_g.residual_output=1", "network_g.residual_output", "true or false"),
    ("datasets.train.use_hflip=1", "datasets.train.use_hflip", "true or false"),
    ("datasets.train.num_worker_per_gpu=false", "datasets.train.num_worker_per_gpu", "boolean"),
    ("train.optim_g.lr=true", "train.optim_g.lr", "boolean"),
    ("datasets.train.lq_dropout={prob: 0.5, holes: [true, 2], size: [1, 2]}",
     "datasets.train.lq_dropout.holes[0]", "boolean"),  # inside a TypedDict keyword
])
def test_booleans_and_integers_do_not_stand_in_for_each_other(tmp_path, hr_folder, override, where, words):
    problems = _problems(small_train_yaml(tmp_path, hr_folder), override)
    assert where in problems, problems
    assert words in problems[where]


def test_runner_sections_are_strict_too():
    problems = _problems(GAN_FILE, "train.net_d_iters=true", "path.strict_load_d=0", "train.grad_clip_d=false")
    assert {"train.net_d_iters", "path.strict_load_d", "train.grad_clip_d"} <= set(problems), problems


def test_floats_keep_their_lax_spellings(tmp_path, hr_folder):
    # YAML 1.1 reads 1e-3 (no dot) as a string and 1 as an int; both have always meant a number
    path = small_train_yaml(tmp_path, hr_folder)
    path.write_text(path.read_text().replace("lr: 1.0e-3", "lr: 1e-3").replace("ema_decay: 0.9", "ema_decay: 0"))
    opt = load_options(path, ["train.optim_g.betas=[0, 0.99]", "network_g.res_scale=1"])
    assert opt.train.optim_g["lr"] == pytest.approx(1e-3) and opt.train.ema_decay == 0.0
    assert opt.train.optim_g["betas"] == (0.0, 0.99) and opt.network_g["res_scale"] == 1.0
    assert load_options(path, ["train.optim_g.lr=1"]).train.optim_g["lr"] == 1.0


# ----------------------------------------------------------- checked before anything is built


@pytest.mark.parametrize(("overrides", "where", "words"), [
    (["datasets.train.gt_size=33"], "datasets.train", "gt_size must be a positive multiple of scale 2, got 33"),
    (["datasets.train.gt_size={0: 16, 10: 17}"], "datasets.train", "multiple of scale 2, got 17"),
    (["datasets.train.gt_size=0"], "datasets.train", "gt_size must be a whole number >= 1"),
    (["datasets.train.aug_prob=2"], "datasets.train", "aug_prob must be in [0, 1]"),
    (["datasets.val.center_crop=5"], "datasets.val", "center_crop must be a positive multiple of scale 2"),
    (["datasets.train.center_crop=16"], "datasets.train", "center_crop is for validation/test"),
    (["datasets.val.lq_jpeg={prob: 0.5, quality: [30, 90]}"], "datasets.val", "training augmentations"),
    (["train.optim_g.lr=-1"], "train.optim_g", "Invalid learning rate: -1.0"),
    (["train.optim_g.betas=[2, 0.9]"], "train.optim_g", "beta"),
    (["train.optim_g.eps=-1"], "train.optim_g", "epsilon"),
    (["train.optim_g={type: AdamW, weight_decay: -1}"], "train.optim_g", "weight_decay"),
])
def test_values_refused_at_start_up_are_refused_by_the_check(tmp_path, hr_folder, overrides, where, words):
    problems = _problems(small_train_yaml(tmp_path, hr_folder), *overrides)
    assert where in problems and words in problems[where], problems


def test_paired_sets_are_checked_like_hr_sets(tmp_path, hr_folder):
    paired = {"type": "PairedImageDataset", "dataroot_gt": str(hr_folder), "dataroot_lq": str(hr_folder),
              "gt_size": 33, "filename_tmpl": "x", "num_worker_per_gpu": 0}
    problems = _problems(small_train_yaml(tmp_path, hr_folder), f"datasets.train={json.dumps(paired)}")
    assert "PairedImageDataset: gt_size must be a positive multiple of scale 2, got 33" in problems["datasets.train"]
    assert "must contain '{}'" in problems["datasets.train.filename_tmpl"]


def test_a_fused_optimiser_still_checks_on_a_machine_without_cuda(tmp_path, hr_folder):
    opt = load_options(small_train_yaml(tmp_path, hr_folder), ["train.optim_g.fused=true"])
    assert opt.train.optim_g["fused"] is True  # the check builds it unfused; the run decides on its device


def test_a_gan_discriminator_optimiser_is_checked_too():
    problems = _problems(GAN_FILE, "train.optim_d.lr=-0.5")
    assert "Invalid learning rate" in problems["train.optim_d"]


@pytest.mark.parametrize("check", [True, False])
def test_an_unknown_runner_is_named_with_the_known_ones(tmp_path, hr_folder, capsys, check):
    argv = ["-opt", str(small_train_yaml(tmp_path, hr_folder)), "-o", "model_type=Nope"] + (["--check"] * check)
    code, _, err = _run(train_module.main, argv, capsys)
    assert code == 2 and "Traceback" not in err
    assert "model_type" in err and "Known: PBRModel, SRGANModel, SRModel" in err


def test_check_validates_a_test_file_as_a_test_file(tmp_path, capsys):
    path = ROOT / TEST_FILES[0]
    code, out, err = _run(train_module.main, ["-opt", str(path), "--check"], capsys)
    assert code == 0, err
    assert "test option file" in out and "trainable parameters" in out
    # the test-file requirements are checked too
    code, _, err = _run(train_module.main, ["-opt", str(path), "--check", "-o", "val.metrics={}"], capsys)
    assert code == 2 and "val.metrics" in err
    # and without --check a test file still cannot start training
    code, _, err = _run(train_module.main, ["-opt", str(path), "-o", f"path.experiments_root={tmp_path}"], capsys)
    assert code == 2 and "needs a train: section" in err and "test.py" in err


@pytest.mark.parametrize("option_file", TEST_FILES)
def test_shipped_test_files_pass_both_checks(option_file, capsys):
    for main in (train_module.main, evaluation.main):
        code, out, err = _run(main, ["-opt", str(ROOT / option_file), "--check"], capsys)
        assert code == 0, err
        assert "trainable parameters" in out


def test_test_py_check_validates_without_evaluating(tmp_path, hr_folder, capsys):
    results = tmp_path / "results"
    path = small_train_yaml(tmp_path, hr_folder)
    argv = ["-opt", str(path), "--check", "-o", f"path.results_root={results}",
            "-o", f"path.pretrain_network_g={tmp_path / 'not_yet.safetensors'}"]
    code, out, err = _run(evaluation.main, argv, capsys)
    assert code == 0, err
    assert "valid test file" in out and "not_yet.safetensors does not exist yet" in out
    assert yaml.safe_load(out)["network_g"]["scale"] == 2  # the resolved options, as YAML
    assert not results.exists()  # nothing was evaluated or written
    code, _, err = _run(evaluation.main, ["-opt", str(path), "--check"], capsys)
    assert code == 2 and "path.pretrain_network_g" in err  # no weights: a test run would have nothing to evaluate


# ------------------------------------------------------------------- messages, not tracebacks


@pytest.mark.parametrize("content", [bytes(range(256)), b"name: x\x00\n"])
def test_a_binary_option_file_is_named(tmp_path, capsys, content):
    path = tmp_path / "weights.yml"
    path.write_bytes(content)
    for main in (train_module.main, evaluation.main):
        code, _, err = _run(main, ["-opt", str(path), "--check"], capsys)
        assert code == 2 and "Traceback" not in err
        assert f"not a text/YAML file: {path}" in err


def test_a_folder_given_as_the_option_file_is_named(tmp_path, capsys):
    code, _, err = _run(train_module.main, ["-opt", str(tmp_path), "--check"], capsys)
    assert code == 2 and f"{tmp_path} is a folder" in err


@pytest.mark.parametrize("value", ["[1, 2", "{a: 1", "a: b: c", "'open"])
def test_an_override_that_is_not_yaml_is_named(tmp_path, hr_folder, capsys, value):
    expr = f"train.optim_g.betas={value}"
    code, _, err = _run(train_module.main, ["-opt", str(small_train_yaml(tmp_path, hr_folder)), "--check",
                                            "-o", expr], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"override '{expr}': the value is not valid YAML" in err


def test_yaml_tags_build_and_run_nothing(tmp_path, hr_folder, capsys):
    marker = tmp_path / "ran"
    tag = f'!!python/object/apply:os.system ["touch {marker}"]'
    path = _write(tmp_path, f"name: {tag}\n", "tagged.yml")
    code, _, err = _run(train_module.main, ["-opt", str(path), "--check"], capsys)
    assert code == 2 and "YAML tag refused at line 1" in err and "Traceback" not in err
    problems = _problems(small_train_yaml(tmp_path, hr_folder), f"name={tag}")
    assert "YAML tag refused" in problems["-o"]
    assert not marker.exists()


def test_a_meta_info_file_that_is_a_folder_is_refused(tmp_path, hr_folder):
    problems = _problems(small_train_yaml(tmp_path, hr_folder), f"datasets.train.meta_info_file={tmp_path}")
    assert "is a folder" in problems["datasets.train.meta_info_file"]


def test_a_dataroot_that_is_a_file_is_refused_at_option_time(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    image = next(hr_folder.iterdir())
    problems = _problems(path, f"datasets.train.dataroot_gt={image}")
    assert f"'{image}' is a file, not a folder of images" in problems["datasets.train.dataroot_gt"]
    # the dataroots a dataset can read pass: a .npy stack file, a missing folder (a --check note)
    stack = tmp_path / "stack.npy"
    np.save(stack, np.zeros((2, 16, 16, 3), np.uint8))
    load_options(path, [f"datasets.train.dataroot_gt={stack}", f"datasets.val.dataroot_gt={tmp_path / 'later'}"])
    pickled = tmp_path / "objects.npy"
    pickled.write_bytes(b"\x80\x04 a pickle, never loaded")
    problems = _problems(path, f"datasets.val.dataroot_gt={pickled}")
    assert "is not a usable .npy file" in problems["datasets.val.dataroot_gt"]


def test_lmdb_dataroots_must_be_read_as_lmdb(tmp_path, hr_folder):
    lmdb_dir = tmp_path / "train.lmdb"
    lmdb_dir.mkdir()
    (lmdb_dir / "data.mdb").write_bytes(b"")
    path = small_train_yaml(tmp_path, hr_folder)
    problems = _problems(path, f"datasets.train.dataroot_gt={lmdb_dir}")
    assert "is an LMDB folder; read it with io_backend: {type: lmdb}" in problems["datasets.train.dataroot_gt"]
    npy = tmp_path / "one.npy"
    np.save(npy, np.zeros((16, 16, 3), np.uint8))
    problems = _problems(path, f"datasets.train.dataroot_gt={npy}", "datasets.train.io_backend={type: lmdb}")
    assert "with io_backend lmdb a dataroot is a BasicSR *.lmdb folder" in problems["datasets.train.dataroot_gt"]


def test_file_system_errors_print_a_message(capsys, monkeypatch):
    monkeypatch.delenv("UPFORGE_DEBUG", raising=False)

    def fails() -> int:
        raise NotADirectoryError("image folder 'x.png' is not a directory")

    assert run_reporting_errors(fails) == 2
    err = capsys.readouterr().err
    assert "error: NotADirectoryError: image folder 'x.png' is not a directory" in err and "Traceback" not in err


def test_check_notes_weights_and_states_that_do_not_exist(tmp_path, hr_folder, capsys):
    """--check cannot know the file will be there at run time, so it notes a missing one (as it notes
    a missing dataroot) instead of passing in silence."""
    path = small_train_yaml(tmp_path, hr_folder)
    missing = tmp_path / "nowhere.safetensors"
    train_module.train(path, [f"path.pretrain_network_g={missing}", f"path.resume_state={tmp_path / '9.state'}"],
                       check=True)
    out = capsys.readouterr().out
    assert f"# note: path.pretrain_network_g = {missing} does not exist" in out
    assert f"# note: path.resume_state = {tmp_path / '9.state'} does not exist" in out
    train_module.train(path, check=True)
    assert "# note: path." not in capsys.readouterr().out
