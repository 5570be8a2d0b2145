"""Console (rich), log file, TensorBoard and (optional) Weights & Biases output. Only rank 0 writes."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

LOGGER_NAME = "upforge"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logger(log_file: str | Path | None = None, main: bool = True) -> logging.Logger:
    """Console handler through rich and a plain file handler; non-main ranks log warnings only."""
    logger = get_logger()
    logger.setLevel(logging.INFO if main else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = RichHandler(console=Console(stderr=True), show_path=False, markup=False, rich_tracebacks=False)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file is not None and main:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(fh)
    return logger


class TrainProgress:
    """A rich progress bar with it/s and ETA; losses, LR and peak VRAM shown as a status line."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self._status = ""
        self._last_time = time.perf_counter()
        self._last_iter = start
        self.rate = 0.0
        if not enabled:
            self.progress = None
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, rate="", status="")
        self.progress.start()

    def advance(self, iteration: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=iteration)

    def measure(self, iteration: int) -> float:
        """Iterations per second since the last call."""
        now = time.perf_counter()
        if iteration > self._last_iter:
            self.rate = (iteration - self._last_iter) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_iter = now, iteration
        return self.rate

    def set_status(self, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, status=text, rate=f"{self.rate:.2f} it/s")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


class TensorBoardWriter:
    """A thin wrapper that does nothing when disabled or when tensorboard is missing."""

    def __init__(self, log_dir: str | Path | None) -> None:
        self.writer = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            get_logger().warning("tensorboard is not installed; use_tb_logger is ignored")
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def image(self, tag: str, chw: Any, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, chw, step, dataformats="CHW")

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


WANDB_RUN_ID_FILE = "wandb_run_id.txt"
WANDB_MISSING = "the wandb package is not installed: pip install wandb (or remove logger.wandb)"


def wandb_installed() -> bool:
    """Whether ``import wandb`` works. Imported only when asked for: wandb is an optional extra
    and a run without ``logger.wandb`` should neither need it nor pay for importing it."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


def saved_wandb_run_id(exp_dir: str | Path) -> str | None:
    """The id of the W&B run an experiment folder logged to, if it started one."""
    path = Path(exp_dir) / WANDB_RUN_ID_FILE
    text = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
    return text or None


def _hwc_uint8(chw: Any) -> np.ndarray:
    """A CHW image (tensor or array, floats in [0, 1]) as the HWC / HW uint8 array wandb.Image takes."""
    arr = np.asarray(chw.detach().cpu().float().numpy() if hasattr(chw, "detach") else chw)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if arr.shape[0] not in (1, 3, 4):  # e.g. two bands: show the first as greyscale
        arr = arr[:1]
    arr = arr.transpose(1, 2, 0)
    return arr[..., 0] if arr.shape[-1] == 1 else arr


class WandbWriter:
    """Scalars and images to a Weights & Biases run, with :class:`TensorBoardWriter`'s calls.

    Create it on rank 0 only. The run's files go to ``<experiment>/wandb/`` and its id to
    ``<experiment>/wandb_run_id.txt``, so that a training run resumed from a state continues
    the same W&B run and its curves (``resume_id`` names a run explicitly, as in BasicSR).
    """

    def __init__(self, settings: Any, exp_dir: str | Path, run_name: str, config: dict[str, Any],
                 resuming: bool) -> None:
        import wandb  # lazily: optional, and slow to import

        self._wandb = wandb
        exp_dir = Path(exp_dir)
        run_id = settings.resume_id or (saved_wandb_run_id(exp_dir) if resuming else None)
        # resuming: options may have changed since (a longer total_iter), which wandb would otherwise refuse
        resume = {"id": run_id, "resume": "allow", "allow_val_change": True} if run_id else {}
        try:
            # create_new (wandb >= 0.19.10): never log into, or finish, a run the calling program has open
            self.run = wandb.init(project=settings.project, entity=settings.entity, name=settings.name or run_name,
                                  mode=settings.mode, dir=str(exp_dir), config=config, reinit="create_new", **resume)
        except wandb.errors.Error as err:
            raise RuntimeError(f"W&B could not start a run: {err} (run `wandb login`, or set "
                               "logger.wandb.mode: offline)") from err
        (exp_dir / WANDB_RUN_ID_FILE).write_text(f"{self.run.id}\n", encoding="utf-8")

    def scalars(self, values: dict[str, float], step: int) -> None:
        # rows of the same step merge, so the loop's several calls per iteration make one row
        self.run.log({key: float(value) for key, value in values.items()}, step=step)

    def image(self, tag: str, chw: Any, step: int) -> None:
        self.run.log({tag: self._wandb.Image(_hwc_uint8(chw))}, step=step)

    def close(self, failed: bool = False) -> None:
        # a run that ended in an error shows as failed in W&B, not as finished
        self.run.finish(exit_code=1 if failed else 0)


class LogWriters:
    """The active writers (TensorBoard, W&B) behind one object with their common calls, so the
    training loop, validation and automations write to all of them without knowing which."""

    def __init__(self, writers: list[Any]) -> None:
        self.writers = writers

    def scalars(self, values: dict[str, float], step: int) -> None:
        for writer in self.writers:
            writer.scalars(values, step)

    def image(self, tag: str, chw: Any, step: int) -> None:
        for writer in self.writers:
            writer.image(tag, chw, step)

    def close(self, failed: bool = False) -> None:
        """Close every writer; ``failed``: the run ended in an error (W&B marks the run failed)."""
        # every writer gets closed even when one fails, so a W&B error does not lose TensorBoard's last events
        errors = []
        for writer in self.writers:
            try:
                writer.close(failed=failed)
            except Exception as err:  # noqa: BLE001 - re-raised below, after the others are closed
                errors.append(err)
        if errors:
            raise errors[0]


def metrics_table(title: str, results: dict[str, dict[str, float]]) -> Table:
    """A table with one row per dataset and one column per metric."""
    table = Table(title=title)
    table.add_column("dataset")
    metric_names: list[str] = []
    for per_metric in results.values():
        for name in per_metric:
            if name not in metric_names:
                metric_names.append(name)
    for name in metric_names:
        table.add_column(name, justify="right")
    for dataset, per_metric in results.items():
        table.add_row(dataset, *[f"{per_metric[m]:.4f}" if m in per_metric else "-" for m in metric_names])
    return table


#: the width tables are laid out at when stdout is a file or a pipe (rich would assume 80 columns
#: and squeeze a wide table into "…" cells, as in a log captured on a GPU machine)
UNBOUNDED_WIDTH = 1000


def print_table(table: Table) -> None:
    """Print ``table`` to stdout; in full when stdout is not a terminal (e.g. redirected to a log)."""
    console = Console(stderr=False)
    if not console.is_terminal:
        console = Console(stderr=False, width=UNBOUNDED_WIDTH)
    console.print(table)
