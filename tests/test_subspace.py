"""Subspace math: rank criteria, basis growth, projection forms."""

import pytest
import torch

from avalanche_gpm.projection import SubspaceProjector, cheapest_form
from avalanche_gpm.subspace import (
    DecompositionError,
    first_task_rank,
    grow_basis,
    orthogonal_complement,
    principal_directions,
    residual_rank,
)


def representation(singular_values, dim=10, columns=40, seed=0):
    """R = U diag(s) V^T with the given singular values; returns (R, U)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(columns, len(singular_values), generator=g, dtype=torch.float64))
    s = torch.tensor(singular_values, dtype=torch.float64)
    return u[:, : len(s)] @ torch.diag(s) @ v.T, u


# energies 16, 4, 1, 1 (22 in all): cumulative ratios 0.727, 0.909, 0.955, 1.0
SPECTRUM = [4.0, 2.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "threshold, paper, official",
    [(0.7, 1, 0), (0.8, 2, 1), (0.95, 3, 2), (0.96, 4, 3), (1.0, 4, 3)],
)
def test_first_task_rank_on_known_spectrum(threshold, paper, official):
    r, _ = representation(SPECTRUM)
    basis = grow_basis(None, r @ r.T, threshold, "paper").basis
    assert basis.shape[1] == paper
    assert grow_basis(None, r @ r.T, threshold, "official").basis.shape[1] == official
    s2 = torch.tensor(SPECTRUM, dtype=torch.float64) ** 2
    assert first_task_rank(s2, threshold, "paper") == paper
    assert first_task_rank(s2, threshold, "official") == official


def test_first_task_basis_spans_top_directions():
    r, u = representation(SPECTRUM)
    basis = grow_basis(None, r @ r.T, 0.8).basis
    # the kept span equals the span of the two strongest left singular vectors
    assert torch.allclose(basis @ basis.T, u[:, :2] @ u[:, :2].T, atol=1e-10)


def test_residual_rank_counts_only_unexplained_energy():
    # total 10; the basis already explains 6 of it; residual energies 3 and 1
    residual = torch.tensor([3.0, 1.0], dtype=torch.float64)
    assert residual_rank(residual, 10.0, 0.5) == 0
    assert residual_rank(residual, 10.0, 0.8) == 1
    assert residual_rank(residual, 10.0, 0.95) == 2


def test_incremental_growth_adds_directions_outside_the_basis():
    _, u = representation(SPECTRUM)
    first = u[:, :2]
    # new task: energy 9 along u0 (explained) and 4, 1 along u5, u6 (new)
    new = torch.stack([3 * u[:, 0], 2 * u[:, 5], u[:, 6]], dim=1)
    grown, added = grow_basis(first, new @ new.T, 0.9)  # explained 9/14 -> needs u5 (13/14 >= 0.9)
    assert grown.shape[1] == 3
    assert torch.equal(grown[:, :2], first)
    assert torch.allclose(grown[:, 2].abs(), u[:, 5].abs(), atol=1e-8)
    assert torch.allclose(added, torch.tensor([4.0], dtype=torch.float64))
    assert grow_basis(first, new @ new.T, 0.6).basis.shape[1] == 2  # 9/14 already explained


def test_bases_stay_orthonormal_and_bounded_over_many_updates():
    g = torch.Generator().manual_seed(1)
    dim, basis = 24, None
    for task in range(40):
        r = torch.randn(dim, 6, generator=g) * torch.linspace(3, 0.1, 6)
        basis = grow_basis(basis, r @ r.T, 0.95).basis
        assert basis.shape[1] <= dim
        eye = torch.eye(basis.shape[1], dtype=basis.dtype)
        assert torch.allclose(basis.T @ basis, eye, atol=1e-5), f"lost orthonormality at task {task}"
    assert basis.shape[1] == dim  # random tasks eventually fill the space


@pytest.mark.parametrize("rank", [0, 3, 8, 12])
def test_projection_forms_agree_and_remove_the_protected_component(rank):
    g = torch.Generator().manual_seed(rank)
    basis, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    basis = basis[:, :rank]
    grad = torch.randn(5, 12, generator=g, dtype=torch.float64)
    projected = [SubspaceProjector(basis, 5, form)(grad) for form in ("dense", "basis", "complement")]
    for other in projected[1:]:
        assert torch.allclose(projected[0], other, atol=1e-10)
    assert torch.allclose(projected[0] @ basis, torch.zeros(5, rank, dtype=torch.float64), atol=1e-10)
    # what is left is untouched: projecting twice changes nothing
    assert torch.allclose(SubspaceProjector(basis, 5)(projected[0]), projected[0], atol=1e-10)


def test_cheapest_form_follows_the_cost_model():
    assert cheapest_form(100, 784, 50) == "basis"
    assert cheapest_form(100, 784, 700) == "complement"
    assert cheapest_form(100, 100, 50) == "dense"  # tie: one product instead of two


def test_orthogonal_complement_is_orthonormal_and_orthogonal():
    basis, _ = torch.linalg.qr(torch.randn(9, 4, dtype=torch.float64))
    comp = orthogonal_complement(basis)
    assert comp.shape == (9, 5)
    assert torch.allclose(comp.T @ comp, torch.eye(5, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(basis.T @ comp, torch.zeros(4, 5, dtype=torch.float64), atol=1e-10)


# -- the covariance energy rule of the InfLoRA / GainLoRA code -------------------------------------


def covariance(eigenvalues, dim=10, seed=0):
    """C = U diag(lambda) U^T with the given eigenvalues; returns (C, U)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    lam = torch.tensor(eigenvalues + [0.0] * (dim - len(eigenvalues)), dtype=torch.float64)
    return u @ torch.diag(lam) @ u.T, u


@pytest.mark.parametrize(
    # lambda 4, 2, 1, 0.5: covariance energies lambda^2 = 16, 4, 1, 0.25 (cumulative 0.753, 0.941, 0.988, 1),
    # GPM's energies lambda (cumulative 0.533, 0.8, 0.933, 1)
    "threshold, covariance_rank, gram_rank",
    [(0.5, 1, 1), (0.7, 1, 2), (0.85, 1, 3), (0.95, 2, 4), (0.99, 3, 4)],
)
def test_covariance_rule_squares_the_eigenvalues_and_keeps_one_direction_at_least(threshold, covariance_rank, gram_rank):
    c, u = covariance([4.0, 2.0, 1.0, 0.5])
    official = grow_basis(None, c, threshold, "official_min1", energy="covariance")
    assert official.basis.shape[1] == covariance_rank
    assert torch.allclose(official.basis @ official.basis.T, u[:, :covariance_rank] @ u[:, :covariance_rank].T, atol=1e-8)
    assert torch.allclose(official.added_energies[:1], torch.tensor([16.0], dtype=torch.float64))
    assert grow_basis(None, c, threshold, "paper").basis.shape[1] == gram_rank


def _official_residual_rank(c: torch.Tensor, basis: torch.Tensor, threshold: float) -> int:
    """The InfLoRA code's later-task criterion, written out: Frobenius norms of C - P C."""
    residual = c - basis @ (basis.T @ c)
    total = float((torch.linalg.svdvals(c) ** 2).sum())
    sval = torch.linalg.svdvals(residual) ** 2
    accumulated, count = (total - float(sval.sum())) / total, 0
    for ratio in (sval / total).tolist():
        if accumulated >= threshold:
            break
        accumulated += ratio
        count += 1
    return count


@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.99, 0.999])
def test_covariance_rule_on_a_later_task_matches_the_frobenius_criterion(threshold):
    g = torch.Generator().manual_seed(3)
    old = torch.randn(12, 30, generator=g, dtype=torch.float64) * torch.linspace(3, 0.1, 12, dtype=torch.float64)[:, None]
    new = torch.randn(12, 30, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2, 12, dtype=torch.float64)[:, None]
    first = grow_basis(None, old @ old.T / 30, 0.9, "official_min1", energy="covariance").basis
    c = new @ new.T / 30
    grown = grow_basis(first, c, threshold, "official_min1", energy="covariance")
    assert grown.basis.shape[1] - first.shape[1] == _official_residual_rank(c, first, threshold)
    assert torch.allclose(grown.basis.T @ grown.basis, torch.eye(grown.basis.shape[1], dtype=torch.float64), atol=1e-10)
    # the squared spectrum keeps fewer directions than GPM's rule on the same statistics
    assert grown.basis.shape[1] <= grow_basis(first, c, threshold).basis.shape[1]


def test_unknown_energy_rule_is_refused():
    with pytest.raises(ValueError, match="energy rule must be one of"):
        grow_basis(None, torch.eye(3), 0.9, energy="lambda")


def test_a_first_basis_owns_its_storage():
    # a view into the d x d eigenvectors would keep them alive and be written whole by torch.save
    c, _ = covariance([4.0, 2.0, 1.0, 0.5])
    basis = grow_basis(None, c, 0.9).basis
    assert basis.untyped_storage().nbytes() == basis.numel() * basis.element_size()


def _failing(*args, **kwargs):
    raise torch.linalg.LinAlgError("failed to converge (simulated)")


def test_an_eigh_that_does_not_converge_falls_back_to_the_svd(monkeypatch):
    r, _ = representation(SPECTRUM)
    expected, expected_s2 = principal_directions(r @ r.T)
    monkeypatch.setattr(torch.linalg, "eigh", _failing)
    directions, s2 = principal_directions(r @ r.T)
    torch.testing.assert_close(s2, expected_s2)
    torch.testing.assert_close(directions.T @ directions, torch.eye(10, dtype=torch.float64))
    top = directions[:, :4]  # the data's span, the same subspace whichever decomposition found it
    torch.testing.assert_close(top @ top.T, expected[:, :4] @ expected[:, :4].T)
    assert grow_basis(None, r @ r.T, 0.95).basis.shape[1] == 3


def test_a_decomposition_that_fails_both_ways_or_sees_nan_raises_its_own_error(monkeypatch):
    r, _ = representation(SPECTRUM)
    gram = r @ r.T
    gram[0, 0] = float("nan")
    with pytest.raises(DecompositionError, match="NaN or infinite"):
        principal_directions(gram)
    monkeypatch.setattr(torch.linalg, "eigh", _failing)
    monkeypatch.setattr(torch.linalg, "svd", _failing)
    with pytest.raises(DecompositionError, match="neither eigh nor the SVD converged on the 10-dimensional"):
        principal_directions(r @ r.T)
