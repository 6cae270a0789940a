"""Scaled Gradient Projection (SGP), the GPM option beyond the paper."""

import pytest
import torch
from torch import nn

from avalanche_gpm import GPM, GPMPlugin
from avalanche_gpm.memory import GradientProjectionMemory
from avalanche_gpm.projection import SubspaceProjector
from avalanche_gpm.subspace import basis_strengths, scaled_importance
from tests.helpers import gaussian_tasks, quiet_evaluator


def test_scaled_importance_formula():
    s = torch.tensor([4.0, 2.0, 0.4], dtype=torch.float64)
    importance = scaled_importance(s, alpha=10)
    expected = torch.tensor([1.0, 22 / 24, 4.4 / 8.0], dtype=torch.float64)  # (11 s) / (10 s + 4)
    assert torch.allclose(importance, expected)
    assert scaled_importance(s[:0], alpha=10).numel() == 0


def test_basis_strengths_are_norms_of_the_projected_representation():
    r = torch.randn(6, 20, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(6, 3, dtype=torch.float64))
    assert torch.allclose(basis_strengths(basis, r @ r.T), (basis.T @ r).norm(dim=1))


def test_scaled_projection_forms_agree_and_reduce_to_gpm_with_unit_scales():
    basis, _ = torch.linalg.qr(torch.randn(8, 3, dtype=torch.float64))
    grad = torch.randn(4, 8, dtype=torch.float64)
    scales = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)
    dense = SubspaceProjector(basis, 4, "dense", scales)(grad)
    low_rank = SubspaceProjector(basis, 4, "basis", scales)(grad)
    assert torch.allclose(dense, low_rank)
    # each direction keeps (1 - scale) of its component
    assert torch.allclose(dense @ basis, (grad @ basis) * (1 - scales))
    assert torch.allclose(SubspaceProjector(basis, 4, scales=torch.ones(3, dtype=torch.float64))(grad),
                          SubspaceProjector(basis, 4)(grad))
    with pytest.raises(ValueError, match="complement form cannot apply a scaled"):
        SubspaceProjector(basis, 4, "complement", scales)


def test_importance_accumulates_over_tasks_and_stays_in_unit_interval():
    memory = GradientProjectionMemory({"fc": 6}, sgp_alpha=10)
    e = torch.eye(6, dtype=torch.float64)
    first = torch.stack([3 * e[0], 1 * e[1]], dim=1)  # strengths 3 and 1
    memory.update({"fc": first @ first.T}, {"fc": 0.99})
    assert torch.allclose(memory.importances["fc"], scaled_importance(torch.tensor([3.0, 1.0]).double(), 10))
    second = torch.stack([2 * e[1], 2 * e[2]], dim=1)  # reuses e1, adds e2
    memory.update({"fc": second @ second.T}, {"fc": 0.99})
    importance = memory.importances["fc"]
    assert memory.bases["fc"].shape[1] == 3 and importance.shape == (3,)
    fresh = scaled_importance(torch.tensor([0.0, 2.0, 2.0]).double(), 10)  # on the new task
    previous = scaled_importance(torch.tensor([3.0, 1.0]).double(), 10)
    assert torch.allclose(importance[:2], (fresh[:2] + previous).clamp(max=1.0))
    assert torch.allclose(importance[2], fresh[2])
    assert float(importance.min()) >= 0 and float(importance.max()) <= 1


def test_sgp_strategy_trains_and_round_trips_its_state():
    benchmark = gaussian_tasks(3, (10,))
    model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 3))
    strategy = GPM(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), threshold=0.9,
                   num_samples=40, sgp_alpha=10, train_mb_size=8, evaluator=quiet_evaluator())
    for experience in benchmark.train_stream:
        strategy.train(experience)
    memory = strategy.gpm.memory
    for name, basis in memory.bases.items():
        assert memory.importances[name].shape == (basis.shape[1],)
    restored = GPMPlugin(0.9, sgp_alpha=10)
    restored.load_state_dict(strategy.gpm.state_dict())
    for name, importance in memory.importances.items():
        assert torch.equal(restored.memory.importances[name], importance)
    with pytest.raises(ValueError, match="saved with sgp_alpha=10"):
        GPMPlugin(0.9).load_state_dict(strategy.gpm.state_dict())


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan")])
def test_bad_sgp_alpha_is_rejected(alpha):
    with pytest.raises(ValueError, match="sgp_alpha must be a positive number"):
        GPMPlugin(0.9, sgp_alpha=alpha)
