"""The editor schema and the option reference: committed copies are fresh, shipped files validate,
mistakes are flagged, and every static option key is described."""

from __future__ import annotations

import copy
import inspect
import json
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from archs.edsr_arch import EDSR
from scripts import generate_schema
from tests.conftest import ROOT
from utils.option_schema import (
    REFERENCE_FILE,
    SCHEMA_FILE,
    STEP_STRING,
    field_hint,
    find_component,
    schema_line,
    shipped_option_files,
)
from utils.options import OptionsError, parse_options, schema_for
from utils.registry import MODEL_REGISTRY
from utils.schedule import Schedule
from utils.steps import resolve_step

SHIPPED = [str(p.relative_to(ROOT)) for p in shipped_option_files(ROOT)]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    """The committed schema (test_committed_files_are_fresh keeps it equal to a fresh one)."""
    schema = json.loads((ROOT / SCHEMA_FILE).read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _as_editor_sees(path: str | Path) -> dict[str, Any]:
    """The YAML as JSON data, as an editor validates it (mapping keys become strings)."""
    return json.loads(json.dumps(yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))))


def _errors(validator: jsonschema.Draft7Validator, data: dict[str, Any]) -> list[str]:
    """Every error as 'key.path: message', including those inside anyOf branches (``train`` may
    be null, so its errors come as the context of an anyOf failure)."""
    out: list[str] = []

    def collect(errors: Any) -> None:
        for e in errors:
            out.append(f"{'.'.join(map(str, e.absolute_path))}: {e.message}")
            collect(e.context or ())

    collect(validator.iter_errors(data))
    return out


# ------------------------------------------------------------------------- the guard


def test_committed_files_are_fresh():
    """The guard. A clean interpreter, as the script always has: other test modules register
    classes of their own in the shared registries, which must not leak into the generation."""
    proc = subprocess.run([sys.executable, "scripts/generate_schema.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert str(SCHEMA_FILE) in proc.stdout and str(REFERENCE_FILE) in proc.stdout


def test_check_mode_reports_stale_files(tmp_path, monkeypatch, capsys):
    target = tmp_path / "options" / "schema.json"
    monkeypatch.setattr(generate_schema, "ROOT", tmp_path)
    monkeypatch.setattr(generate_schema, "generated_files", lambda root: {target: "{}\n"})
    assert generate_schema.main(["--check"]) == 1  # missing
    assert "options/schema.json" in capsys.readouterr().err
    assert generate_schema.main([]) == 0
    assert target.read_text() == "{}\n"
    assert generate_schema.main(["--check"]) == 0
    target.write_text("{ }\n")
    assert generate_schema.main(["--check"]) == 1


# ------------------------------------------------------------------ shipped option files


@pytest.mark.parametrize("option_file", SHIPPED)
def test_shipped_option_file_validates(validator, option_file):
    assert _errors(validator, _as_editor_sees(option_file)) == []


@pytest.mark.parametrize("option_file", SHIPPED)
def test_shipped_option_file_points_at_the_schema(option_file):
    path = ROOT / option_file
    first = path.read_text(encoding="utf-8").splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix), f"{option_file} must start with the yaml-language-server line"
    assert (path.parent / first[len(prefix):]).resolve() == (ROOT / SCHEMA_FILE).resolve()
    assert first == schema_line(path, ROOT)


# -------------------------------------------------------------------- mistakes flagged


EDSR_FILE = "options/train/EDSR/train_EDSR_Mx2.yml"
GAN_FILE = "options/train/ESRGAN/train_ESRGAN_x4.yml"


def _misspelled_top_level(d):
    d["manual_sed"] = d.pop("manual_seed", 0)


def _misspelled_keyword(d):
    d["network_g"]["num_feats"] = d["network_g"].pop("num_feat", 64)


def _unknown_loss(d):
    d["train"]["losses"][0]["type"] = "L1Los"


def _wrong_value_type(d):
    d["train"]["total_iter"] = "many"


def _wrong_keyword_type(d):
    d["network_g"]["res_scale"] = [1.0]


def _discriminator_in_plain_runner(d):
    d["network_d"] = {"type": "VGGStyleDiscriminator"}


@pytest.mark.parametrize("edit, where", [
    (_misspelled_top_level, "manual_sed"),
    (_misspelled_keyword, "num_feats"),
    (_unknown_loss, "train.losses.0.type"),
    (_wrong_value_type, "train.total_iter"),
    (_wrong_keyword_type, "network_g.res_scale"),
    (_discriminator_in_plain_runner, "network_d"),
])
def test_mistakes_fail_schema_and_python_alike(validator, edit, where):
    data = _as_editor_sees(EDSR_FILE)
    assert _errors(validator, data) == []
    edit(data)
    errors = _errors(validator, data)
    assert errors and any(where in e for e in errors), errors
    with pytest.raises(OptionsError):  # the schema flags nothing Python would accept here
        parse_options(copy.deepcopy(data))


def test_runner_sections_follow_model_type(validator):
    data = _as_editor_sees(GAN_FILE)
    assert _errors(validator, data) == []
    del data["network_d"]
    assert any("'network_d' is a required property" in e for e in _errors(validator, data))
    data = _as_editor_sees(EDSR_FILE)
    data["path"]["pretrain_network_d"] = "d.pth"
    assert any("pretrain_network_d" in e for e in _errors(validator, data))


def test_automations_keyed_by_name(validator):
    data = _as_editor_sees(EDSR_FILE)
    automations = data["train"]["training_automations"] = {"swa": {"enabled": False}}
    assert _errors(validator, data) == []  # switched off: its required start is not needed
    automations["swa"] = {}
    assert any("'start' is a required property" in e for e in _errors(validator, data))
    automations["swa"] = {"start": "0.8T"}
    assert _errors(validator, data) == []
    data["train"]["training_automations"] = {"early_stoping": {}}
    assert any("early_stoping" in e for e in _errors(validator, data))


def test_edsr_entry_lists_its_constructor_keywords(validator):
    entry = validator.schema["definitions"]["arch.EDSR"]
    expected = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": 16, "scale": None,
                "res_scale": 1.0, "img_range": 255.0, "rgb_mean": [0.4488, 0.4371, 0.404], "residual_output": False}
    assert list(inspect.signature(EDSR).parameters) == list(expected)
    assert list(entry["properties"]) == ["type", *expected]
    assert entry["properties"]["type"] == {"const": "EDSR"}
    for key, default in expected.items():
        if key == "scale":  # injected from the top-level scale: neither required nor defaulted
            assert "default" not in entry["properties"][key]
        else:
            assert entry["properties"][key]["default"] == default, key
    assert entry["additionalProperties"] is False and "required" not in entry
    assert entry["properties"]["num_feat"]["type"] == "integer"
    assert entry["properties"]["rgb_mean"]["type"] == "array"


@pytest.mark.parametrize("value, valid", [
    (1000, True), ("1000", True), ("0.8T", True), (" .5T ", True), ("1T", True), ("-3", True),
    ("0.8", False), ("T", False), ("8Tx", False), ("1e3", False),
])
def test_step_pattern_agrees_with_resolve_step(validator, value, valid):
    step = validator.schema["definitions"]["step"]
    assert jsonschema.Draft7Validator(step).is_valid(value) is valid
    if valid:
        resolve_step(value, 100)
    else:
        with pytest.raises(ValueError):
            resolve_step(value, 100)


@pytest.mark.parametrize("value, valid", [
    (0.5, True), ({"0": 1.0, "0.8T": 0.02}, True),
    ({"type": "cosine", "from": 0, "to": "1T", "start": 1.0, "end": 0.0}, True),
    ({"type": "cosin", "from": 0, "to": "1T", "start": 1.0, "end": 0.0}, False),
    ({"type": "linear", "from": 0, "to": 10, "start": 1.0}, False),
    ({"0": "high"}, False), ({}, False), (True, False),
])
def test_schedule_schema_agrees_with_schedule_parse(validator, value, valid):
    schema = {**validator.schema["definitions"]["schedule"], "definitions": validator.schema["definitions"]}
    assert jsonschema.Draft7Validator(schema).is_valid(value) is valid
    if valid:
        Schedule.parse(value, 100)
    else:
        with pytest.raises((ValueError, KeyError)):
            Schedule.parse(value, 100)


# ------------------------------------------------------------------------ descriptions


def _static_models() -> dict[str, type[BaseModel]]:
    """Every static section model of every runner, with the heads of component sections."""
    found: dict[str, type[BaseModel]] = {}

    def visit(model: type[BaseModel], path: str) -> None:
        found[path or "<top>"] = model
        for key, field in model.model_fields.items():
            hint = field.annotation
            comp = find_component(field_hint(field))
            if comp is not None:
                if comp.head is not None:
                    found[f"{path}.{key}(head)".lstrip(".")] = comp.head
                continue
            for arg in (hint, *typing.get_args(hint)):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    visit(arg, f"{path}.{key}".lstrip("."))

    for name, runner in MODEL_REGISTRY.items():
        if runner.__module__.startswith("models."):  # not the runners other tests register
            visit(schema_for(runner), name)
    return found


def test_every_static_field_has_a_description():
    models = _static_models()
    assert len(models) > 10
    missing = [f"{where}.{key}" for where, model in models.items()
               for key, field in model.model_fields.items() if not (field.description or "").strip()]
    assert missing == []


def test_reference_lists_every_key_and_component():
    text = (ROOT / REFERENCE_FILE).read_text(encoding="utf-8")
    for key in ("total_iter", "ema_decay", "val_freq", "keep_last", "net_d_iters", "batch_size_per_gpu",
                "loss_weight"):
        assert f"| `{key}` |" in text, key
    for name in ("EDSR", "L1Loss", "HRImageDataset", "calculate_psnr", "Adam", "MultiStepLR", "early_stopping"):
        assert f"#### `{name}`" in text, name
    assert STEP_STRING not in text  # the reference explains steps in words


def test_keywords_documented_once_in_a_base_class_reach_every_subclass():
    """The datasets' shared options and the pixel losses' reduction / y_only live in their base
    class's Args block; each subclass's own entries come first."""
    from data.hr_image_dataset import HRImageDataset
    from data.paired_image_dataset import PairedImageDataset
    from losses.basic_loss import CharbonnierLoss, L1Loss
    from utils.option_schema import args_section

    hr, paired = args_section(HRImageDataset), args_section(PairedImageDataset)
    assert hr["gt_size"] == paired["gt_size"] and hr["gt_size"].startswith("side in pixels of the square")
    assert hr["center_crop"] != paired["center_crop"]  # each documents its own center_crop
    assert "filename_tmpl" in paired and "filename_tmpl" not in hr
    assert args_section(L1Loss)["reduction"].startswith("how the per-element loss is reduced")
    assert args_section(CharbonnierLoss)["eps"].startswith("constant added to the squared difference")
    # every registered component's every YAML keyword is described
    from utils.registry import (
        ARCH_REGISTRY,
        AUTOMATION_REGISTRY,
        DATASET_REGISTRY,
        LOSS_REGISTRY,
        METRIC_REGISTRY,
        OPTIMIZER_REGISTRY,
        SCHEDULER_REGISTRY,
    )

    skipped = {"self", "params", "optimizer", "img", "img2"}
    missing = []
    for registry in (ARCH_REGISTRY, LOSS_REGISTRY, DATASET_REGISTRY, METRIC_REGISTRY, OPTIMIZER_REGISTRY,
                     SCHEDULER_REGISTRY, AUTOMATION_REGISTRY):
        for name, obj in registry.items():
            if obj.__module__.startswith("tests"):  # classes other tests register
                continue
            func = obj.__init__ if inspect.isclass(obj) else obj
            docs = args_section(obj)
            keywords = [p.name for p in inspect.signature(func).parameters.values()
                        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]  # TVLoss: nn.Module's bare init
            missing += [f"{name}.{p}" for p in keywords if p not in skipped and not docs.get(p)]
    assert not missing, missing
