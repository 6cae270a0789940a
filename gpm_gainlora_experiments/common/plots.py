"""Figures of a sweep: accuracy (and other) heat maps, per-task curves, GPM memory, and ACC/BWT bars.

A joint (multitask) run has a ``1 x T`` matrix, its final accuracies, and no BWT.

Figures are built with :class:`matplotlib.figure.Figure` and saved with the Agg renderer, so
nothing here needs a display or touches pyplot's global state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from gpm_gainlora_experiments.common.tables import StrategySummary

_PANEL = 4.5  # inches per subplot


def _save(figure: Figure, path: str | os.PathLike) -> None:
    figure.savefig(path, dpi=120, bbox_inches="tight")


def _is_joint(matrix: np.ndarray) -> bool:
    # Sequential training gives one row per task; joint training only the final one.
    return matrix.shape[0] < matrix.shape[1]


def plot_accuracy_matrices(matrices: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """One annotated heat map of ``A[t, j]`` (in percent) per strategy; a single row for joint runs.

    :param matrices: seed-averaged ``T x T`` (joint: ``1 x T``) accuracy matrix by strategy.
    :param path: the PNG file.
    """
    plot_heatmaps(matrices, path)


def plot_heatmaps(matrices: Mapping[str, np.ndarray], path: str | os.PathLike, **options: Any) -> None:
    """Save :func:`heatmap_figure` of ``matrices`` (with its keyword ``options``) as a PNG at ``path``."""
    _save(heatmap_figure(matrices, **options), path)


def heatmap_figure(
    matrices: Mapping[str, np.ndarray],
    *,
    vmax: float = 1.0,
    annotation_scale: float = 100.0,
    annotation_format: str = ".0f",
    colorbar_label: str = "test accuracy",
    xlabel: str = "evaluated task",
    ylabel: str = "trained up to task",
    tick_labels: Sequence[str] | None = None,
    grey_untrained: bool = True,
) -> Figure:
    """One annotated heat map per entry (values in ``[0, vmax]``); a single row for joint runs.

    NaN entries (not evaluated) stay blank. In a ``T x T`` matrix of sequential training the cells
    above the diagonal (tasks not trained yet) are greyed, so the eye reads the learned part.

    :param matrices: a matrix by panel title.
    :param vmax: top of the colour scale (its bottom is 0).
    :param annotation_scale: factor of the printed values (100: fractions shown as percent).
    :param annotation_format: format of the printed values.
    :param colorbar_label: label of the colour bar.
    :param xlabel: label of the columns.
    :param ylabel: label of the rows (of a ``T x T`` matrix).
    :param tick_labels: names of the tasks, for both axes; default their indices.
    :param grey_untrained: grey the cells above the diagonal (False for matrices without a
        training order, e.g. gates by test prompts).
    """
    names = list(tick_labels) if tick_labels is not None else None
    # Room for the row labels of the first panel only (the others share them).
    label_room = 0.0 if names is None else 0.07 * max(len(name) for name in names)
    figure = Figure(figsize=(_PANEL * len(matrices) + label_room, _PANEL), layout="constrained")
    axes = figure.subplots(1, len(matrices), squeeze=False)[0]
    for index, (ax, (strategy, matrix)) in enumerate(zip(axes, matrices.items())):
        image = ax.imshow(matrix, vmin=0.0, vmax=vmax, cmap="viridis")
        rows, cols = matrix.shape
        sequential = grey_untrained and not _is_joint(matrix) and rows == cols
        for t in range(rows):
            for j in range(cols):
                if np.isnan(matrix[t, j]):
                    continue
                text = format(annotation_scale * matrix[t, j], annotation_format)
                if sequential and j > t:
                    ax.add_patch(Rectangle((j - 0.5, t - 0.5), 1, 1, facecolor="#e6e6e6", edgecolor="none"))
                    ax.text(j, t, text, ha="center", va="center", fontsize=7, color="#8c8c8c")
                    continue
                # Dark text on the bright (high-accuracy) end of viridis, light text elsewhere.
                colour = "black" if matrix[t, j] > 0.6 * vmax else "white"
                ax.text(j, t, text, ha="center", va="center", fontsize=7, color=colour)
        rotation = {"rotation": 45, "ha": "right"} if names is not None else {}
        ax.set_xticks(range(cols), names[:cols] if names is not None else None, **rotation)
        ax.set_xlabel(xlabel)
        if _is_joint(matrix):
            ax.set_yticks([0], ["all"])
            ax.set_ylabel("trained jointly on")
        elif index == 0 or names is None:
            ax.set_yticks(range(rows), names[:rows] if names is not None else None)
            ax.set_ylabel(ylabel)
        else:
            ax.set_yticks(range(rows), [""] * rows)
        ax.set_title(strategy)
    figure.colorbar(image, ax=list(axes), shrink=0.8, label=colorbar_label)
    return figure


def plot_task_curves(matrices: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Accuracy of every task from the step it is learned to the end, one panel per strategy.

    A joint run has no curve: its final accuracy of each task is a dash at the last step.

    :param matrices: seed-averaged ``T x T`` (joint: ``1 x T``) accuracy matrix by strategy.
    :param path: the PNG file.
    """
    figure = Figure(figsize=(_PANEL * len(matrices), _PANEL * 0.8))
    axes = figure.subplots(1, len(matrices), squeeze=False, sharey=True)[0]
    for ax, (strategy, matrix) in zip(axes, matrices.items()):
        steps = matrix.shape[1]
        for task in range(steps):
            if _is_joint(matrix):
                ax.plot([steps - 1], matrix[:, task], marker="_", markersize=14, mew=2, label=f"task {task}")
            else:
                ax.plot(range(task, steps), matrix[task:, task], marker="o", markersize=3, label=f"task {task}")
        ax.set_xticks(range(steps))
        # Fixed limits: a joint panel's data alone would squeeze it to the last step.
        ax.set_xlim(-0.5, steps - 0.5)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("trained up to task")
        ax.set_title(strategy)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7)
    _save(figure, path)


def plot_gpm_memory(fractions: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike) -> None:
    """Fraction of each protected layer's input space held in memory after each task.

    :param fractions: by strategy, the seed-averaged fraction per task of every layer.
    :param path: the PNG file.
    """
    figure = Figure(figsize=(_PANEL * len(fractions), _PANEL * 0.8))
    axes = figure.subplots(1, len(fractions), squeeze=False, sharey=True)[0]
    for ax, (strategy, layers) in zip(axes, fractions.items()):
        for layer, values in layers.items():
            ax.plot(range(len(values)), values, marker="o", markersize=3, label=layer)
        ax.set_xticks(range(max(len(values) for values in layers.values())))
        ax.set_ylim(0.0, 1.05)
        ax.set_xlabel("trained up to task")
        ax.set_title(f"{strategy}: memory per layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("fraction of input space protected")
    _save(figure, path)


def plot_acc_bwt(summaries: Sequence[StrategySummary], path: str | os.PathLike) -> None:
    """Bars of ACC and BWT (percent) per strategy, with the seed std as error bars.

    Strategies without BWT (joint training) get no BWT bar but an "n/a" label in its place.

    :param summaries: one row per strategy, in display order.
    :param path: the PNG file.
    """
    names = [s.strategy for s in summaries]
    figure = Figure(figsize=(max(6.0, 1.6 * len(names)), 3.5))
    acc_ax, bwt_ax = figure.subplots(1, 2)
    for ax, means, stds, title in (
        (acc_ax, [s.acc_mean for s in summaries], [s.acc_std for s in summaries], "ACC (%)"),
        (bwt_ax, [s.bwt_mean for s in summaries], [s.bwt_std for s in summaries], "BWT (%)"),
    ):
        means = 100 * np.asarray(means, dtype=float)
        stds = 100 * np.asarray(stds, dtype=float)
        # Single-seed strategies have no spread: no error bar rather than a zero-length one.
        errors = None if np.isnan(stds).all() else np.nan_to_num(stds)
        undefined = np.isnan(means)
        ax.bar(
            names,
            np.where(undefined, 0.0, means),
            yerr=errors,
            capsize=4,
            color=[f"C{i}" for i in range(len(names))],
        )
        for position in np.flatnonzero(undefined):
            # x in data, y in axes coordinates: mid-height whatever the sign of the other bars.
            ax.text(position, 0.5, "n/a", transform=ax.get_xaxis_transform(), ha="center", va="center")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    _save(figure, path)
