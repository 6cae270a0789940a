"""gpm_gainlora_experiments.common.evaluation: the eval-phase evaluator skips training callbacks and changes no result."""

from __future__ import annotations

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from gpm_gainlora_experiments.common.evaluation import EvalPhaseEvaluator, accuracy_row
from tests.helpers import gaussian_tasks


def _train_and_eval(evaluator: EvaluationPlugin) -> list[list[float]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        train_mb_size=8,
        train_epochs=2,
        eval_mb_size=16,
        evaluator=evaluator,
        device="cpu",
    )
    benchmark = gaussian_tasks(2, (5,))
    rows = []
    for experience in benchmark.train_stream:
        strategy.train(experience)
        rows.append(accuracy_row(strategy.eval(benchmark.test_stream), 2))
    return rows


def test_same_accuracies_without_training_callbacks(monkeypatch):
    metrics = lambda: accuracy_metrics(experience=True, stream=True)  # noqa: E731
    reference = _train_and_eval(EvaluationPlugin(metrics(), loggers=[]))

    callbacks: list[str] = []
    original = EvaluationPlugin._update_metrics_and_loggers

    def counting(self, strategy, callback):
        callbacks.append(callback)
        return original(self, strategy, callback)

    monkeypatch.setattr(EvaluationPlugin, "_update_metrics_and_loggers", counting)
    assert _train_and_eval(EvalPhaseEvaluator(metrics(), loggers=[])) == reference
    assert callbacks and all("eval" in name for name in callbacks)
    assert "after_eval_iteration" in callbacks


def test_refuses_metrics_that_measure_training():
    with pytest.raises(ValueError, match="also measure training"):
        EvalPhaseEvaluator(loss_metrics(epoch=True), loggers=[])
