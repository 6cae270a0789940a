"""Seed statistics of each strategy, as a markdown table and a CSV file."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_CSV_FIELDS = ("strategy", "acc_mean", "acc_std", "bwt_mean", "bwt_std", "num_seeds", "wall_time_mean_s")


@dataclass(frozen=True)
class StrategySummary:
    """ACC and BWT of one strategy over seeds (fractions; std is NaN with a single seed).

    ``bwt_mean`` and ``bwt_std`` are NaN where BWT is undefined: joint training, or a single task.
    """

    strategy: str
    acc_mean: float
    acc_std: float
    bwt_mean: float
    bwt_std: float
    num_seeds: int
    wall_time_mean_s: float


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    # Sample std: seeds are a sample of the run-to-run variation; undefined for one seed.
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else math.nan


def summarise(
    runs_by_strategy: Mapping[str, Sequence[Mapping[str, Any]]], *, acc_key: str = "acc", bwt_key: str = "bwt"
) -> list[StrategySummary]:
    """Seed statistics per strategy, best mean ACC first.

    :param runs_by_strategy: run records (as the runner writes them) grouped by strategy name.
    :param acc_key: record field of the final score (higher is better), e.g. ``"ap"``.
    :param bwt_key: record field of the second score, e.g. ``"ft"``; None in a record means undefined.
    """
    summaries = []
    for strategy, runs in runs_by_strategy.items():
        acc_mean, acc_std = _mean_std([run[acc_key] for run in runs])
        bwts = [run[bwt_key] for run in runs]
        # Joint runs record no BWT (None): NaN marks it as not applicable.
        bwt_mean, bwt_std = (math.nan, math.nan) if None in bwts else _mean_std(bwts)
        wall = float(np.mean([run["wall_time_s"] for run in runs]))
        summaries.append(StrategySummary(strategy, acc_mean, acc_std, bwt_mean, bwt_std, len(runs), wall))
    return sorted(summaries, key=lambda s: s.acc_mean, reverse=True)


def _percent(mean: float, std: float, scale: float = 100.0) -> str:
    if math.isnan(mean):
        return "–"
    return f"{scale * mean:.2f}" if math.isnan(std) else f"{scale * mean:.2f} ± {scale * std:.2f}"


def markdown_table(
    summaries: Sequence[StrategySummary],
    *,
    headers: Sequence[str] = ("strategy", "ACC (%)", "BWT (%)"),
    scale: float = 100.0,
) -> str:
    """GitHub markdown table: ACC and BWT in percent, mean ± sample std over seeds ("–": undefined).

    :param summaries: rows, in display order.
    :param headers: titles of the name, ACC and BWT columns (e.g. ``("method", "AP", "FT")``).
    :param scale: factor from the stored values to the displayed ones (1 for scores already in percent).
    """
    name, acc, bwt = headers
    lines = [
        f"| {name} | {acc} | {bwt} | seeds | wall time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.strategy} | {_percent(s.acc_mean, s.acc_std, scale)} | {_percent(s.bwt_mean, s.bwt_std, scale)} "
            f"| {s.num_seeds} | {s.wall_time_mean_s:.1f} |"
        )
    return "\n".join(lines)


def divergence_note(groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Markdown lines naming the runs whose training diverged (their scores are in the table's means).

    :param groups: run records by the name shown in the table (strategy, or a tuning point).
    :return: the note and a blank line, or no line when no run diverged.
    """
    runs = [
        f"{name} seed {run['config']['seed']} on experience(s) {', '.join(map(str, run['diverged_experiences']))}"
        for name, group in groups.items()
        for run in group
        if run.get("diverged_experiences")  # absent from records written before it was checked
    ]
    if not runs:
        return []
    return [f"Diverged (training loss NaN or infinite; experiences counted from 0): {'; '.join(runs)}.", ""]


def write_csv(
    summaries: Sequence[StrategySummary], path: str | os.PathLike, *, names: Sequence[str] = ("strategy", "acc", "bwt")
) -> None:
    """Write the summaries as CSV (values as stored, fractions for accuracies; empty std for a single
    seed, empty BWT where it is undefined).

    :param summaries: rows, in display order.
    :param path: the CSV file.
    :param names: header names of the name, ACC and BWT columns (``acc_mean`` becomes
        ``<acc>_mean``, and so on).
    """
    rename = dict(zip(("strategy", "acc", "bwt"), names))

    def renamed(field: str) -> str:
        prefix, underscore, rest = field.partition("_")
        return rename.get(prefix, prefix) + underscore + rest

    header = [renamed(field) for field in _CSV_FIELDS]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for s in summaries:
            row = [getattr(s, name) for name in _CSV_FIELDS]
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])
