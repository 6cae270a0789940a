"""Tables and a plot of the methods' per-task diagnostics in instruction-tuning records.

Records hold ``diagnostics`` by plugin (see :func:`gpm_gainlora_experiments.lm.runner.plugin_diagnostics`):
``GainLoRAPlugin`` gives each new gate's mean value on its own task's training prompts when the
task starts and ends, and the gate layers' basis sizes; ``InfLoRAPlugin`` gives, per adapted
layer, the share of the task's input energy that ``A_t`` reaches and the basis size after the
task. Values are averaged over seeds; per-layer values are summarised over layers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

GATES = "GainLoRAPlugin"
INFLORA = "InfLoRAPlugin"


def _entries(runs: Sequence[Mapping[str, Any]], plugin: str) -> list[list[dict[str, Any]]]:
    """The plugin's per-task entries of every run that has them."""
    return [run["diagnostics"][plugin] for run in runs if plugin in (run.get("diagnostics") or {})]


def _seed_mean(per_run: Sequence[Sequence[dict[str, Any]]], task: int, read: Any) -> float | None:
    values = [read(entries[task]) for entries in per_run if task < len(entries)]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _layer_summary(values: Mapping[str, float] | None) -> tuple[float, float, float] | None:
    if not values:
        return None
    array = np.array(list(values.values()), dtype=float)
    return float(array.mean()), float(array.min()), float(array.max())


def _fmt(value: float | None, pattern: str = "{:.3f}") -> str:
    return "–" if value is None else pattern.format(value)


def gate_opening(runs: Sequence[Mapping[str, Any]], num_tasks: int) -> dict[str, list[float | None]]:
    """Seed-mean ``gate_start`` and ``gate_end`` per task of one GainLoRA method."""
    per_run = _entries(runs, GATES)
    return {
        side: [_seed_mean(per_run, task, lambda e, side=side: e.get(side)) for task in range(num_tasks)]
        for side in ("gate_start", "gate_end")
    }


def diagnostics_table(groups: Mapping[str, Sequence[Mapping[str, Any]]], order: Sequence[str], tasks: Sequence[str]) -> str:
    """Markdown table, one row per (method, task), of the diagnostics the methods recorded ('' if none)."""
    lines = [
        "| method | task | new gate at start | at end | gate bases (G1 / G2 / key) | A_t reaches (% of input energy: "
        "mean, min-max over layers) | input basis size (mean, min-max) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    rows = 0
    for name in order:
        gates, inflora = _entries(groups[name], GATES), _entries(groups[name], INFLORA)
        if not gates and not inflora:
            continue
        for task, task_name in enumerate(tasks):
            start = _seed_mean(gates, task, lambda e: e.get("gate_start"))
            end = _seed_mean(gates, task, lambda e: e.get("gate_end"))
            sizes = [
                _seed_mean(gates, task, lambda e, layer=layer: (e.get("basis_sizes") or {}).get(layer))
                for layer in ("down", "up", "key")
            ]
            reach = [_layer_summary(entries[task].get("reachable_energy")) for entries in inflora if task < len(entries)]
            basis = [_layer_summary(entries[task].get("basis_sizes")) for entries in inflora if task < len(entries)]
            reach_text = _summary_text([r for r in reach if r], scale=100.0, pattern="{:.2f}")
            basis_text = _summary_text([b for b in basis if b], scale=1.0, pattern="{:.0f}")
            size_text = " / ".join(_fmt(v, "{:.0f}") for v in sizes) if gates else "–"
            lines.append(
                f"| {name} | {task_name} | {_fmt(start)} | {_fmt(end)} | {size_text} | {reach_text} | {basis_text} |"
            )
            rows += 1
    return "\n".join(lines) if rows else ""


def _summary_text(summaries: Sequence[tuple[float, float, float]], *, scale: float, pattern: str) -> str:
    """Seed mean of (mean, min, max) over layers, as 'mean (min-max)'."""
    if not summaries:
        return "–"
    mean, low, high = (float(np.mean([s[i] for s in summaries])) * scale for i in range(3))
    return f"{pattern.format(mean)} ({pattern.format(low)}-{pattern.format(high)})"


def plot_gate_opening(
    openings: Mapping[str, Mapping[str, Sequence[float | None]]], tasks: Sequence[str], path: str | os.PathLike
) -> None:
    """Each new gate's mean value on its own task's training prompts at the start and end of the task.

    :param openings: by GainLoRA method, :func:`gate_opening`.
    :param tasks: task names in order.
    :param path: the PNG file.
    """
    figure = Figure(figsize=(1.2 * len(tasks) + 3.5, 3.6))
    ax = figure.subplots()
    positions = np.arange(len(tasks))
    width = 0.8 / max(2 * len(openings), 1)
    for index, (name, sides) in enumerate(openings.items()):
        for offset, (side, hatch) in enumerate((("gate_start", "//"), ("gate_end", ""))):
            values = [np.nan if v is None else v for v in sides[side]]
            shift = (2 * index + offset - len(openings) + 0.5) * width
            label = f"{name}: {'start' if side == 'gate_start' else 'end'} of its task"
            ax.bar(positions + shift, values, width, label=label, hatch=hatch, color=f"C{index}", alpha=0.5 + 0.5 * offset)
    ax.set_xticks(positions, tasks, rotation=20, ha="right")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("mean gate value on own training prompts")
    ax.set_title("Opening of each task's new gate")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.savefig(path, dpi=120, bbox_inches="tight")
