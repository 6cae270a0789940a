"""Avalanche loggers for the runners' ``--loggers`` option, one log folder per run.

``interactive``, ``text``, ``tensorboard`` and ``wandb`` are Avalanche's loggers as they are.
``csv`` is Avalanche's :class:`~avalanche.logging.CSVLogger` (its fixed accuracy/loss columns) plus
:class:`MetricsCSVLogger`, which writes *every* metric value as a row: Avalanche's CSV columns have
no place for other metrics such as GPM's ``GPM/memory_fraction/<layer>``.
"""

from __future__ import annotations

import csv
import importlib.util
import numbers
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avalanche.distributed import DistributedHelper
from avalanche.logging import BaseLogger, CSVLogger, InteractiveLogger, TensorboardLogger, TextLogger, WandBLogger

LOGGER_NAMES = ("interactive", "text", "csv", "tensorboard", "wandb")


class MetricsCSVLogger(BaseLogger):
    """Every numeric metric value as one row ``metric,x,value`` of a CSV file (``x`` is the
    metric's ``x_plot``: the training iteration for Avalanche's metrics and GPM's memory report).

    Non-numeric values (tensors, images, figures) are left to loggers that can show them.

    :param path: the CSV file.
    :param append: add to an existing file (a resumed run) instead of starting it afresh.
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False):
        super().__init__()
        self.path = Path(path)
        self._open(append)

    def _open(self, append: bool) -> None:
        new = not (append and self.path.exists())
        self._file = open(self.path, "w" if new else "a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(["metric", "x", "value"])

    def log_single_metric(self, name: str, value: Any, x_plot: int) -> None:
        if isinstance(value, numbers.Real):
            self._writer.writerow([name, x_plot, float(value)])

    def log_metrics(self, metric_values: Sequence[Any]) -> None:
        super().log_metrics(metric_values)
        self._file.flush()  # a killed run keeps what it logged

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._open(append=True)


def check_logger_names(names: Sequence[str]) -> list[str]:
    """The names, validated.

    :raises ValueError: for an unknown name (listing the valid ones), or ``wandb`` without the
        ``wandb`` package installed.
    """
    unknown = [name for name in names if name not in LOGGER_NAMES]
    if unknown:
        raise ValueError(f"unknown logger {', '.join(unknown)}; choose from {', '.join(LOGGER_NAMES)}")
    if "wandb" in names and importlib.util.find_spec("wandb") is None:
        raise ValueError("the wandb logger needs the wandb package: pip install wandb")
    return list(names)


def build_loggers(names: Sequence[str], log_dir: str | os.PathLike, *, project: str, resume: bool) -> list[BaseLogger]:
    """Avalanche loggers writing into ``log_dir`` (created).

    :param names: from :data:`LOGGER_NAMES`.
    :param log_dir: the run's log folder.
    :param project: the run's name for loggers that group runs (wandb's run name).
    :param resume: the run resumes after a checkpoint: file logs are added to, not restarted.
    :raises ValueError: see :func:`check_logger_names`.
    """
    check_logger_names(names)
    folder = Path(log_dir)
    folder.mkdir(parents=True, exist_ok=True)
    loggers: list[BaseLogger] = []
    for name in names:
        if name == "interactive":
            loggers.append(InteractiveLogger())
        elif name == "text":
            loggers.append(TextLogger(open(folder / "log.txt", "a" if resume else "w")))
        elif name == "csv":
            # CSVLogger always starts its two files afresh; metrics.csv carries the whole run.
            loggers.append(CSVLogger(log_folder=str(folder)))
            loggers.append(MetricsCSVLogger(folder / "metrics.csv", append=resume))
        elif name == "tensorboard":
            loggers.append(TensorboardLogger(tb_log_dir=folder / "tensorboard"))
        else:
            loggers.append(WandBLogger(project_name=project, run_name=folder.name, dir=str(folder)))
    return loggers


def loggers_for_run(
    names: Sequence[str],
    *,
    out_dir: str | os.PathLike,
    log_dir: str | os.PathLike | None,
    run_name: str,
    project: str,
    resume: bool,
) -> list[BaseLogger]:
    """The loggers of one run of a runner, in ``<log_dir>/<run_name>`` (``log_dir`` defaults to
    ``<out_dir>/logs``); none without names, and none on any process but the main one (Avalanche
    refuses loggers elsewhere).

    :param names: from :data:`LOGGER_NAMES`.
    :param out_dir: the runner's output folder.
    :param log_dir: the folder of the runs' logs, or None for the default.
    :param run_name: the run's folder, e.g. ``gpm_seed0``.
    :param project: see :func:`build_loggers`.
    :param resume: see :func:`build_loggers`.
    """
    if not names or not DistributedHelper.is_main_process:
        return []
    folder = Path(log_dir or Path(out_dir) / "logs") / run_name
    return build_loggers(names, folder, project=project, resume=resume)


def close_loggers(loggers: Sequence[BaseLogger]) -> None:
    """Flush and close what the loggers hold open (files, TensorBoard writers, a wandb run)."""
    for logger in loggers:
        if isinstance(logger, (MetricsCSVLogger, CSVLogger)):
            logger.close()
        elif isinstance(logger, TensorboardLogger):
            logger.writer.close()
        elif isinstance(logger, TextLogger) and logger.file not in (sys.stdout, sys.stderr):
            logger.file.close()
        elif isinstance(logger, WandBLogger):
            logger.wandb.finish()
