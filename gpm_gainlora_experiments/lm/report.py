"""Summarise the instruction-tuning run records of one folder: tables, CSV and heat maps.

``gpm-gainlora-lm-report results/lm/superni_order1`` rebuilds the report of a folder
(``gpm_gainlora_experiments.lm.run`` calls it at the end of a sweep). It writes ``summary.md`` (AP and FT per
method, mean ± sample std over seeds; GainLoRA(X) minus X per seed both ran; final per-task scores
and the other metric),
``summary.csv``, ``score_matrices.png`` (seed-averaged ``a[l][i]`` per method) and, when GainLoRA
methods ran, ``gate_heatmap.png`` (seed-averaged gate matrix ``G[i][j]`` per GainLoRA method) and
``gate_opening.png`` (each new gate on its own task's training prompts at the start and end of the
task); ``summary.md`` also lists the methods' diagnostics (:mod:`gpm_gainlora_experiments.lm.diagnostics`).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpm_gainlora_experiments.common.cli_errors import exit_on_user_error
from gpm_gainlora_experiments.lm.diagnostics import diagnostics_table, gate_opening, plot_gate_opening
from gpm_gainlora_experiments.lm.methods import METHODS
from gpm_gainlora_experiments.lm.runner import SCORES
from gpm_gainlora_experiments.common.plots import plot_heatmaps
from gpm_gainlora_experiments.common.results import check_one_protocol, group_by_strategy, load_records, mean_matrix
from gpm_gainlora_experiments.common.tables import divergence_note, markdown_table, summarise, write_csv

#: Names of the scores in tables.
SCORE_TITLES = {"rouge_l": "ROUGE-L", "exact_match": "exact match"}


def _method_order(names: Sequence[str]) -> list[str]:
    """Registry order first (baselines before GainLoRA), unknown names after."""
    known = [name for name in METHODS if name in names]
    return known + sorted(set(names) - set(known))


def _check_single_order(records: Sequence[Mapping[str, Any]]) -> list[str]:
    orders = {tuple(record["config"]["tasks"]) for record in records}
    if len(orders) > 1:
        raise ValueError(f"records of several task orders {sorted(orders)} in one folder; report them separately")
    return list(next(iter(orders)))


def _score(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1f}"


def _final_scores_table(
    groups: Mapping[str, Sequence[Mapping[str, Any]]], order: Sequence[str], tasks: Sequence[str], metric: str
) -> str:
    """Final score of every task per method (seed mean)."""
    lines = [
        "| method | " + " | ".join(tasks) + " |",
        "|---|" + "---:|" * len(tasks),
    ]
    for name in order:
        final = mean_matrix(groups[name], f"score_matrices.{metric}")[-1]
        lines.append(f"| {name} | " + " | ".join(_score(v) for v in final) + " |")
    return "\n".join(lines)


def _secondary_table(groups: Mapping[str, Sequence[Mapping[str, Any]]], order: Sequence[str], metric: str) -> str:
    """AP and FT of the other score (seed mean)."""
    lines = ["| method | AP | FT |", "|---|---:|---:|"]
    for name in order:
        aps = [run["metrics"][metric]["ap"] for run in groups[name]]
        fts = [run["metrics"][metric]["ft"] for run in groups[name]]
        ft = float(np.mean(fts)) if None not in fts else math.nan
        lines.append(f"| {name} | {_score(float(np.mean(aps)))} | {_score(ft)} |")
    return "\n".join(lines)


def _differences(values: Sequence[float]) -> str:
    return f"{np.mean(values):+.2f} ({', '.join(f'{v:+.2f}' for v in values)})" if values else "–"


def _against_base_table(groups: Mapping[str, Sequence[Mapping[str, Any]]], metric: str) -> str:
    """GainLoRA(X) minus X on AP and FT over the seeds both ran: the paper's claim, per base method.

    Seeds are paired (same data order and initialisation), so the per-seed differences are listed
    and counted: "better" means a higher AP and a lower FT than the base in that seed.
    """
    lines = [
        "| comparison | seeds | AP gain (per seed) | FT reduction (per seed) | better AP in | lower FT in |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    pairs = [(name, spec.base) for name, spec in METHODS.items() if spec.base in groups and name in groups]
    for gated, base in pairs:
        ours, theirs = (
            {run["config"]["seed"]: run["metrics"][metric] for run in groups[name]} for name in (gated, base)
        )
        seeds = sorted(set(ours) & set(theirs))
        if not seeds:
            continue
        gains = [ours[seed]["ap"] - theirs[seed]["ap"] for seed in seeds]
        fts = [(theirs[seed]["ft"], ours[seed]["ft"]) for seed in seeds]
        cuts = [plain - gated_ft for plain, gated_ft in fts if None not in (plain, gated_ft)]  # None: one task
        lines.append(
            f"| {gated} vs {base} | {', '.join(map(str, seeds))} | {_differences(gains)} | {_differences(cuts)} "
            f"| {sum(g > 0 for g in gains)} of {len(gains)} | {sum(c > 0 for c in cuts)} of {len(cuts)} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def write_lm_report(out_dir: str | os.PathLike) -> str:
    """Write ``summary.md``, ``summary.csv``, ``score_matrices.png`` and ``gate_heatmap.png``.

    :param out_dir: the sweep's output folder (``<method>_seed<seed>.json`` records of one order).
    :return: the markdown summary.
    :raises FileNotFoundError: when the folder holds no record.
    :raises ValueError: when records of several benchmarks, task orders, primary metrics or protocols
        (data, model, settings beyond each method's options) are mixed.
    """
    out = Path(out_dir)
    records = load_records(out)
    groups = group_by_strategy(records, key="method")
    tasks = _check_single_order(records)
    check_one_protocol(
        [record["config"] for record in records],
        ignore=("method", "seed", "settings.method_options"),
        allowed="the method, its options and the seed",
    )
    primaries = {record["primary_metric"] for record in records}
    if len(primaries) > 1:
        raise ValueError(f"records with several primary metrics {sorted(primaries)} in one folder")
    primary = primaries.pop()
    secondary = next(name for name in SCORES if name != primary)
    config = records[0]["config"]

    summaries = {s.strategy: s for s in summarise(groups, acc_key="ap", bwt_key="ft")}
    order = _method_order(list(groups))
    rows = [summaries[name] for name in order]
    settings = config["settings"]
    seeds = sorted({record["config"]["seed"] for record in records})
    split = (config.get("data") or {}).get("eval_split", "test")
    diagnostics = diagnostics_table(groups, order, tasks)
    against_base = _against_base_table(groups, primary)
    markdown = "\n".join(
        [
            f"# {config['benchmark']}: {len(tasks)} tasks, {config['model']}",
            "",
            f"Tasks in order: {', '.join(tasks)}. Seeds: {', '.join(map(str, seeds))}. "
            f"Epochs {settings['epochs']}"
            + (f" (at least {settings['min_steps']} steps per task)" if settings.get("min_steps") else "")
            + f", batch {settings['batch_size']}, lr {settings['lr']}, "
            f"rank {settings['rank']}, prompt/answer/generated tokens "
            f"{settings['max_prompt_tokens']}/{settings['max_answer_tokens']}/{settings['max_new_tokens']}, "
            f"gradient clipping {settings.get('max_grad_norm')}, {settings.get('precision', 'fp32')}. "
            f"Scores on the **{split}** split.",
            "",
            f"AP: mean final {SCORE_TITLES[primary]} over tasks; FT: mean drop of each task from its best "
            "score after learning it to the end (GainLoRA paper). Percent, mean ± sample std over seeds.",
            "",
            markdown_table(rows, headers=("method", "AP", "FT"), scale=1.0),
            "",
            *divergence_note(groups),
            *(["## GainLoRA against its base method (seeds both ran)", "", against_base, ""] if against_base else []),
            f"## Final {SCORE_TITLES[primary]} per task (seed mean)",
            "",
            _final_scores_table(groups, order, tasks, primary),
            "",
            f"## {SCORE_TITLES[secondary]} (seed mean)",
            "",
            _secondary_table(groups, order, secondary),
            "",
            *(["## Diagnostics per task (seed mean)", "", diagnostics, ""] if diagnostics else []),
        ]
    )
    (out / "summary.md").write_text(markdown)
    write_csv(rows, out / "summary.csv", names=("method", "ap", "ft"))

    matrices = {name: mean_matrix(groups[name], "score_matrix") for name in order}
    plot_heatmaps(
        matrices,
        out / "score_matrices.png",
        vmax=100.0,
        annotation_scale=1.0,
        colorbar_label=f"{split} {SCORE_TITLES[primary]} (%)",
        tick_labels=tasks,
    )
    gated = [name for name in order if groups[name][0].get("gate_matrix") is not None]
    if gated:
        plot_heatmaps(
            {name: mean_matrix(groups[name], "gate_matrix") for name in gated},
            out / "gate_heatmap.png",
            annotation_scale=1.0,
            annotation_format=".2f",
            colorbar_label="mean gate value",
            xlabel="test prompts of task",
            ylabel="gate (branch) of task",
            tick_labels=tasks,
            grey_untrained=False,
        )
        openings = {name: gate_opening(groups[name], len(tasks)) for name in gated}
        if any(v is not None for sides in openings.values() for v in sides["gate_end"]):
            plot_gate_opening(openings, tasks, out / "gate_opening.png")
    return markdown


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: rebuild and print the report of a folder.

    :param argv: arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(
        prog="gpm-gainlora-lm-report",
        description="Rebuild the table, CSV and heat maps of a folder of instruction-tuning runs.",
    )
    parser.add_argument("out_dir", help="folder holding <method>_seed<seed>.json run records")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        print(write_lm_report(args.out_dir))


if __name__ == "__main__":
    main()
