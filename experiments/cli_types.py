"""argparse value types shared by the command lines of ``experiments``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

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
