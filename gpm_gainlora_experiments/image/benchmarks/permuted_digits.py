"""Permuted Digits: a Permuted-MNIST-style benchmark small enough for a CPU demo.

scikit-learn's bundled ``load_digits`` (1797 grey 8x8 images, no download) plays MNIST's role:
every task shows the same digits through its own fixed pixel permutation, so tasks share labels
(single head, task label 0) but not input statistics, as in the GPM paper's PMNIST protocol.
"""

from __future__ import annotations

import torch
from avalanche.benchmarks.scenarios import CLScenario
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor

from gpm_gainlora_experiments.image.benchmarks.permuted import permuted_benchmark

NUM_FEATURES = 64
NUM_CLASSES = 10
_PIXEL_MAX = 16.0  # load_digits pixels are integers in 0..16


def digits_split(seed: int = 0, test_fraction: float = 0.2) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stratified train/test split of the digits, scaled to [0, 1] and standardised.

    :param seed: seed of the split.
    :param test_fraction: fraction of the samples held out for testing, in (0, 1).
    :return: ``(x_train, y_train, x_test, y_test)``; inputs are ``(N, 64)`` float32, labels int64.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / _PIXEL_MAX, digits.target, test_size=test_fraction, stratify=digits.target, random_state=seed
    )
    x_train, x_test = torch.tensor(x_train, dtype=torch.float32), torch.tensor(x_test, dtype=torch.float32)
    # One mean and std over all pixels, like MNIST's (0.1307, 0.3081), from the training split only.
    mean, std = x_train.mean(), x_train.std()
    return (
        (x_train - mean) / std,
        torch.tensor(y_train, dtype=torch.long),
        (x_test - mean) / std,
        torch.tensor(y_test, dtype=torch.long),
    )


def task_permutations(num_tasks: int, seed: int = 0) -> list[Tensor]:
    """One fixed pixel permutation per task (the first task is permuted too).

    :param num_tasks: number of tasks.
    :param seed: seed of the permutations.
    """
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(NUM_FEATURES, generator=generator) for _ in range(num_tasks)]


def permuted_digits(num_tasks: int = 10, seed: int = 0, test_fraction: float = 0.2) -> CLScenario:
    """Build the Permuted Digits benchmark.

    :param num_tasks: number of experiences, each with its own pixel permutation.
    :param seed: seed of the train/test split and of the permutations.
    :param test_fraction: fraction of the digits held out for testing (the same images in every task).
    :return: an Avalanche benchmark whose experiences hold ``(N, 64)`` inputs, labels 0..9 and task
        label 0.
    """
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be at least 1, got {num_tasks!r}")
    x_train, y_train, x_test, y_test = digits_split(seed, test_fraction)
    permutations = task_permutations(num_tasks, seed)
    # One stored copy of the digits; each task permutes them when read (image.benchmarks.permuted).
    return permuted_benchmark({"train": (x_train, y_train), "test": (x_test, y_test)}, permutations)
