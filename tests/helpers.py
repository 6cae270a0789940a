"""Small seeded benchmarks and evaluation helpers shared by the tests."""

from __future__ import annotations

import torch
from avalanche.benchmarks import tensors_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin


def gaussian_tasks(
    num_tasks: int,
    shape: tuple[int, ...],
    num_classes: int = 3,
    train_size: int = 60,
    test_size: int = 30,
    seed: int = 0,
    task_labels: bool = False,
):
    """A benchmark whose tasks are learnable: each class of each task is a Gaussian blob."""
    generator = torch.Generator().manual_seed(seed)

    def sample(means: torch.Tensor, size: int):
        labels = torch.randint(0, num_classes, (size,), generator=generator)
        return means[labels] + 0.5 * torch.randn(size, *shape, generator=generator), labels

    train, test = [], []
    for _ in range(num_tasks):
        means = torch.randn(num_classes, *shape, generator=generator)
        train.append(sample(means, train_size))
        test.append(sample(means, test_size))
    labels = list(range(num_tasks)) if task_labels else [0] * num_tasks
    return tensors_benchmark(train_tensors=train, test_tensors=test, task_labels=labels)


def quiet_evaluator() -> EvaluationPlugin:
    return EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])


def accuracy_row(results: dict, num_tasks: int) -> list[float]:
    """Test accuracy of every experience from the results of one ``strategy.eval``."""
    row = []
    for exp in range(num_tasks):
        key = next(k for k in results if k.startswith("Top1_Acc_Exp/eval_phase/test_stream") and k.endswith(f"Exp{exp:03d}"))
        row.append(results[key])
    return row


def experience_inputs(experience) -> torch.Tensor:
    """All inputs of an experience's dataset, stacked in dataset order."""
    dataset = experience.dataset.eval()
    return torch.stack([dataset[i][0] for i in range(len(dataset))])
