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


def cheapest_form(
    out_dim: int,
    in_dim: int,
    rank: int,
    forms: tuple[ProjectionForm, ...] = ("dense", "basis", "complement"),
) -> ProjectionForm:
    """The form with the fewest flops among ``forms``; on a tie the earlier (fewer products) wins."""
    return min(forms, key=lambda form: projection_flops(form, out_dim, in_dim, rank))


def available_forms(scaled: bool) -> tuple[ProjectionForm, ...]:
    """The forms that can apply a projection; SGP's scaled projection has no complement form."""
    return ("dense", "basis") if scaled else ("dense", "basis", "complement")


class SubspaceProjector:
    """Projects ``(out, in)`` matrices onto the orthogonal complement of a stored basis.

    With ``scales`` it applies SGP's scaled projection ``g - g M diag(scales) M^T`` instead, which
    removes each protected direction only in proportion to its importance; the complement form
    exists for the plain projection only.

    :param basis: orthonormal ``(in, k)`` basis of the protected input space.
    :param out_dim: number of rows of the matrices that will be projected.
    :param form: force a form instead of choosing the cheapest.
    :param scales: ``(k,)`` importances in [0, 1] of the basis directions (SGP).
    """

    def __init__(
        self, basis: Tensor, out_dim: int, form: ProjectionForm | None = None, scales: Tensor | None = None
    ):
        in_dim, rank = basis.shape
        self.rank, self.dtype = rank, basis.dtype
        if scales is not None and form == "complement":
            raise ValueError("the complement form cannot apply a scaled (SGP) projection; use 'dense' or 'basis'")
        self.form: ProjectionForm = form or cheapest_form(out_dim, in_dim, rank, available_forms(scales is not None))
        scaled = basis if scales is None else basis * scales.to(basis)
        if self.form == "dense":
            self.operator = torch.eye(in_dim, dtype=basis.dtype, device=basis.device) - scaled @ basis.T
        elif self.form == "basis":
            self.operator, self.back = basis, scaled
        else:
            self.operator = orthogonal_complement(basis)

    def __call__(self, matrix: Tensor) -> Tensor:
        """Return the projection of ``matrix`` (``(out, in)``); ``matrix`` is not modified."""
        if self.form == "dense":
            return matrix @ self.operator
        if self.form == "basis":
            return torch.addmm(matrix, matrix @ self.operator, self.back.T, alpha=-1)
        return (matrix @ self.operator) @ self.operator.T
