"""Faults in the subspace updates: a failed update names its layer and leaves the memory as it was."""

from __future__ import annotations

import pytest
import torch
from avalanche.benchmarks import tensors_benchmark
from torch import nn

from avalanche_gpm import GPM
from avalanche_gpm.memory import GradientProjectionMemory
from tests.helpers import quiet_evaluator


def _grams(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: (r := torch.randn(dim, 20, generator=g, dtype=torch.float64)) @ r.T for name, dim in [("a", 6), ("b", 4)]}


def test_nan_inputs_of_one_layer_name_it_and_leave_every_basis_unchanged():
    memory = GradientProjectionMemory({"a": 6, "b": 4})
    memory.update(_grams(0), {"a": 0.9, "b": 0.9})
    before = {name: basis.clone() for name, basis in memory.bases.items()}
    grams = _grams(1)
    grams["b"][1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"layer 'b'.*NaN or infinite.*the memory is unchanged"):
        memory.update(grams, {"a": 0.99, "b": 0.99})
    for name, basis in memory.bases.items():  # layer "a" came first and was not grown either
        assert torch.equal(basis, before[name])
    memory.update(_grams(1), {"a": 0.99, "b": 0.99})  # and the memory is still usable
    assert memory.bases["a"].shape[1] > before["a"].shape[1]


def test_a_decomposition_that_cannot_be_computed_names_the_layer(monkeypatch):
    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError("failed to converge (simulated)")

    memory = GradientProjectionMemory({"a": 6, "b": 4})
    monkeypatch.setattr(torch.linalg, "eigh", fail)
    monkeypatch.setattr(torch.linalg, "svd", fail)
    with pytest.raises(ValueError, match=r"layer 'a'.*neither eigh nor the SVD converged"):
        memory.update(_grams(0), {"a": 0.9, "b": 0.9})
    assert memory.bases == {"a": None, "b": None}


def test_a_gpm_run_on_nan_data_stops_with_the_layer_named():
    x = torch.randn(20, 5)
    x[3, 1] = float("nan")
    benchmark = tensors_benchmark(train_tensors=[(x, torch.randint(0, 2, (20,)))],
                                  test_tensors=[(x, torch.zeros(20, dtype=torch.long))], task_labels=[0])
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    strategy = GPM(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), num_samples=20,
                   train_mb_size=10, evaluator=quiet_evaluator())
    with pytest.raises(ValueError, match=r"cannot grow the basis of layer '0': .*NaN"):
        strategy.train(benchmark.train_stream[0])
    assert strategy.gpm.memory.bases == {"0": None, "2": None}
