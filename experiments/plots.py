"""Figures of a sweep: accuracy matrices, per-task curves, GPM memory, and ACC/BWT bars.

Figures are built with :class:`matplotlib.figure.Figure` and saved with the Agg renderer, so
nothing here needs a display or touches pyplot's global state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from experiments.tables import StrategySummary

_PANEL = 4.5  # inches per subplot


def _save(figure: Figure, path: str | os.PathLike) -> None:
    figure.savefig(path, dpi=120, bbox_inches="tight")


def plot_accuracy_matrices(matrices: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """One annotated heat map of ``A[t, j]`` (in percent) per strategy.

    :param matrices: seed-averaged ``T x T`` accuracy matrix by strategy.
    :param path: the PNG file.
    """
    figure = Figure(figsize=(_PANEL * len(matrices), _PANEL))
    axes = figure.subplots(1, len(matrices), squeeze=False)[0]
    for ax, (strategy, matrix) in zip(axes, matrices.items()):
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
        rows, cols = matrix.shape
        for t in range(rows):
            for j in range(cols):
                # Dark text on the bright (high-accuracy) end of viridis, light text elsewhere.
                colour = "black" if matrix[t, j] > 0.6 else "white"
                ax.text(j, t, f"{100 * matrix[t, j]:.0f}", ha="center", va="center", fontsize=7, color=colour)
        ax.set_xticks(range(cols))
        ax.set_yticks(range(rows))
        ax.set_xlabel("evaluated task")
        ax.set_ylabel("trained up to task")
        ax.set_title(strategy)
    figure.colorbar(image, ax=list(axes), shrink=0.8, label="test accuracy")
    _save(figure, path)


def plot_task_curves(matrices: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Accuracy of every task from the step it is learned to the end, one panel per strategy.

    :param matrices: seed-averaged ``T x T`` accuracy matrix by strategy.
    :param path: the PNG file.
    """
    figure = Figure(figsize=(_PANEL * len(matrices), _PANEL * 0.8))
    axes = figure.subplots(1, len(matrices), squeeze=False, sharey=True)[0]
    for ax, (strategy, matrix) in zip(axes, matrices.items()):
        steps = matrix.shape[0]
        for task in range(matrix.shape[1]):
            ax.plot(range(task, steps), matrix[task:, task], marker="o", markersize=3, label=f"task {task}")
        ax.set_xticks(range(steps))
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
        stds = 100 * np.asarray(stds, dtype=float)
        # Single-seed strategies have no spread: no error bar rather than a zero-length one.
        errors = None if np.isnan(stds).all() else np.nan_to_num(stds)
        ax.bar(names, 100 * np.asarray(means), yerr=errors, capsize=4, color=[f"C{i}" for i in range(len(names))])
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    _save(figure, path)
