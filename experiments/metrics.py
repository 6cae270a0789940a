"""Continual-learning summary metrics of an accuracy matrix (Lopez-Paz & Ranzato; GPM paper)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def acc_bwt(matrix: Sequence[Sequence[float]] | np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Average accuracy and backward transfer after the last task.

    ``A[t, j]`` is the accuracy on task ``j`` after training task ``t`` (``T`` tasks):
    ``ACC = mean_j A[T-1, j]`` and ``BWT = mean_{j < T-1} (A[T-1, j] - A[j, j])``.

    :param matrix: the ``T x T`` accuracy matrix.
    :return: ``(acc, bwt)``; ``bwt`` is NaN for a single task, where it is undefined.
    """
    a = torch.as_tensor(matrix, dtype=torch.float64).cpu().numpy()
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square and non-empty, got shape {a.shape}")
    last = a[-1]
    acc = float(last.mean())
    if a.shape[0] == 1:
        return acc, float("nan")
    return acc, float((last[:-1] - np.diag(a)[:-1]).mean())
