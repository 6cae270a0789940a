"""Epoch-level progress for a run's progress bar: one AlexNet task on CPUs trains for minutes, a
joint run for most of an hour, and a bar over tasks alone would sit still all that time."""

from __future__ import annotations

from typing import Any

from avalanche.training.plugins import SupervisedPlugin
from tqdm.auto import tqdm


class EpochProgress(SupervisedPlugin, supports_distributed=True):
    """Shows the epoch being trained, ``epoch k/max``, next to the bar's other fields.

    :param bar: the run's tqdm bar.
    :param max_epochs: epochs per experience at most (a validation schedule may stop earlier).
    """

    def __init__(self, bar: tqdm, max_epochs: int):
        super().__init__()
        self.bar = bar
        self.max_epochs = max_epochs
        #: Fields shown beside the epoch (e.g. the accuracy on tasks seen so far), kept between epochs.
        self.fields: dict[str, Any] = {}

    def show(self, **fields: Any) -> None:
        """Replace the fields shown beside the epoch."""
        self.fields = fields
        self.bar.set_postfix(self.fields)

    def before_training_epoch(self, strategy, **kwargs) -> None:
        epoch = strategy.clock.train_exp_epochs + 1
        self.bar.set_postfix({"epoch": f"{epoch}/{self.max_epochs}", **self.fields})
