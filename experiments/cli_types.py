"""argparse types and arguments shared by the command lines of the image experiments."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from experiments.benchmarks import get_benchmark
from experiments.devices import resolve_device
from experiments.hyperparams import Hyperparams
from experiments.strategies import check_strategy


def comma_list(item: Callable[[str], object]) -> Callable[[str], list]:
    """argparse type for ``a,b,c``: each item converted (and validated) by ``item``."""

    def parse(text: str) -> list:
        try:
            return [item(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def strategy_name(name: str) -> str:
    """argparse type of a registered image-benchmark strategy name."""
    check_strategy(name)
    return name


def positive_int(text: str) -> int:
    """argparse type of an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def random_seed(text: str) -> int:
    """argparse type of a seed: an integer in [0, 2**32 - 1], the range numpy's generator accepts."""
    value = int(text)
    if not 0 <= value < 2**32:
        raise ValueError(f"a seed must be an integer from 0 to 2**32 - 1, got {value}")
    return value


def device_name(text: str) -> str:
    """argparse type of a training device this machine has (see :func:`experiments.devices.resolve_device`)."""
    try:
        resolve_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix(f"--device {text}: ")) from None
    return text


def positive_float(text: str) -> float:
    """argparse type of a finite number above 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {value}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Where data and training happen, how much of the preset runs, and whether existing records are
    rerun: ``--data-root``, ``--download``, ``--device``, ``--epochs``, ``--tasks``, ``--force``."""
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


def preset_hyperparams(args: argparse.Namespace) -> Hyperparams:
    """The benchmark's preset with the ``--epochs`` override of :func:`add_run_arguments` applied."""
    hyperparams = get_benchmark(args.benchmark).defaults
    return hyperparams if args.epochs is None else hyperparams.replace(epochs=args.epochs)


def run_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`experiments.runner.run` that :func:`add_run_arguments` sets."""
    return {
        "hyperparams": preset_hyperparams(args),
        "num_tasks": args.tasks,
        "data_root": args.data_root,
        "download": args.download,
        "device": args.device,
        "force": args.force,
    }
