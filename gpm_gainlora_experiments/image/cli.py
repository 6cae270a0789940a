"""The arguments shared by the image experiments' command lines (run and tune): strategy names,
where data and training happen, and the preset they run."""

from __future__ import annotations

import argparse
from typing import Any

from gpm_gainlora_experiments.common.cli_types import add_logger_arguments, device_name, positive_int
from gpm_gainlora_experiments.image.benchmarks import get_benchmark
from gpm_gainlora_experiments.image.hyperparams import Hyperparams
from gpm_gainlora_experiments.image.strategies import check_strategy


def strategy_name(name: str) -> str:
    """argparse type of a registered image-benchmark strategy name."""
    check_strategy(name)
    return name


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Where data and training happen, how much of the preset runs, and whether existing records are
    rerun: ``--data-root``, ``--download``, ``--device``, ``--epochs``, ``--tasks``, ``--force``,
    the data path (``--avalanche-loader``) and the loggers (``--loggers``, ``--log-dir``)."""
    parser.add_argument("--data-root", help="folder of local data sets, e.g. ../shared/data")
    parser.add_argument(
        "--download", action="store_true", help="let torchvision download missing data (MNIST, CIFAR, SVHN)"
    )
    parser.add_argument(
        "--device", type=device_name, default="cpu", help="training device, e.g. cpu or cuda (default cpu)"
    )
    parser.add_argument("--epochs", type=positive_int, help="override the preset's epochs per task")
    parser.add_argument("--tasks", type=positive_int, help="use only the first N tasks")
    parser.add_argument("--force", action="store_true", help="rerun and overwrite existing records")
    parser.add_argument(
        "--avalanche-loader",
        action="store_true",
        help="load mini-batches with Avalanche's per-sample loader instead of tensor gathers (same batches, slower)",
    )
    add_logger_arguments(parser)


def preset_hyperparams(args: argparse.Namespace) -> Hyperparams:
    """The benchmark's preset with the ``--epochs`` override of :func:`add_run_arguments` applied."""
    hyperparams = get_benchmark(args.benchmark).defaults
    return hyperparams if args.epochs is None else hyperparams.replace(epochs=args.epochs)


def run_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`gpm_gainlora_experiments.image.runner.run` that :func:`add_run_arguments` sets."""
    return {
        "hyperparams": preset_hyperparams(args),
        "num_tasks": args.tasks,
        "data_root": args.data_root,
        "download": args.download,
        "device": args.device,
        "force": args.force,
        "loggers": args.loggers,
        "log_dir": args.log_dir,
        "batched_loading": not args.avalanche_loader,
    }
