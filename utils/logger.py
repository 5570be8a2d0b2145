"""Console (rich), log file and TensorBoard output. Only rank 0 writes."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

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

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


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


def print_table(table: Table) -> None:
    Console(stderr=False).print(table)
