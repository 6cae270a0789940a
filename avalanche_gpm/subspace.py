"""Subspace math shared by every projection method in the project (GPM, GainLoRA's gates, InfLoRA).

Nothing here knows about Avalanche or about layers. A *representation* of a layer is the matrix
``R`` (``in x n``) whose columns are inputs the layer saw; the functions take its Gram matrix
``K = R R^T`` instead of ``R``. The left singular vectors of ``R`` are the eigenvectors of ``K``
and its squared singular values are the eigenvalues of ``K``, so every quantity of the GPM
energy criterion is available from ``K``, which can be accumulated batch by batch in ``in x in``
memory however many columns (samples, im2col patches, tokens) ``R`` has.

Bases are orthonormal column matrices ``M`` of shape ``(in, k)``. Decompositions run in float64.

Two energy rules decide how many directions a basis keeps (``energy=``):

* ``"gram"`` (GPM): the energy of a direction is an eigenvalue ``lambda_i`` of ``K``, i.e. a
  squared singular value of ``R``.
* ``"covariance"`` (the InfLoRA and GainLoRA code): ``K`` is read as a covariance ``C`` and the
  energy of a direction is the squared singular value of ``C``, ``lambda_i^2``; later tasks use
  the residual ``C - M M^T C`` measured against ``||C||_F^2``. This is GPM's rule applied to
  ``C C^T`` (the squared singular values of ``(I - M M^T) C`` are the eigenvalues of
  ``(I - M M^T) C C^T (I - M M^T)``, and ``trace(C C^T) = ||C||_F^2``), which is how it is
  implemented: one set of criteria for both. It keeps far fewer directions, since squaring
  sharpens the spectrum.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

FirstTaskRule = Literal["paper", "official", "official_min1"]
FIRST_TASK_RULES: tuple[str, ...] = ("paper", "official", "official_min1")

EnergyRule = Literal["gram", "covariance"]
ENERGY_RULES: tuple[str, ...] = ("gram", "covariance")

# Cumulative energy ratios are compared with this slack so that round-off (energy ~1e-16 in
# directions the data does not span) cannot make a threshold of 1.0 unreachable.
_ENERGY_SLACK = 1e-10


class DecompositionError(RuntimeError):
    """No eigen-decomposition of a Gram matrix could be computed (non-finite entries, or both
    ``eigh`` and the SVD fallback failed). Callers that know the layer re-raise it with its name."""


def principal_directions(gram: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decompose a Gram matrix ``K = R R^T``.

    ``torch.linalg.eigh`` can fail to converge on large rank-deficient Gram matrices (seen on a
    4608-dimensional ResNet-18 conv input from ~50 samples); the SVD of the same symmetric positive
    semi-definite matrix has the same left vectors and energies, and is used then.

    :param gram: symmetric positive semi-definite ``(d, d)`` matrix.
    :return: ``(U, s2)``: the directions (columns of ``U``, float64) sorted by decreasing energy
        ``s2`` (the squared singular values of ``R``; round-off negatives clipped to zero).
    :raises DecompositionError: for NaN or infinite entries, or when no decomposition converges.
    """
    gram = gram.double()
    if not bool(torch.isfinite(gram).all()):
        raise DecompositionError("the Gram matrix has NaN or infinite entries (the layer saw NaN or inf inputs)")
    gram = (gram + gram.T) / 2  # accumulated Gram matrices drift from exact symmetry
    try:
        s2, u = torch.linalg.eigh(gram)
    except torch.linalg.LinAlgError:
        try:
            u, s2, _ = torch.linalg.svd(gram)  # already in decreasing order
        except torch.linalg.LinAlgError as error:
            raise DecompositionError(
                f"neither eigh nor the SVD converged on the {gram.shape[0]}-dimensional Gram matrix: {error}"
            ) from error
        return u, s2.clamp_min(0.0)
    order = torch.argsort(s2, descending=True)
    return u[:, order], s2[order].clamp_min(0.0)


def first_task_rank(s2: Tensor, threshold: float, rule: FirstTaskRule = "paper") -> int:
    """Number of directions kept from the first representation (paper, eq. 5).

    ``paper``: the smallest ``k`` whose directions hold at least ``threshold`` of the energy.
    ``official``: the GPM authors' code keeps ``sum(cumsum(ratio) < threshold)``, one direction
    fewer than the paper (and none at all when the first direction alone reaches the threshold).
    ``official_min1``: the InfLoRA / GainLoRA code, ``max(sum(cumsum(ratio) < threshold), 1)``.

    :param s2: energies in decreasing order.
    :param threshold: energy fraction in (0, 1].
    :param rule: one of :data:`FIRST_TASK_RULES`.
    """
    if rule not in FIRST_TASK_RULES:
        raise ValueError(f"first_task_rule must be one of {FIRST_TASK_RULES}, got {rule!r}")
    total = s2.sum()
    if total <= 0:
        return 0
    below = int((torch.cumsum(s2 / total, 0) < threshold - _ENERGY_SLACK).sum())
    if rule == "official":
        return below
    if rule == "official_min1":
        return max(below, 1)
    return min(below + 1, s2.numel())


def check_energy_rule(energy: str) -> None:
    """Fail early on an energy rule :func:`grow_basis` does not know."""
    if energy not in ENERGY_RULES:
        raise ValueError(f"energy rule must be one of {ENERGY_RULES}, got {energy!r}")


def energy_matrix(gram: Tensor, energy: EnergyRule = "gram") -> Tensor:
    """The float64 matrix whose eigenvalues are the energies of ``energy``'s rule: ``K`` itself for
    ``"gram"``, ``C C^T`` for ``"covariance"`` (see the module docstring)."""
    check_energy_rule(energy)
    gram = gram.double()
    return gram if energy == "gram" else gram @ gram.T


def residual_rank(residual_s2: Tensor, total: float, threshold: float) -> int:
    """Number of residual directions to add for a later task (paper, eq. 8-9).

    The energy already explained by the stored basis is ``(total - sum(residual_s2)) / total``;
    residual directions are added in decreasing order until the explained fraction reaches
    ``threshold``. The authors' code implements the same rule.

    :param residual_s2: energies of the residual ``R - M M^T R``, in decreasing order.
    :param total: energy of the full new representation ``||R||_F^2``.
    :param threshold: energy fraction in (0, 1].
    """
    if total <= 0:
        return 0
    explained = (total - float(residual_s2.sum())) / total
    if explained >= threshold - _ENERGY_SLACK:
        return 0
    reached = explained + torch.cumsum(residual_s2 / total, 0)
    return min(int((reached < threshold - _ENERGY_SLACK).sum()) + 1, residual_s2.numel())


class BasisUpdate(NamedTuple):
    """Result of :func:`grow_basis`: the new basis and the energies of the directions it added."""

    basis: Tensor
    added_energies: Tensor


def grow_basis(
    basis: Tensor | None,
    gram: Tensor,
    threshold: float,
    first_task_rule: FirstTaskRule = "paper",
    energy: EnergyRule = "gram",
) -> BasisUpdate:
    """Extend an orthonormal basis so that it explains ``threshold`` of a new representation.

    :param basis: the stored ``(d, k)`` basis, or ``None`` before the first task (the first-task
        criterion is used then; an empty ``(d, 0)`` basis uses the incremental criterion).
    :param gram: Gram matrix ``R R^T`` (``d x d``) of the new representation.
    :param threshold: energy fraction in (0, 1].
    :param first_task_rule: see :func:`first_task_rank`.
    :param energy: ``"gram"`` (GPM) or ``"covariance"`` (InfLoRA / GainLoRA code), see the module docstring.
    :return: the new basis (float64, old columns first, never more than ``d`` columns) and the
        energies of the added columns under the chosen rule.
    """
    gram = energy_matrix(gram, energy)
    dim = gram.shape[0]
    if basis is None:
        directions, s2 = principal_directions(gram)
        kept = first_task_rank(s2, threshold, first_task_rule)
        # A copy, not a view: a view would keep (and torch.save would write) all d x d directions.
        return BasisUpdate(directions[:, :kept].clone(), s2[:kept].clone())

    basis = basis.to(gram)
    complement = torch.eye(dim, dtype=gram.dtype, device=gram.device) - basis @ basis.T
    directions, s2 = principal_directions(complement @ gram @ complement)
    added = min(residual_rank(s2, float(torch.trace(gram)), threshold), dim - basis.shape[1])
    if added == 0:
        return BasisUpdate(basis, s2[:0].clone())
    # In exact arithmetic the residual directions are already orthogonal to the basis; one more
    # projection and a QR keep M^T M = I over many tasks (the official code appends them as-is).
    new = directions[:, :added]
    new, _ = torch.linalg.qr(new - basis @ (basis.T @ new))
    return BasisUpdate(torch.cat([basis, new], dim=1), s2[:added].clone())


def basis_strengths(basis: Tensor, gram: Tensor) -> Tensor:
    """``||R^T m_i||`` for every basis column ``m_i``: how strongly a representation uses each direction."""
    basis = basis.to(gram.dtype)
    return torch.einsum("di,de,ei->i", basis, gram, basis).clamp_min(0.0).sqrt()


def scaled_importance(strengths: Tensor, alpha: float) -> Tensor:
    """SGP's importance ``(alpha + 1) s / (alpha s + max s)``: 1 for the strongest direction,
    close to 1 for strong ones and close to 0 for weak ones (Saha & Roy, AAAI 2023, eq. 2)."""
    if strengths.numel() == 0 or float(strengths.max()) <= 0:
        return torch.zeros_like(strengths)
    return (alpha + 1) * strengths / (alpha * strengths + strengths.max())


def top_residual_directions(matrix: Tensor, basis: Tensor | None, count: int) -> Tensor:
    """The ``count`` strongest directions of ``matrix``'s columns outside ``span(M)``: the top left
    singular vectors of ``(I - M M^T) matrix`` (InfLoRA's down-projection, GainLoRA's new key).

    The SVD runs in the complement of ``span(M)``, so when the residual has fewer than ``count``
    non-zero directions the remaining columns still come from the complement, never from ``M``.

    :param matrix: ``(d, n)`` matrix, typically a covariance ``E[x x^T]`` of new inputs.
    :param basis: orthonormal ``(d, k)`` basis to stay orthogonal to, or ``None``.
    :param count: number of directions, at most ``d - k``.
    :return: ``(d, count)`` orthonormal columns (float64), orthogonal to ``basis``.
    """
    matrix = matrix.double()
    if basis is None or basis.shape[1] == 0:
        complement = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    else:
        complement = orthogonal_complement(basis.to(matrix))
    if count > complement.shape[1]:
        raise ValueError(
            f"asked for {count} directions orthogonal to a {basis.shape[1]}-dimensional subspace of a "
            f"{matrix.shape[0]}-dimensional space; only {complement.shape[1]} exist (lower the rank or the threshold)"
        )
    directions, _, _ = torch.linalg.svd(complement.T @ matrix, full_matrices=True)
    return complement @ directions[:, :count]


def orthogonal_complement(basis: Tensor) -> Tensor:
    """Orthonormal ``(d, d - k)`` basis of the complement of ``span(basis)``."""
    dim, rank = basis.shape
    full, _ = torch.linalg.qr(basis.double(), mode="complete")
    return full[:, rank:].to(basis.dtype) if rank < dim else basis.new_zeros(dim, 0)
