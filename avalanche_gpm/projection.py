"""Gradient projection of one layer, in whichever algebraic form is cheapest for its shape.

Removing the protected component of a gradient ``g`` (``out x in``) given an orthonormal
basis ``M`` (``in x k``) can be written three ways with the same result:

========== =============================== ===================
form       computation                      multiply-adds x 2
========== =============================== ===================
dense      ``g (I - M M^T)``                ``2 out in^2``
basis      ``g - (g M) M^T``                ``4 out in k``
complement ``(g Q) Q^T``, ``Q = M^perp``    ``4 out in (in-k)``
========== =============================== ===================

:class:`SubspaceProjector` precomputes the operator of the cheapest form once per basis update,
so a training step pays one or two matrix products per layer.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from avalanche_gpm.subspace import orthogonal_complement

ProjectionForm = Literal["dense", "basis", "complement"]


def projection_flops(form: ProjectionForm, out_dim: int, in_dim: int, rank: int) -> int:
    """Floating-point operations of one projection of an ``out_dim x in_dim`` gradient."""
    if form == "dense":
        return 2 * out_dim * in_dim * in_dim
    if form == "basis":
        return 4 * out_dim * in_dim * rank
    if form == "complement":
        return 4 * out_dim * in_dim * (in_dim - rank)
    raise ValueError(f"unknown projection form {form!r}")


def cheapest_form(out_dim: int, in_dim: int, rank: int) -> ProjectionForm:
    """The form with the fewest flops; on a tie the one with fewer matrix products wins."""
    forms: tuple[ProjectionForm, ...] = ("dense", "basis", "complement")
    return min(forms, key=lambda form: projection_flops(form, out_dim, in_dim, rank))


class SubspaceProjector:
    """Projects ``(out, in)`` matrices onto the orthogonal complement of a stored basis.

    :param basis: orthonormal ``(in, k)`` basis of the protected input space.
    :param out_dim: number of rows of the matrices that will be projected.
    :param form: force a form instead of choosing the cheapest.
    """

    def __init__(self, basis: Tensor, out_dim: int, form: ProjectionForm | None = None):
        in_dim, rank = basis.shape
        self.form: ProjectionForm = form or cheapest_form(out_dim, in_dim, rank)
        if self.form == "dense":
            self.operator = torch.eye(in_dim, dtype=basis.dtype, device=basis.device) - basis @ basis.T
        elif self.form == "basis":
            self.operator = basis
        else:
            self.operator = orthogonal_complement(basis)

    def __call__(self, matrix: Tensor) -> Tensor:
        """Return the projection of ``matrix`` (``(out, in)``); ``matrix`` is not modified."""
        if self.form == "dense":
            return matrix @ self.operator
        if self.form == "basis":
            return torch.addmm(matrix, matrix @ self.operator, self.operator.T, alpha=-1)
        return (matrix @ self.operator) @ self.operator.T
