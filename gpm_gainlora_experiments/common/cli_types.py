"""argparse types and arguments shared by the command lines: lists, positive numbers, seeds, devices, loggers."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from gpm_gainlora_experiments.common.devices import resolve_device
from gpm_gainlora_experiments.common.loggers import LOGGER_NAMES, check_logger_names


def comma_list(item: Callable[[str], object]) -> Callable[[str], list]:
    """argparse type for ``a,b,c``: each item converted (and validated) by ``item``."""

    def parse(text: str) -> list:
        try:
            return [item(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


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
    """argparse type of a training device this machine has (see :func:`gpm_gainlora_experiments.common.devices.resolve_device`)."""
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


def logger_names(text: str) -> list[str]:
    """argparse type of ``--loggers``: comma-separated names of :data:`~gpm_gainlora_experiments.common.loggers.LOGGER_NAMES`."""
    try:
        return check_logger_names([part.strip() for part in text.split(",") if part.strip()])
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_logger_arguments(parser: argparse.ArgumentParser) -> None:
    """``--loggers`` and ``--log-dir``: Avalanche loggers of every run and where they write."""
    parser.add_argument(
        "--loggers", type=logger_names, default=[],
        help=f"Avalanche loggers of every run, comma-separated from {', '.join(LOGGER_NAMES)} (default none: a progress bar)",
    )  # fmt: skip
    parser.add_argument("--log-dir", help="folder of the runs' logs, one subfolder per run (default <out>/logs)")
