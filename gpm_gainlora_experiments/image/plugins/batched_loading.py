"""Swap a strategy's Avalanche data loaders for index-gathering ones when that is provably identical."""

from __future__ import annotations

import warnings
from collections import Counter

from avalanche.training.plugins import SupervisedPlugin

from gpm_gainlora_experiments.image.batched_data import NotBatchable, batched_loader


class BatchedLoading(SupervisedPlugin, supports_distributed=False):
    """Serve every training and evaluation mini-batch by tensor gathers instead of per-sample calls.

    After Avalanche builds a loader (``make_train_dataloader`` / ``make_eval_dataloader``), the
    plugin replaces ``strategy.dataloader`` by a :class:`~gpm_gainlora_experiments.image.batched_data.BatchedLoader`
    over the same datasets and samplers, which yields the same batches and draws the same random
    numbers. Whenever equality cannot be proven (a transform, a custom collate function, workers,
    pinned memory, a replay loader, a non-tensor dataset, another avalanche-lib version) the loader
    is left as Avalanche built it and the reason is counted in :attr:`fallbacks` and warned once.
    Add it to any strategy's ``plugins``; its position in the list does not matter.
    """

    def __init__(self):
        super().__init__()
        #: How many loaders were left to Avalanche, per reason.
        self.fallbacks: Counter[str] = Counter()
        #: How many loaders were replaced.
        self.batched = 0

    def before_training_exp(self, strategy, **kwargs) -> None:
        self._swap(strategy)

    def before_eval_exp(self, strategy, **kwargs) -> None:
        self._swap(strategy)

    def _swap(self, strategy) -> None:
        try:
            strategy.dataloader = batched_loader(strategy.dataloader)
        except NotBatchable as reason:
            if not self.fallbacks[str(reason)]:
                warnings.warn(f"BatchedLoading: using Avalanche's own loader ({reason})", stacklevel=2)
            self.fallbacks[str(reason)] += 1
        else:
            self.batched += 1
