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


def ap_ft(matrix: Sequence[Sequence[float]] | np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Average performance and forgetting after the last task, as in the GainLoRA paper.

    ``a[l, i]`` is the score on task ``i`` after training task ``l`` (``T`` tasks, 0-indexed):
    ``AP = mean_i a[T-1, i]`` and
    ``FT = 1/(T-1) sum_{i < T-1} (max_{i <= l < T-1} a[l, i] - a[T-1, i])``.

    The paper writes the max over every ``l`` before the last task; it is taken here over
    ``l >= i`` only, the rows where task ``i`` had been trained: ``a[l, i]`` for ``l < i`` is the
    score before training task ``i`` (the official code never measures it), and counting it would
    report losing a zero-shot skill as forgetting. Entries above the diagonal are thus ignored
    and may be NaN (not evaluated).

    :param matrix: the ``T x T`` score matrix.
    :return: ``(ap, ft)``; ``ft`` is NaN for a single task, where it is undefined.
    """
    a = torch.as_tensor(matrix, dtype=torch.float64).cpu().numpy()
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"score matrix must be square and non-empty, got shape {a.shape}")
    ap = float(a[-1].mean())
    if a.shape[0] == 1:
        return ap, float("nan")
    before_last = a[:-1, :-1]
    trained = np.tril(np.ones_like(before_last, dtype=bool))  # row l >= column i
    best = np.where(trained, before_last, -np.inf).max(axis=0)
    return ap, float((best - a[-1, :-1]).mean())
