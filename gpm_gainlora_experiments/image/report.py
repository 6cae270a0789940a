"""Summarise the run records of one output folder: table, CSV and figures.

``gpm-gainlora-report results/permuted_digits`` rebuilds the report of a folder, e.g.
after copying in records of seeds run elsewhere.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpm_gainlora_experiments.common.cli_errors import exit_on_user_error
from gpm_gainlora_experiments.common.plots import plot_acc_bwt, plot_accuracy_matrices, plot_gpm_memory, plot_task_curves
from gpm_gainlora_experiments.common.results import check_one_protocol, group_by_strategy, load_records, mean_matrix
from gpm_gainlora_experiments.common.tables import divergence_note, markdown_table, summarise, write_csv

#: What the runs of one table may differ in: the strategy, its own options and the seed.
_OWN_FIELDS = ("strategy", "seed", "hyperparams.options")
_OWN_WORDS = "the strategy, its options and the seed"


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
            f"{out} holds validation records of `gpm_gainlora_experiments.image.tune`, not test runs; "
            "the tuning.md that gpm_gainlora_experiments.image.tune writes beside them ranks them"
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
        prog="gpm-gainlora-report", description="Rebuild the table, CSV and figures of a folder of runs."
    )
    parser.add_argument("out_dir", help="folder holding <strategy>_seed<seed>.json run records")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        print(write_report(args.out_dir))


if __name__ == "__main__":
    main()
