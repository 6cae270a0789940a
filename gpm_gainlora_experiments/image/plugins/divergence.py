"""Notice training that diverged: a NaN or infinite loss otherwise shows only as a poor accuracy
(or, under :class:`~gpm_gainlora_experiments.image.plugins.ValidationLRSchedule`, as a task that left the model
untouched), indistinguishable from a method that merely learns badly."""

from __future__ import annotations

import math
import warnings

from avalanche.training.plugins import SupervisedPlugin


class DivergenceMonitor(SupervisedPlugin, supports_distributed=True):
    """Records the training experiences whose loss was not finite at the end of an epoch.

    The last minibatch's loss (with every plugin's penalty, e.g. EWC's) is checked once per epoch:
    once the weights hold NaN every later loss does too, so a divergence anywhere in the epoch is
    seen, at the cost of one scalar read per epoch. Under DDP a NaN gradient on one rank reaches
    every rank's weights through the averaging, so each rank sees the divergence.
    """

    def __init__(self):
        super().__init__()
        #: Indices of the training experiences that diverged, in training order (0-based).
        self.diverged: list[int] = []

    def after_training_epoch(self, strategy, **kwargs) -> None:
        experience = strategy.clock.train_exp_counter
        loss = float(strategy.loss.detach())
        if math.isfinite(loss) or experience in self.diverged:
            return
        self.diverged.append(experience)
        warnings.warn(
            f"training diverged on experience {experience} (counted from 0): the loss is {loss}; lower the "
            "learning rate or the method's penalty weight (e.g. EWC's ewc_lambda)",
            RuntimeWarning,
        )
