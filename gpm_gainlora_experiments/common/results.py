"""Reading a folder of run records for a report: loading, grouping by strategy or method, and
refusing tables whose rows ran under different protocols (shared by the image and language reports)."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpm_gainlora_experiments.common.configs import differing_fields
from gpm_gainlora_experiments.common.records import read_record

RECORD_PATTERN = "*_seed*.json"


def load_records(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every run record of a folder.

    :param out_dir: the sweep's output folder.
    :raises FileNotFoundError: when the folder holds no record.
    """
    paths = sorted(Path(out_dir).glob(RECORD_PATTERN))
    if not paths:
        raise FileNotFoundError(f"no run records ({RECORD_PATTERN}) in {out_dir}")
    return [read_record(path) for path in paths]


def group_by_strategy(
    records: Sequence[Mapping[str, Any]], *, key: str = "strategy"
) -> dict[str, list[Mapping[str, Any]]]:
    """Records grouped by strategy; all must come from one benchmark, and the runs of one strategy
    may differ only in their seed (their mean over seeds would otherwise mix protocols).

    :param records: run records.
    :param key: the field of ``record["config"]`` that names the strategy (e.g. ``"method"``).
    :raises ValueError: naming the benchmarks, or the strategy and the configuration fields that differ.
    """
    benchmarks = {record["config"]["benchmark"] for record in records}
    if len(benchmarks) > 1:
        raise ValueError(f"records of several benchmarks {sorted(benchmarks)} in one folder; report them separately")
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record["config"][key]].append(record)
    for name, runs in groups.items():
        differing = differing_fields([run["config"] for run in runs], ignore=("seed",))
        if differing:
            raise ValueError(
                f"the {name} records differ in {', '.join(differing)}, not only in their seed; "
                "a mean over them would mix settings: keep each setting in its own folder"
            )
    return dict(groups)


def check_one_protocol(configs: Sequence[Mapping[str, Any]], *, ignore: Sequence[str], allowed: str) -> None:
    """Refuse a table whose rows ran under different protocols (e.g. a 1-epoch run of one strategy
    beside 5-epoch runs of the others, written into the same folder).

    :param configs: the configurations of every record of the table.
    :param ignore: the fields the rows may differ in (dotted names, with every field under them).
    :param allowed: those fields in words, for the message.
    :raises ValueError: naming the fields that differ.
    """
    differing = differing_fields(configs, ignore=ignore)
    if differing:
        raise ValueError(
            f"the records differ in {', '.join(differing)}, not only in {allowed}; a table over them "
            "would compare different protocols: keep each protocol in its own folder"
        )


def mean_matrix(runs: Sequence[Mapping[str, Any]], field: str = "accuracy_matrix") -> np.ndarray:
    """Seed average of the accuracy matrices of one strategy.

    :param runs: records of one strategy.
    :param field: the record field holding the matrix (None entries, not evaluated, become NaN).
    """
    matrices = [np.asarray(_lookup(run, field), dtype=float) for run in runs]
    shapes = {m.shape for m in matrices}
    if len(shapes) > 1:
        config = runs[0]["config"]
        name = config.get("strategy", config.get("method"))
        raise ValueError(f"runs of {name} have {field} matrices of shapes {sorted(shapes)}")
    return np.mean(matrices, axis=0)


def _lookup(record: Mapping[str, Any], field: str) -> Any:
    """``record[a][b]`` for ``field="a.b"``."""
    value: Any = record
    for part in field.split("."):
        value = value[part]
    return value
