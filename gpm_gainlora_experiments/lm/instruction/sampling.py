"""Seeded subsets and splits of a task's instances, reproducible per (seed, benchmark, task).

Each draw has its own generator, seeded with a SHA-256 digest of the seed, the benchmark, the
task and the purpose of the draw (Python's ``hash`` of a string is salted per process). A task's
subsets therefore depend neither on the order in which tasks are listed nor on which other tasks
are loaded, and they are the same in every process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def task_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator determined by ``seed`` and ``keys`` alone.

    :param seed: the experiment's seed.
    :param keys: what the draw is for, e.g. ``("superni", "samsum", "train")``.
    :return: a fresh NumPy generator.
    """
    digest = hashlib.sha256("\x1f".join((str(seed), *keys)).encode("utf-8")).digest()
    return np.random.default_rng(list(np.frombuffer(digest, dtype=np.uint32)))


def take(items: Sequence[T], cap: int | None, rng: np.random.Generator) -> list[T]:
    """At most ``cap`` items, drawn without replacement, in their original order.

    The draw is a prefix of one permutation, so a smaller cap (same generator seed) keeps a
    subset of a larger cap's items.

    :param items: the instances.
    :param cap: the most items to keep; ``None`` keeps all.
    :param rng: the task's generator for this split.
    :return: the kept items.
    """
    if cap is None or cap >= len(items):
        return list(items)
    chosen = np.sort(rng.permutation(len(items))[:cap])
    return [items[i] for i in chosen]


def carve_size(carve: float | int, available: int) -> int:
    """How many training instances become test instances.

    :param carve: a fraction in (0, 1) of ``available`` (rounded, at least 1) or a count.
    :param available: instances in ``train.json``.
    :return: the test size, leaving at least one training instance.
    :raises ValueError: when that is impossible.
    """
    size = max(1, round(carve * available)) if isinstance(carve, float) else carve
    if size >= available:
        raise ValueError(
            f"cannot hold out {size} test instances from {available} training instances: "
            "at least one must stay for training"
        )
    return size


def carve(items: Sequence[T], size: int, rng: np.random.Generator) -> tuple[list[T], list[T]]:
    """Split ``items`` into disjoint train and test parts, each in original order.

    :param items: the instances of ``train.json``.
    :param size: the test part's size, from :func:`carve_size`.
    :param rng: the task's generator for the carve.
    :return: ``(train, test)``.
    """
    permutation = rng.permutation(len(items))
    test = set(permutation[:size].tolist())
    return [x for i, x in enumerate(items) if i not in test], [x for i, x in enumerate(items) if i in test]
