"""InfLoRA's branch design (Liang & Li, CVPR 2024): a frozen down-projection outside old inputs.

For a new task, the rows of ``A_t`` are the ``r`` strongest directions of the new task's input
covariance ``C`` outside the subspace ``M`` of the layer's inputs on old tasks (top left singular
vectors of ``(I - M M^T) C``), scaled by ``1/sqrt(3)`` as in the official code. Only ``B_t`` is
trained, so the branch's update ``B_t A_t`` acts on directions old tasks barely use.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from avalanche_gpm.subspace import top_residual_directions

#: The official code scales the designed rows by this factor.
DOWN_PROJECTION_SCALE = 1 / math.sqrt(3)


def design_down_projection(covariance: Tensor, basis: Tensor | None, rank: int) -> Tensor:
    """``A_t`` (``rank x in``) for one layer.

    :param covariance: ``(in, in)`` input covariance (or Gram matrix) of the layer on the new task.
    :param basis: orthonormal ``(in, k)`` basis of the layer's inputs on old tasks, or ``None``.
    :param rank: the branch's rank.
    """
    return top_residual_directions(covariance, basis, rank).T * DOWN_PROJECTION_SCALE


def reachable_energy(down: Tensor, covariance: Tensor) -> float:
    """Share of the new task's input energy ``trace(C)`` that lies in the row space of ``A_t``.

    It is what the branch can act on: a ``B_t A_t`` update changes the outputs of inputs only
    through their component in that space.

    :param down: ``A_t`` (``rank x in``).
    :param covariance: ``(in, in)`` covariance (or Gram matrix) of the layer's inputs on the new task.
    """
    covariance = covariance.double()
    total = float(torch.trace(covariance))
    if total <= 0:
        return 0.0
    rows, _ = torch.linalg.qr(down.detach().double().T.to(covariance.device))
    return float(torch.einsum("dr,de,er->", rows, covariance, rows)) / total
