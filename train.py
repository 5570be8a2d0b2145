"""Train a model from an option file.

    python train.py -opt options/train/X.yml [--auto_resume] [-o key.path=value ...] [--check]

or from Python: ``from train import train; train("options/train/X.yml", overrides=[...])``.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from utils import dist
from utils.checkpoint import latest_state, load_training_state, save_training_state, save_weights
from utils.cli import run_reporting_errors
from utils.device import select_device
from utils.logger import TensorBoardWriter, TrainProgress, metrics_table, print_table, setup_logger
from utils.options import Options, OptionsError, load_options
from utils.registry import MODEL_REGISTRY


class _StopFlag:
    """Ctrl+C (SIGINT) or a scheduler's SIGTERM asks the loop to save and stop; a second signal
    stops at once."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        try:
            for sig in self._SIGNALS:
                self._previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. called from a notebook worker)
            self._previous = {}

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def stop_agreed(requested: bool, iteration: int, print_freq: int) -> bool:
    """Whether to stop now. Under DDP every rank must stop at the same step, so ranks compare
    their flags at logging steps only, keeping the other steps free of collectives."""
    if not dist.is_dist():
        return requested
    return iteration % print_freq == 0 and dist.any_rank(requested)


def describe(opt: Options) -> str:
    """Resolved options plus parameter counts, as ``--check`` prints them."""
    from models.base_model import build_network, count_parameters

    lines = [f"# {opt.source}: valid", opt.to_yaml().rstrip()]
    net = build_network(opt.network_g)
    lines.append(f"# network_g ({opt.network_g['type']}): {count_parameters(net):,} trainable parameters")
    for entry in opt.models:
        if entry.network_g is not None:
            extra = build_network(entry.network_g)
            lines.append(f"# models[{entry.name}] ({entry.network_g['type']}): {count_parameters(extra):,}")
    for key, ds in opt.datasets.items():
        for field in ("dataroot_gt", "dataroot_lq"):
            if field in ds and ds[field] and not Path(ds[field]).exists():
                lines.append(f"# note: datasets.{key}.{field} = {ds[field]} does not exist yet")
    return "\n".join(lines)


def _prepare_experiment_dir(opt: Options, resuming: bool) -> Path:
    exp = opt.experiment_dir
    if dist.is_main() and exp.exists() and not resuming and any(exp.iterdir()):
        # Never overwrite a previous run: move it aside, as BasicSR does.
        archived = exp.with_name(f"{exp.name}_archived_{time.strftime('%Y%m%d_%H%M%S')}")
        exp.rename(archived)
    dist.barrier()
    if dist.is_main():
        for sub in ("models", "training_states", "visualization"):
            (exp / sub).mkdir(parents=True, exist_ok=True)
        (exp / "options.yml").write_text(opt.to_yaml(), encoding="utf-8")
    dist.barrier()
    return exp


def _build_data(opt: Options, device: torch.device, seed: int) -> tuple[Any, dict[str, Any]]:
    from data.batch_stream import BatchStream
    from data.data_loader import build_dataloader, build_dataset, build_val_loader
    from utils.logger import get_logger

    stream, val_loaders = None, {}
    for key, ds_opt in opt.datasets.items():
        name = ds_opt.get("name") or key
        if key != "train":
            val_loaders[name] = build_val_loader(ds_opt, dist.get_rank(), dist.get_world_size())
            continue
        dataset = build_dataset(ds_opt)
        loader = build_dataloader(
            dataset, "train", ds_opt.get("batch_size_per_gpu", 16), ds_opt.get("num_worker_per_gpu", 4),
            pin_memory=ds_opt.get("pin_memory", True) and device.type == "cuda",
            persistent_workers=ds_opt.get("persistent_workers", True), seed=seed, rank=dist.get_rank(),
            world_size=dist.get_world_size(), dataset_enlarge_ratio=ds_opt.get("dataset_enlarge_ratio", 1))
        stream = BatchStream(loader, device, ds_opt.get("prefetch_mode"), opt.channels_last)
        get_logger().info(f"train set '{name}': {len(dataset)} images, {len(loader)} batches per epoch per GPU")
    return stream, val_loaders


def build_run(opt: Options, device: torch.device) -> tuple[Any, Any, dict[str, Any]]:
    """Seed, then build the data and the runner exactly as a training run does."""
    torch.manual_seed(opt.manual_seed)
    stream, val_loaders = _build_data(opt, device, opt.manual_seed)
    model = MODEL_REGISTRY.get(opt.model_type)(opt, device)
    return model, stream, val_loaders


def _check_replicas(model: Any) -> bool:
    """Under DDP, confirm every rank ends with the same weights (a cheap fingerprint per tensor)."""
    if not dist.is_dist():
        return True
    with torch.no_grad():
        fingerprint = [float(p.double().sum()) for p in model.net_g.parameters()]
    return all(f == fingerprint for f in dist.all_gather_objects(fingerprint))


def _save(model: Any, exp: Path, iteration: int, stream: Any, keep_last: int) -> None:
    """Weights (live, EMA) and a full training state, written atomically by rank 0."""
    model.check_finite(iteration)  # never save weights that went NaN
    if not dist.is_main():
        return
    models_dir = exp / "models"
    save_weights(models_dir, "net_g", iteration, model.net_g, keep_last)
    if model.ema is not None:
        save_weights(models_dir, "net_g_ema", iteration, model.ema.module, keep_last)
    state = {"iter": iteration, "data": stream.state(), "model": model.state_dict()}
    save_training_state(exp / "training_states", iteration, state, keep_last)


def _baselines(model: Any, val_loaders: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Nearest and bicubic upscaling of the LR images, scored with the validation metrics."""
    import torch.nn.functional as F

    from data.imresize import imresize_tensor

    scale = model.opt.scale

    def nearest(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=scale, mode="nearest")

    def bicubic(x: torch.Tensor) -> torch.Tensor:
        return imresize_tensor(x, scale)

    out = {}
    for name, loader in val_loaders.items():
        for label, fn in (("nearest", nearest), ("bicubic", bicubic)):
            means, _ = model.validate(loader, name, 0, net=fn)
            out[f"{name} ({label})"] = means
    return out


def train(opt_path: str | Path, overrides: list[str] | tuple[str, ...] = (), auto_resume: bool = False,
          check: bool = False) -> dict[str, Any]:
    """Run training; returns ``{'iter', 'metrics', 'best', 'experiment_dir'}``."""
    opt = load_options(opt_path, overrides)
    if opt.train is None:
        raise OptionsError(str(opt_path), [("train", "a training option file needs a train: section")])
    if check:
        print(describe(opt))
        return {"check": True}

    rank, world, local_rank = dist.init_distributed(opt.device)
    device = select_device(opt.device, local_rank)
    exp = opt.experiment_dir
    resume_path = opt.path.resume_state
    if resume_path is None and auto_resume:
        found = latest_state(exp / "training_states")
        resume_path = str(found) if found else None
    exp = _prepare_experiment_dir(opt, resuming=resume_path is not None)
    log = setup_logger(exp / f"train_{time.strftime('%Y%m%d_%H%M%S')}.log", main=dist.is_main())
    log.info(f"upforge: {opt.name} on {device} (world size {world}), options {opt.source}")

    model, stream, val_loaders = build_run(opt, device)

    start_iter = 0
    if resume_path is not None:
        state = load_training_state(resume_path)
        model.load_state_dict(state["model"])
        stream.load_state(state["data"])
        start_iter = int(state["iter"])
        log.info(f"resumed from {resume_path} at iteration {start_iter}")

    tb = TensorBoardWriter(exp / "tb_logger" if opt.logger.use_tb_logger and dist.is_main() else None)
    t, lg, val = opt.train, opt.logger, opt.val
    results: dict[str, Any] = {"metrics": {}, "baselines": {}}
    if val is not None and val_loaders and val.baselines:
        results["baselines"] = _baselines(model, val_loaders)
        for label, means in results["baselines"].items():
            log.info(f"baseline {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))

    stop = _StopFlag()
    stop.install()
    progress = TrainProgress(t.total_iter, start_iter, enabled=dist.is_main())
    iteration = start_iter
    last_saved = start_iter if resume_path else -1
    last_validated = -1
    try:
        while iteration < t.total_iter:
            batches = [stream.next() for _ in range(t.accumulate_grad_batches)]
            iteration += 1
            model.train_step(batches, iteration)
            progress.advance(iteration)
            if iteration % lg.print_freq == 0 or iteration == t.total_iter:
                logs = model.pop_logs(iteration)
                rate = progress.measure(iteration)
                if device.type == "cuda":
                    logs["vram/peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                tb.scalars(logs, iteration)
                shown = "  ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in logs.items())
                progress.set_status(shown)
                eta = (t.total_iter - iteration) / rate if rate > 0 else math.nan
                log.info(f"iter {iteration}/{t.total_iter}  {rate:.2f} it/s  eta {eta:.0f}s  {shown}")
            if iteration % lg.save_checkpoint_freq == 0:
                _save(model, exp, iteration, stream, lg.keep_last)
                last_saved = iteration
            if val is not None and val_loaders and (iteration % val.val_freq == 0 or iteration == t.total_iter):
                results["metrics"] = _validate_all(model, val_loaders, iteration, exp, tb, log)
                last_validated = iteration
            if stop_agreed(stop.requested, iteration, lg.print_freq):
                log.warning(f"interrupted at iteration {iteration}: saving a training state")
                if last_saved != iteration:
                    _save(model, exp, iteration, stream, lg.keep_last)
                log.warning(f"saved; continue with: python train.py -opt {opt.source} --auto_resume")
                results["interrupted"] = True
                break
        else:
            if last_saved != iteration:
                _save(model, exp, iteration, stream, lg.keep_last)
            if val is not None and val_loaders and last_validated != iteration:
                results["metrics"] = _validate_all(model, val_loaders, iteration, exp, tb, log)
    except torch.cuda.OutOfMemoryError as err:
        raise RuntimeError(
            f"CUDA out of memory at iteration {iteration} ({err}). Lower datasets.train.batch_size_per_gpu or "
            "gt_size, enable amp: bf16, or use val.tile for large validation images. "
            "Saved checkpoints are intact; resume with --auto_resume."
        ) from err
    finally:
        progress.stop()
        stop.restore()
        tb.close()

    results.update({"iter": iteration, "best": model.best, "experiment_dir": str(exp)})
    if dist.is_dist():
        same = _check_replicas(model)
        results["replicas_identical"] = same
        log.info(f"DDP: weights identical on all {dist.get_world_size()} ranks: {same}")
        if not same:
            log.error("DDP replicas diverged; the saved weights are rank 0's")
    if dist.is_main():
        rows = dict(results["baselines"])
        rows.update(results["metrics"])
        if rows:
            print_table(metrics_table(f"{opt.name} @ {iteration}", rows))
        (exp / "metrics.json").write_text(json.dumps(
            {k: results[k] for k in ("iter", "metrics", "baselines", "best")}, indent=2), encoding="utf-8")
    dist.barrier()
    return results


def _validate_all(model: Any, val_loaders: dict[str, Any], iteration: int, exp: Path, tb: Any,
                  log: Any) -> dict[str, dict[str, float]]:
    out = {}
    single = len(val_loaders) == 1
    for index, (name, loader) in enumerate(val_loaders.items()):
        # each rank validates (and saves the images of) its own share of the set
        save_dir = exp / "visualization" / name if model.opt.val.save_img else None
        means, _ = model.validate(loader, name, iteration, save_dir, tb if dist.is_main() else None)
        improved = model.update_best(name, means, iteration)
        out[name] = means
        prefix = "val_metrics" if single else f"val_metrics/{name}"
        tb.scalars({f"{prefix}/{k}": v for k, v in means.items()}, iteration)
        best = model.best[name]
        log.info(f"validation {name} @ {iteration}: " + ", ".join(
            f"{k} {v:.4f} (best {best[k]['value']:.4f} @ {best[k]['iter']})" for k, v in means.items()))
        first_metric = next(iter(means), None)
        if index == 0 and first_metric and improved[first_metric] and dist.is_main():
            save_weights(exp / "models", "net_g", "best", model.eval_net(), keep_last=10**9)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a super-resolution model from an option file.")
    parser.add_argument("-opt", "--opt", required=True, help="path to the option YAML file")
    parser.add_argument("--auto_resume", action="store_true", help="continue from the newest training state")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override an option, e.g. -o datasets.train.batch_size_per_gpu=8 (repeatable)")
    parser.add_argument("--check", action="store_true", help="validate the options, print them and exit")
    args = parser.parse_args(argv)

    def run() -> int:
        try:
            result = train(args.opt, args.override, auto_resume=args.auto_resume, check=args.check)
        finally:
            dist.cleanup()
        return 130 if result.get("interrupted") else 0

    return run_reporting_errors(run)


if __name__ == "__main__":
    sys.exit(main())
