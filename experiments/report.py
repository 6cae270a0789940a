"""Summarise the run records of one output folder: table, CSV and figures.

``python -m experiments.report results/permuted_digits`` rebuilds the report of a folder, e.g.
after copying in records of seeds run elsewhere.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.cli_errors import exit_on_user_error
from experiments.configs import differing_fields
from experiments.plots import plot_acc_bwt, plot_accuracy_matrices, plot_gpm_memory, plot_task_curves
from experiments.records import read_record
from experiments.tables import divergence_note, markdown_table, summarise, write_csv

RECORD_PATTERN = "*_seed*.json"


#: What the runs of one table may differ in: the strategy, its own options and the seed.
_OWN_FIELDS = ("strategy", "seed", "hyperparams.options")
_OWN_WORDS = "the strategy, its options and the seed"


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


def mean_memory_fractions(runs: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Seed average of the protected fraction of each layer's input space after each task.

    :param runs: records of one GPM-style strategy (with ``gpm_usage_history``).
    """
    def fractions(history: Sequence[Mapping[str, Mapping[str, int]]]) -> dict[str, np.ndarray]:
        return {
            layer: np.array([entry[layer]["basis_size"] / entry[layer]["input_dim"] for entry in history])
            for layer in history[0]
        }

    per_run = [fractions(run["gpm_usage_history"]) for run in runs]
    return {layer: np.mean([run[layer] for run in per_run], axis=0) for layer in per_run[0]}


def write_report(out_dir: str | os.PathLike) -> str:
    """Write ``summary.md``, ``summary.csv`` and the figures of a folder's runs.

    :param out_dir: the sweep's output folder.
    :return: the markdown summary.
    """
    out = Path(out_dir)
    records = load_records(out)
    if any(record["config"].get("eval_stream", "test") != "test" for record in records):
        raise ValueError(
            f"{out} holds validation records of `experiments.tune`, not test runs; "
            "the tuning.md that experiments.tune writes beside them ranks them"
        )
    groups = group_by_strategy(records)
    # Joint trains without the preset's lr schedule: the schedule is compared between the others only.
    check_one_protocol([r["config"] for r in records], ignore=(*_OWN_FIELDS, "hyperparams.lr_schedule"), allowed=_OWN_WORDS)
    check_one_protocol([r["config"] for r in records if not r.get("joint", False)], ignore=_OWN_FIELDS, allowed=_OWN_WORDS)
    summaries = summarise(groups)
    order = [s.strategy for s in summaries]
    matrices = {name: mean_matrix(groups[name]) for name in order}
    benchmark = next(iter(groups.values()))[0]["config"]["benchmark"]
    # Columns, not rows: a joint run's matrix is a single row over all tasks.
    num_tasks = {matrix.shape[1] for matrix in matrices.values()}
    # Records written before joint runs existed have no "joint" field.
    joint = [name for name in order if groups[name][0].get("joint", False)]
    joint_note = (
        [f"{', '.join(joint)}: multitask upper bound, trained once on all tasks together; BWT undefined (–).", ""]
        if joint
        else []
    )

    markdown = "\n".join(
        [
            f"# {benchmark}: {', '.join(map(str, sorted(num_tasks)))} tasks",
            "",
            "ACC: mean final accuracy over tasks; BWT: mean change of each task's accuracy from just after "
            "learning it to the end (GPM paper). Percent, mean ± sample std over seeds.",
            "",
            *joint_note,
            markdown_table(summaries),
            "",
            *divergence_note(groups),
        ]
    )
    (out / "summary.md").write_text(markdown)
    write_csv(summaries, out / "summary.csv")

    plot_accuracy_matrices(matrices, out / "accuracy_matrices.png")
    plot_task_curves(matrices, out / "task_curves.png")
    plot_acc_bwt(summaries, out / "acc_bwt.png")
    memory = {
        name: mean_memory_fractions(groups[name]) for name in order if groups[name][0].get("gpm_usage_history")
    }
    if memory:
        plot_gpm_memory(memory, out / "gpm_memory.png")
    return markdown


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: rebuild and print the report of a folder.

    :param argv: arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m experiments.report", description="Rebuild the table, CSV and figures of a folder of runs."
    )
    parser.add_argument("out_dir", help="folder holding <strategy>_seed<seed>.json run records")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        print(write_report(args.out_dir))


if __name__ == "__main__":
    main()
