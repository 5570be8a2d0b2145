"""Evaluate one or more trained models on one or more test sets.

    python test.py -opt options/test/X.yml [-o key.path=value ...] [--check]

Writes the upscaled images and ``metrics.json`` to ``<results_root>/<name>/`` and prints a table.
``--check`` validates the file as a test run reads it and prints the resolved options, evaluating
nothing. From Python: ``from models.evaluation import evaluate; evaluate("options/test/X.yml")``.
"""


from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from utils import dist
from utils.cli import run_reporting_errors
from utils.device import select_device
from utils.logger import metrics_table, print_table, setup_logger
from utils.options import Options, OptionsError, load_options


def check_test_options(opt: Options) -> list[tuple[str, str]]:
    """What a test run needs beyond a valid file: something to evaluate, a set to evaluate it on,
    a metric, and distinct model names (they name the result folders)."""
    problems = []
    if not opt.path.pretrain_network_g and not opt.models:
        problems.append(("path.pretrain_network_g", "a test file needs weights to evaluate (or a models: list)"))
    if not any(k != "train" for k in opt.datasets):
        problems.append(("datasets", "a test file needs at least one test_* or val_* dataset"))
    names = ([opt.network_g["type"]] if opt.path.pretrain_network_g else []) + [m.name for m in opt.models]
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append(("models", f"two models are named '{name}'; give each models: entry its own name"))
    if opt.val is None or not opt.val.metrics:
        problems.append(("val.metrics", "name at least one metric, e.g. psnr: {type: calculate_psnr}"))
    return problems


def _network_lines(opt: Options, label: str, where: str, net_opt: dict[str, Any]) -> list[str]:
    """The network built as a test run builds it (its constructor's own checks run), counted; a
    constructor that refuses its keywords is reported at ``where``."""
    from models.base_model import build_network, count_parameters

    try:
        net = build_network(net_opt)
    except (TypeError, ValueError, KeyError) as err:  # e.g. a network section recorded in a weight file
        raise OptionsError(opt.source, [(where, f"cannot build {net_opt.get('type')}: {err}")]) from err
    return [f"# {label} ({net_opt['type']}): {count_parameters(net):,} trainable parameters"]


def _model_entry_lines(opt: Options) -> list[str]:
    """Each ``models:`` entry's network as evaluate() resolves it: its own section, else what its
    weight file records, else the file's network_g; a missing weight file is a note."""
    from utils.weights import arch_from_metadata, read_metadata

    lines: list[str] = []
    for i, entry in enumerate(opt.models):
        if not Path(entry.path).is_file():
            lines.append(f"# note: models[{i}].path = {entry.path} does not exist yet")
        try:
            net_opt = entry.network_g or arch_from_metadata(read_metadata(entry.path)) or opt.network_g
        except (OSError, ValueError) as err:
            raise OptionsError(opt.source, [(f"models[{i}].path", f"cannot read its network: {err}")]) from err
        if net_opt:
            lines += _network_lines(opt, f"models[{entry.name}]", f"models[{i}]", net_opt)
    return lines


def describe_test(opt: Options) -> str:
    """The resolved options of a test file, its networks' sizes and notes on paths not there yet,
    as ``test.py --check`` prints them."""
    lines = [f"# {opt.source}: valid test file", opt.to_yaml().rstrip()]
    weights = opt.path.pretrain_network_g
    if weights:
        lines += _network_lines(opt, "network_g", "network_g", opt.network_g)
        if not Path(weights).is_file():
            lines.append(f"# note: path.pretrain_network_g = {weights} does not exist yet")
    lines += _model_entry_lines(opt)
    for key, ds in opt.datasets.items():
        for field in ("dataroot_gt", "dataroot_lq"):
            if ds.get(field) and not Path(ds[field]).exists():
                lines.append(f"# note: datasets.{key}.{field} = {ds[field]} does not exist yet")
    return "\n".join(lines)


def check(opt_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """Validate a test file as :func:`evaluate` reads it, without evaluating; returns the
    description :func:`describe_test` prints."""
    opt = load_options(opt_path, overrides)
    problems = check_test_options(opt)
    if problems:
        raise OptionsError(opt.source, problems)
    return describe_test(opt)


def evaluate(opt_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Returns ``{model: {dataset: {metric: {"mean": float, "per_image": {name: float}}}}}``."""
    from data.data_loader import build_val_loader
    from models.base_model import build_network
    from models.sr_model import SRModel
    from utils.weights import arch_from_metadata, load_network, read_metadata

    opt = load_options(opt_path, overrides)
    problems = check_test_options(opt)
    if problems:
        raise OptionsError(opt.source, problems)

    device = select_device(opt.device)
    out_dir = Path(opt.path.results_root) / opt.name
    log = setup_logger(out_dir / "test.log")
    runner = SRModel(opt, device)

    candidates: list[tuple[str, Any]] = []
    if opt.path.pretrain_network_g:
        candidates.append((opt.network_g["type"], runner.net_g))
    for entry in opt.models:
        # the entry's own network_g, else what the weight file records, else the file's network_g
        net_opt = entry.network_g or arch_from_metadata(read_metadata(entry.path)) or opt.network_g
        net = build_network(net_opt).to(device)
        report = load_network(net, entry.path, strict=entry.strict_load, param_key=entry.param_key)
        log.info(f"model {entry.name}: loaded {entry.path}: {report.summary()}")
        candidates.append((entry.name, net.eval()))

    loaders = {ds_opt.get("name") or key: build_val_loader(ds_opt)
               for key, ds_opt in opt.datasets.items() if key != "train"}

    results: dict[str, Any] = {}
    table_rows: dict[str, dict[str, float]] = {}
    for model_name, net in candidates:
        results[model_name] = {}
        for ds_name, loader in loaders.items():
            save_dir = out_dir / model_name / ds_name if opt.val.save_img else None
            means, rows = runner.validate(loader, ds_name, 0, save_dir=save_dir, net=net)
            results[model_name][ds_name] = {
                metric: {"mean": means[metric], "per_image": {r["name"]: r[metric] for r in rows}}
                for metric in means
            }
            table_rows[f"{model_name} / {ds_name}"] = means
            log.info(f"{model_name} on {ds_name}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        print_table(metrics_table(opt.name, table_rows))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate super-resolution models from an option file.")
    parser.add_argument("-opt", "--opt", required=True, help="path to the test option YAML file")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override an option (repeatable)")
    parser.add_argument("--check", action="store_true",
                        help="validate the options as a test run reads them, print them and exit")
    args = parser.parse_args(argv)

    def run() -> int:
        if args.check:
            print(check(args.opt, args.override))
            return 0
        with torch.inference_mode():
            evaluate(args.opt, args.override)
        return 0

    return run_reporting_errors(run)
