"""Option validation: good files load; typos, wrong types and unknown types fail with a clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, small_train_yaml
from utils.options import OptionsError, apply_override, load_options, parse_options
from utils.schedule import Schedule
from utils.steps import resolve_step

SHIPPED = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "options").rglob("*.yml"))


def _edit(path: Path, fn) -> Path:
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data))
    return path


def _problems(path: Path) -> list[tuple[str, str]]:
    with pytest.raises(OptionsError) as info:
        load_options(path)
    assert str(path) in str(info.value)
    return info.value.problems


def test_valid_file_resolves_fraction_steps(tmp_path, hr_folder):
    opt = load_options(small_train_yaml(tmp_path, hr_folder))
    assert opt.train.scheduler["milestones"] == [10]  # 0.5T of 20
    assert opt.network_g["scale"] == 2  # injected from the top level
    assert opt.datasets["train"]["phase"] == "train" and opt.datasets["val"]["phase"] == "val"


def test_misspelt_loss_key_names_path_and_suggestion(tmp_path, hr_folder):
    path = _edit(small_train_yaml(tmp_path, hr_folder), lambda d: d["train"]["losses"].append(
        {"type": "CharbonnierLoss", "loss_wieght": 0.5}))
    (where, msg), = _problems(path)
    assert where == "train.losses[1].loss_wieght"
    assert "did you mean 'loss_weight'" in msg


@pytest.mark.parametrize(
    ("section", "key", "expected_path", "suggestion"),
    [
        (None, "manual_sead", "manual_sead", "manual_seed"),
        ("network_g", "num_feats", "network_g.num_feats", "num_feat"),
        ("datasets.train", "gt_szie", "datasets.train.gt_szie", "gt_size"),
        ("datasets.train", "batch_size_per_gpus", "datasets.train.batch_size_per_gpus", "batch_size_per_gpu"),
        ("train", "ema_decy", "train.ema_decy", "ema_decay"),
        ("train.optim_g", "betas2", "train.optim_g.betas2", "betas"),
        ("train.scheduler", "milestone", "train.scheduler.milestone", "milestones"),
        ("val.metrics.psnr", "crop_boder", "val.metrics.psnr.crop_boder", "crop_border"),
        ("logger", "print_frq", "logger.print_frq", "print_freq"),
    ],
)
def test_unknown_keys_everywhere(tmp_path, hr_folder, section, key, expected_path, suggestion):
    def add(d):
        node = d
        for part in (section.split(".") if section else []):
            node = node[part]
        node[key] = 1

    problems = _problems(_edit(small_train_yaml(tmp_path, hr_folder), add))
    assert [p for p, _ in problems] == [expected_path]
    assert f"'{suggestion}'" in problems[0][1]


def test_wrong_types_and_unknown_type_names(tmp_path, hr_folder):
    def spoil(d):
        d["datasets"]["train"]["gt_size"] = "big"
        d["network_g"]["num_block"] = [1, 2]
        d["train"]["losses"][0]["type"] = "L1Los"
        d["logger"]["print_freq"] = -1
        d["val"]["val_freq"] = "0T"

    problems = dict(_problems(_edit(small_train_yaml(tmp_path, hr_folder), spoil)))
    assert set(problems) == {"datasets.train.gt_size", "network_g.num_block", "train.losses[0].type",
                             "logger.print_freq", "val.val_freq"}
    assert "'big'" in problems["datasets.train.gt_size"]
    assert "'L1Loss'" in problems["train.losses[0].type"]


def test_scale_conflict_and_bad_dataset_key(tmp_path, hr_folder):
    def spoil(d):
        d["network_g"]["scale"] = 3
        d["datasets"]["extra"] = d["datasets"]["val"]

    problems = dict(_problems(_edit(small_train_yaml(tmp_path, hr_folder), spoil)))
    assert "differs from the top-level scale 2" in problems["network_g.scale"]
    assert "datasets.extra" in problems


def test_overrides_parse_yaml_never_eval(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    opt = load_options(path, ["datasets.train.batch_size_per_gpu=4", "train.losses[0].loss_weight=0.5",
                              "name=__import__('os').getcwd()", "train.scheduler.milestones=[0.25T, 15]"])
    assert opt.datasets["train"]["batch_size_per_gpu"] == 4
    assert opt.train.losses[0]["loss_weight"] == 0.5
    assert opt.name == "__import__('os').getcwd()"
    assert opt.train.scheduler["milestones"] == [5, 15]
    with pytest.raises(OptionsError, match="out of range"):
        load_options(path, ["train.losses[3].loss_weight=1"])


def test_apply_override_creates_nested_keys():
    data = {"a": {"b": 1}}
    apply_override(data, "a.c.d=[1, 2]")
    apply_override(data, "a.b=true")
    assert data == {"a": {"b": True, "c": {"d": [1, 2]}}}


def test_step_helpers():
    assert resolve_step("0.8T", 1000) == 800
    assert resolve_step(" 250 ", None) == 250
    with pytest.raises(ValueError, match="total_iter"):
        resolve_step("0.5T", None)
    with pytest.raises(ValueError):
        resolve_step(2.5, 10)
    schedule = Schedule.parse({0: 0.0, 80: 0.02, 90: 0.05})
    assert [schedule(s) for s in (0, 79, 80, 95)] == [0.0, 0.0, 0.02, 0.05]
    assert Schedule.parse({10: 1.0})(5) == 0.0


def test_loss_weight_schedule_keys_accept_fractions(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    opt = load_options(path, ["train.losses[0].loss_weight={0: 1.0, 0.5T: 0.25}"])
    assert opt.train.losses[0]["loss_weight"].to_spec() == {0: 1.0, 10: 0.25}


def test_missing_required_sections():
    with pytest.raises(OptionsError) as info:
        parse_options({"name": "x"}, source="inline.yml")
    assert ("network_g", "required key is missing (or set path.pretrain_network_g to weights that record their "
                         "network)") in info.value.problems


@pytest.mark.parametrize("option_file", SHIPPED)
def test_every_shipped_option_file_passes_check(option_file):
    script = "train.py" if option_file.startswith("options/train") else None
    if script is None:
        opt = load_options(ROOT / option_file)  # test files are validated by the same schema
        assert opt.network_g["type"]
        return
    proc = subprocess.run([sys.executable, "train.py", "-opt", option_file, "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "trainable parameters" in proc.stdout


def test_check_rejects_a_typo_with_exit_code_2(tmp_path, hr_folder):
    path = _edit(small_train_yaml(tmp_path, hr_folder), lambda d: d["network_g"].update(num_feats=4))
    proc = subprocess.run([sys.executable, "train.py", "-opt", str(path), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "network_g.num_feats" in proc.stderr and "did you mean 'num_feat'" in proc.stderr


def test_scheduler_value_conflicts_are_found_by_check(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    with pytest.raises(OptionsError) as info:
        load_options(path, ["train.scheduler={type: CosineAnnealingLR, warmup_iter: 0.9T, total_iter: 0.5T}"])
    assert info.value.problems == [("train.scheduler", "warmup_iter (18) must be below total_iter (10)")]


def test_basicsr_keys_get_migration_hints(tmp_path, hr_folder):
    def basicsr_style(d):
        d["train"]["pixel_opt"] = {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"}
        d["network_g"]["upscale"] = 2
        d["datasets"]["train"]["io_backend"] = {"type": "memcached"}  # BasicSR's disk and lmdb are supported

    problems = dict(_problems(_edit(small_train_yaml(tmp_path, hr_folder), basicsr_style)))
    assert "train.losses" in problems["train.pixel_opt"]
    assert "top level" in problems["network_g.upscale"]
    assert "'disk' or 'lmdb'" in problems["datasets.train.io_backend.type"]


def test_dataset_channels_must_match_the_network(tmp_path, hr_folder):
    path = _edit(small_train_yaml(tmp_path, hr_folder), lambda d: d["datasets"]["train"].update(channels=4))
    problems = _problems(path)
    assert ("datasets.train.channels", "4, but network_g.num_in_ch is 3") in problems
    assert ("datasets.train.channels", "4, but network_g.num_out_ch is 3") in problems
    assert not any(p[0].startswith("datasets.val") for p in problems)

    def four_bands(d: dict) -> None:
        d["network_g"].update(num_in_ch=4, num_out_ch=4)
        for ds in d["datasets"].values():
            ds["channels"] = 4

    assert load_options(_edit(small_train_yaml(tmp_path, hr_folder), four_bands)).network_g["num_in_ch"] == 4


def test_accumulation_with_cuda_graphs_is_refused(tmp_path, hr_folder):
    path = _edit(small_train_yaml(tmp_path, hr_folder),
                 lambda d: (d.update(compile="reduce-overhead"), d["train"].update(accumulate_grad_batches=2)))
    (problem,) = [p for p in _problems(path) if p[0] == "train.accumulate_grad_batches"]
    assert "compile: reduce-overhead" in problem[1] and "compile: true" in problem[1]
    path = _edit(small_train_yaml(tmp_path, hr_folder),
                 lambda d: (d.update(compile=True), d["train"].update(accumulate_grad_batches=2)))
    assert load_options(path).train.accumulate_grad_batches == 2


@pytest.mark.parametrize("option_file, override, expected", [
    ("options/train/PixelArt/edsr_64x32_x2_tail.yml", "datasets.train.degradations.nearest_pro=0.5",
     "unknown key in PixelArtDataset's degradations (keys: palette_prob, "),
    ("options/train/PixelArt/edsr_64x32_x2_tail.yml", "datasets.train.split.prt=val",
     "unknown key in PixelArtDataset's split (keys: part, ratios, seed); did you mean 'part'?"),
    ("options/train/PixelArt/edsr_64x32_x2_tail.yml", "datasets.train.degrad_schedule={0: {jpeg_pro: 0.2}}",
     "did you mean 'jpeg_prob'?"),
    ("options/train/quickstart.yml", "datasets.train.lq_jpeg={prob: 0.5, qualty: [1, 2]}",
     "unknown key in HRImageDataset's lq_jpeg (keys: prob, quality); did you mean 'quality'?"),
])
def test_a_wrong_key_inside_a_keywords_mapping_lists_that_mappings_keys(option_file, override, expected):
    with pytest.raises(OptionsError) as info:
        load_options(ROOT / option_file, [override])
    assert expected in str(info.value)
