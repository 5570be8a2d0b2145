"""Train a model from an option file.

    python train.py -opt options/train/X.yml [--auto_resume] [-o key.path=value ...] [--check] [--debug]

or from Python: ``from train import train; train("options/train/X.yml", overrides=[...])``.

``--debug`` (or a ``name`` starting with ``debug_``, as in BasicSR) tries a file quickly: a few
iterations that log every step, validate and save a checkpoint, in ``experiments/debug_<name>``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from utils import dist
from utils.checkpoint import ResumePoint, find_resume_state, load_training_state, remove_partial_writes, set_aside
from utils.cli import run_reporting_errors
from utils.debug_run import DEBUG_PREFIX, DEBUG_TOTAL_ITER, load_run_options
from utils.device import select_device
from utils.logger import (
    WANDB_MISSING,
    LogWriters,
    TensorBoardWriter,
    TrainProgress,
    WandbWriter,
    metrics_table,
    print_table,
    setup_logger,
    wandb_installed,
)
from utils.options import Options, OptionsError
from utils.registry import MODEL_REGISTRY


class _StopFlag:
    """Ctrl+C (SIGINT) or a scheduler's SIGTERM asks the loop to save and stop; a second signal
    stops at once. Signals within ``SAME_REQUEST_S`` of the first are the same request: under
    torchrun a rank gets a group-wide SIGTERM twice, directly and forwarded by the agent."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)
    SAME_REQUEST_S = 1.0

    def __init__(self) -> None:
        self.requested = False
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                if time.monotonic() - self._first > self.SAME_REQUEST_S:
                    raise KeyboardInterrupt
                return
            self.requested, self._first = True, time.monotonic()
            # Ctrl+C, `timeout` and batch schedulers signal the whole process group. Data workers
            # outlive the signal long enough to feed the steps until the stop
            # (data_loader.outlive_stop_signals); one that dies anyway must not make torch's
            # SIGCHLD handler raise in the middle of the save this stop is for.
            if hasattr(signal, "SIGCHLD"):
                self._previous.setdefault(signal.SIGCHLD, signal.signal(signal.SIGCHLD, signal.SIG_DFL))

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
    for key in [k for k in type(opt).model_fields if k.startswith("network_")]:  # and the runner's own
        net_opt = getattr(opt, key, None)
        if net_opt:
            net = build_network(net_opt)
            lines.append(f"# {key} ({net_opt['type']}): {count_parameters(net):,} trainable parameters")
    for entry in opt.models:
        if entry.network_g is not None:
            extra = build_network(entry.network_g)
            lines.append(f"# models[{entry.name}] ({entry.network_g['type']}): {count_parameters(extra):,}")
    for key, ds in opt.datasets.items():
        for field in ("dataroot_gt", "dataroot_lq"):
            if field in ds and ds[field] and not Path(ds[field]).exists():
                lines.append(f"# note: datasets.{key}.{field} = {ds[field]} does not exist yet")
    for field, value in opt.path.model_dump().items():  # pretrain_network_g/_d, resume_state
        if (field.startswith("pretrain_network") or field == "resume_state") and value and not Path(value).exists():
            lines.append(f"# note: path.{field} = {value} does not exist; the run would stop at start-up")
    for i, loss in enumerate(opt.train.losses if opt.train else []):
        teacher = loss.get("teacher_path")  # a distillation teacher an earlier stage writes
        if teacher and not Path(teacher).exists():
            lines.append(f"# note: train.losses[{i}].teacher_path = {teacher} does not exist; the run would stop "
                         "at start-up")
    if opt.logger.wandb is not None and not wandb_installed():
        # a note, like a missing dataroot: the file may be meant for a machine that has wandb
        lines.append(f"# note: logger.wandb: {WANDB_MISSING}; training here would stop before it starts")
    return "\n".join(lines)


def require_wandb(opt: Options) -> None:
    """Stop before anything is built (or an old run archived) when W&B is asked for but missing."""
    if opt.logger.wandb is not None and not wandb_installed():
        raise OptionsError(opt.source, [("logger.wandb", WANDB_MISSING)])


def _prepare_experiment_dir(opt: Options, resuming: bool, replace: bool = False) -> tuple[Path, Path | None]:
    """Create the experiment folder; returns it and where an earlier run's folder was moved (None:
    nothing was). A previous run there is archived, as BasicSR does; with ``replace`` (debug runs,
    whose folders are throw-away) it is deleted instead."""
    exp = opt.experiment_dir
    archived = None
    if dist.is_main() and exp.exists() and not resuming and any(exp.iterdir()):
        if replace:
            shutil.rmtree(exp)
        else:
            archived = exp.with_name(f"{exp.name}_archived_{time.strftime('%Y%m%d_%H%M%S')}")
            exp.rename(archived)
    dist.barrier()
    if dist.is_main():
        for sub in ("models", "training_states", "visualization"):
            (exp / sub).mkdir(parents=True, exist_ok=True)
        (exp / "options.yml").write_text(opt.to_yaml(), encoding="utf-8")
    dist.barrier()
    return exp, archived


def resume_point(opt: Options, auto_resume: bool) -> ResumePoint:
    """The state to continue from. An explicit ``path.resume_state`` must load (an error names the
    file otherwise); ``--auto_resume`` takes the newest state that loads and holds finite values,
    skipping (and reporting) newer ones that a crash or a full disk left unusable."""
    if opt.path.resume_state is not None:
        path = Path(opt.path.resume_state)
        return ResumePoint(path, load_training_state(path))
    if auto_resume:
        return find_resume_state(opt.experiment_dir / "training_states")
    return ResumePoint()


def report_start_changes(log: Any, exp: Path, archived: Path | None, resume: ResumePoint) -> None:
    """Log (file and console) what was moved or removed before training: an earlier run archived,
    unusable states set aside, partial files of an interrupted write deleted."""
    if archived is not None:
        log.warning(f"an earlier run was in {exp}: moved to {archived} (archived); this run starts afresh in {exp}")
    if not dist.is_main():
        return
    for path, why in resume.skipped:
        log.warning(f"skipped {path}: {why}; renamed to {set_aside(path).name}")
    for tmp in remove_partial_writes([exp / "models", exp / "training_states"]):
        log.warning(f"removed {tmp}: a partial file left by an interrupted write")


def resume_command(opt_path: str | Path, overrides: list[str] | tuple[str, ...], debug: bool) -> str:
    """The shell command that continues this run: the same option file, every ``-o`` override
    (quoted for the shell) and ``--debug``; ``path.resume_state`` is dropped, since
    ``--auto_resume`` then finds the newest state while it would pin the old one."""
    args = ["python", "train.py", "-opt", str(opt_path)]
    for expr in overrides:
        if expr.split("=", 1)[0].strip() != "path.resume_state":
            args += ["-o", expr]
    if debug:
        args.append("--debug")
    return shlex.join([*args, "--auto_resume"])


# ------------------------------------------------------------------------------ the run


def build_run(opt: Options, device: torch.device) -> tuple[Any, Any, dict[str, Any]]:
    """Seed, then build the data and the runner exactly as a training run does."""
    from data.data_loader import build_loaders

    torch.manual_seed(opt.manual_seed)
    stream, val_loaders = build_loaders(opt, device)
    model = MODEL_REGISTRY.get(opt.model_type)(opt, device)
    return model, stream, val_loaders


def open_writers(opt: Options, exp: Path, resuming: bool) -> LogWriters:
    """Rank 0's TensorBoard and W&B writers behind one object (the other ranks write nothing)."""
    writers: list[Any] = []
    if dist.is_main():
        if opt.logger.wandb is not None:  # first: when W&B cannot start, nothing else is left open
            config = yaml.safe_load(opt.to_yaml())  # plain values, as options.yml holds them
            writers.append(WandbWriter(opt.logger.wandb, exp, opt.name, config, resuming))
        if opt.logger.use_tb_logger:
            writers.append(TensorBoardWriter(exp / "tb_logger"))
    return LogWriters(writers)


def train(opt_path: str | Path, overrides: list[str] | tuple[str, ...] = (), auto_resume: bool = False,
          check: bool = False, debug: bool = False) -> dict[str, Any]:
    """Run training; returns ``{'iter', 'metrics', 'best', 'experiment_dir', ...}``. ``debug``: a
    short debug run (see the module's docstring); a ``debug_`` name is one too."""
    from models.training_loop import TrainingLoop, build_automations

    opt, notice = load_run_options(opt_path, overrides, debug, check=check)
    if check:
        if notice:
            print(f"# {notice}")
        print(describe(opt))
        return {"check": True}
    require_wandb(opt)

    rank, world, local_rank = dist.init_distributed(opt.device)
    device = select_device(opt.device, local_rank)
    resume = resume_point(opt, auto_resume)
    resume_path, state = resume.path, resume.state
    exp, archived = _prepare_experiment_dir(opt, resuming=resume_path is not None, replace=notice is not None)
    log = setup_logger(exp / f"train_{time.strftime('%Y%m%d_%H%M%S')}.log", main=dist.is_main())
    log.info(f"upforge: {opt.name} on {device} (world size {world}), options {opt.source}")
    if notice:
        log.info(notice)
    report_start_changes(log, exp, archived, resume)

    model, stream, val_loaders = build_run(opt, device)
    writers = open_writers(opt, exp, resuming=resume_path is not None)
    loop = TrainingLoop(opt, model, stream, val_loaders, build_automations(opt), exp, writers, log,
                        resume_command=resume_command(opt_path, overrides, debug))
    start_iter = 0
    if resume_path is not None and state is not None:
        model.load_state_dict(state["model"])
        stream.load_state(state["data"])
        loop.load_state_dict(state.get("loop", {}))
        start_iter = int(state["iter"])
        log.info(f"resumed from {resume_path} at iteration {start_iter}")
    resume.state = state = None  # loaded into the runner: do not hold a second copy for the whole run

    results: dict[str, Any] = {"baselines": {}}
    if opt.val is not None and val_loaders and opt.val.baselines:
        results["baselines"] = model.baselines(val_loaders)
        for label, means in results["baselines"].items():
            log.info(f"baseline {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))

    stop = _StopFlag()
    stop.install()
    progress = TrainProgress(opt.train.total_iter, start_iter, enabled=dist.is_main())
    failed = True
    try:
        results.update(loop.run(start_iter, resume_path is not None,
                                lambda it: stop_agreed(stop.requested, it, opt.logger.print_freq), progress))
        failed = False
    finally:
        progress.stop()
        stop.restore()
        if loop.stream is not None:
            loop.stream.shutdown()  # batch thread and data workers stop before the process does
        model.release_step_graph()
        writers.close(failed=failed)
    iteration = results["iter"]
    results.update({"metrics": loop.metrics, "best": model.best, "experiment_dir": str(exp)})
    if dist.is_dist():
        same = all(f == model.fingerprint() for f in dist.all_gather_objects(model.fingerprint()))
        results["replicas_identical"] = same
        log.info(f"DDP: weights identical on all {dist.get_world_size()} ranks: {same}")
        if not same:
            log.error("DDP replicas diverged; the saved weights are rank 0's")
    if dist.is_main():
        rows = dict(results["baselines"])
        rows.update(results["metrics"])
        if rows:
            print_table(metrics_table(f"{opt.name} @ {iteration}", rows))
        keys = ("iter", "metrics", "baselines", "best", "stopped_early")
        (exp / "metrics.json").write_text(json.dumps({k: results[k] for k in keys if k in results}, indent=2),
                                          encoding="utf-8")
    dist.barrier()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a super-resolution model from an option file.")
    parser.add_argument("-opt", "--opt", required=True, help="path to the option YAML file")
    parser.add_argument("--auto_resume", action="store_true", help="continue from the newest training state")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override an option, e.g. -o datasets.train.batch_size_per_gpu=8 (repeatable)")
    parser.add_argument("--check", action="store_true", help="validate the options, print them and exit")
    parser.add_argument("--debug", action="store_true",
                        help=f"try the file: {DEBUG_TOTAL_ITER} iterations that log, validate and save, "
                        f"in experiments/{DEBUG_PREFIX}<name>")
    args = parser.parse_args(argv)

    def run() -> int:
        try:
            result = train(args.opt, args.override, auto_resume=args.auto_resume, check=args.check,
                           debug=args.debug)
        finally:
            dist.cleanup()
        return 130 if result.get("interrupted") else 0

    return run_reporting_errors(run)


if __name__ == "__main__":
    sys.exit(main())
