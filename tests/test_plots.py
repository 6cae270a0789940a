"""Heat maps people read: untrained cells greyed, shared row labels drawn once."""

from __future__ import annotations

import numpy as np
from matplotlib.patches import Rectangle

from gpm_gainlora_experiments.common.plots import heatmap_figure

GREY = (0xE6 / 255, 0xE6 / 255, 0xE6 / 255, 1.0)


def _grey_cells(ax) -> list[tuple[float, float]]:
    return sorted(p.get_xy() for p in ax.patches if isinstance(p, Rectangle) and p.get_facecolor() == GREY)


def test_cells_of_tasks_not_trained_yet_are_greyed():
    matrix = np.arange(9, dtype=float).reshape(3, 3) / 10
    figure = heatmap_figure({"gpm": matrix, "naive": matrix}, tick_labels=["a", "b", "a_long_task_name"])
    panels = figure.axes[:2]
    for ax in panels:  # (column - 0.5, row - 0.5) of the cells above the diagonal
        assert _grey_cells(ax) == [(0.5, -0.5), (1.5, -0.5), (1.5, 0.5)]
    first, second = ([label.get_text() for label in ax.get_yticklabels()] for ax in panels)
    assert first == ["a", "b", "a_long_task_name"] and second == ["", "", ""]


def test_matrices_without_a_training_order_and_joint_rows_are_not_greyed():
    square = np.full((3, 3), 0.5)
    assert not _grey_cells(heatmap_figure({"gates": square}, grey_untrained=False).axes[0])
    assert not _grey_cells(heatmap_figure({"joint": np.full((1, 3), 0.5)}).axes[0])
