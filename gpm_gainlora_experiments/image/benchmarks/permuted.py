"""Permuted-input benchmarks with one stored copy of the data: each task permutes the features when read.

Storing every task's permuted copy (what ``tensors_benchmark`` needs) costs the data set's size
once per task: 2.2 GB for ten PMNIST tasks. Here every task's dataset is a :class:`PermutedFeatures`
view of the same tensors, and the permutation is applied to each sample (Avalanche's own loader) or
to each gathered mini-batch (:class:`~gpm_gainlora_experiments.image.batched_data.BatchedLoader`).
The values are the same as a stored copy's: a permutation only moves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

from avalanche.benchmarks import dataset_benchmark
from avalanche.benchmarks.scenarios.deprecated.classification_scenario import ClassificationScenario
from torch import Tensor
from torch.utils.data import Dataset

from gpm_gainlora_experiments.image.benchmarks.image_data import Split


class PermutedFeatures(Dataset):
    """The samples of ``(features, targets)`` with the features in ``permutation`` order.

    ``self[i]`` is ``(features[i][permutation], int(targets[i]))``, exactly what Avalanche's tensor
    dataset returns for a stored permuted copy; :meth:`gather_batch` is its collated batch.

    :param features: ``(N, F)`` inputs, shared between tasks (not copied).
    :param targets: ``(N,)`` integer labels.
    :param permutation: a permutation of ``0..F-1``.
    """

    def __init__(self, features: Tensor, targets: Tensor, permutation: Tensor):
        if features.dim() != 2 or len(features) != len(targets):
            raise ValueError(
                f"features must be (N, F) with one target per row, got {tuple(features.shape)} and {len(targets)} targets"
            )
        if sorted(permutation.tolist()) != list(range(features.shape[1])):
            raise ValueError(f"permutation must be a permutation of 0..{features.shape[1] - 1}")
        self.features = features
        #: Read by Avalanche for the ``targets`` data attribute.
        self.targets = targets
        self.permutation = permutation

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.features[index][self.permutation], int(self.targets[index])

    def gather_batch(self, rows: Tensor) -> list[Tensor]:
        """The collated batch of ``rows``: permuted features and int64 labels."""
        # index_select, not advanced indexing: the same values, 1.3x (rows) and 3-8x (columns) faster
        # on CPU for 10-256 rows.
        features = self.features.index_select(0, rows).index_select(1, self.permutation)
        return [features, self.targets[rows].long()]


class PermutedSplits(Sequence[Split]):
    """One split of every task as ``(x, y)`` tensors, each task's ``x`` permuted only when asked for."""

    def __init__(self, split: Split, permutations: Sequence[Tensor]):
        self.split = split
        self.permutations = list(permutations)

    def __len__(self) -> int:
        return len(self.permutations)

    @overload
    def __getitem__(self, task: int) -> Split: ...

    @overload
    def __getitem__(self, task: slice) -> list[Split]: ...

    def __getitem__(self, task: int | slice) -> Split | list[Split]:
        if isinstance(task, slice):
            return [self[i] for i in range(len(self))[task]]
        x, y = self.split
        return x[:, self.permutations[task]], y


def permuted_benchmark(
    splits: dict[str, Split], permutations: Sequence[Tensor]
) -> ClassificationScenario:
    """A single-head benchmark (task label 0) with one experience per permutation in every stream.

    :param splits: ``(x, y)`` per stream name; ``"train"`` and ``"test"`` are required, further
        names (e.g. ``"valid"``) become further streams.
    :param permutations: one feature permutation per task.
    """
    streams = {name: [PermutedFeatures(x, y, p) for p in permutations] for name, (x, y) in splits.items()}
    train, test = streams.pop("train"), streams.pop("test")
    return dataset_benchmark(train, test, other_streams_datasets=streams or None)
