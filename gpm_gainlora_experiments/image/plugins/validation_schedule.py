"""The GPM paper's per-task learning-rate schedule driven by validation loss.

Every task starts at the preset's learning rate. After each epoch the validation loss of the
current task decides: an improvement keeps a copy of the weights; ``patience`` epochs in a row
without one divide the learning rate by ``factor``; once it would fall below ``lr_min`` the task
stops. At the end of the task the best weights are restored.

:class:`PlateauTracker` holds the decision rule (pure, no torch); :class:`ValidationLRSchedule`
applies it to an Avalanche strategy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from enum import Enum

import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios import CLExperience, CLStream
from avalanche.benchmarks.utils import AvalancheDataset
from avalanche.models.utils import avalanche_forward
from avalanche.training import JointTraining
from avalanche.training.plugins import SupervisedPlugin
from torch import Tensor, nn
from torch.utils.data import DataLoader

from avalanche_gpm.distributed import DistributedHelper
from gpm_gainlora_experiments.image.batched_data import NotBatchable, tensor_source


class PlateauDecision(Enum):
    """What one epoch's validation loss asks for."""

    IMPROVED = "improved"
    """New best loss: keep the weights, patience is reset."""
    WAIT = "wait"
    """No improvement, patience left."""
    DECAY = "decay"
    """Patience ran out: the learning rate was divided (see :attr:`PlateauTracker.lr`)."""
    STOP = "stop"
    """Patience ran out and the divided learning rate is below the minimum: stop the task."""


class PlateauTracker:
    """Decision rule of the schedule, in the order of the official GPM code.

    When patience runs out the learning rate is divided first and compared with ``lr_min``
    before it is applied: below the minimum the answer is :attr:`PlateauDecision.STOP` (the
    divided rate is never trained with); otherwise patience is reset and the answer is
    :attr:`PlateauDecision.DECAY`.

    :param factor: divisor of the learning rate on a plateau, greater than 1.
    :param patience: epochs without improvement before the learning rate is divided, at least 1.
    :param lr_min: stop once the divided learning rate is below this (0 never stops).
    :raises ValueError: for a factor, patience or minimum out of range.
    """

    def __init__(self, *, factor: float, patience: int, lr_min: float):
        if not factor > 1.0:
            raise ValueError(f"factor must be greater than 1, got {factor!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer of at least 1, got {patience!r}")
        if not lr_min >= 0.0:
            raise ValueError(f"lr_min must be non-negative, got {lr_min!r}")
        self.factor = factor
        self.patience = patience
        self.lr_min = lr_min
        self.reset(lr=1.0)

    def reset(self, lr: float) -> None:
        """Start a new task at learning rate ``lr``, with no best loss and full patience.

        :param lr: the task's initial learning rate.
        """
        self.lr = lr
        self.best_loss = math.inf
        self.patience_left = self.patience

    def step(self, val_loss: float) -> PlateauDecision:
        """Account for one epoch's validation loss.

        A NaN loss never counts as an improvement.

        :param val_loss: the epoch's validation loss.
        :return: what the schedule should do now.
        """
        if val_loss < self.best_loss:
            self.best_loss = val_loss
            self.patience_left = self.patience
            return PlateauDecision.IMPROVED
        self.patience_left -= 1
        if self.patience_left > 0:
            return PlateauDecision.WAIT
        self.lr /= self.factor
        if self.lr < self.lr_min:
            return PlateauDecision.STOP
        self.patience_left = self.patience
        return PlateauDecision.DECAY


class ValidationLRSchedule(SupervisedPlugin, supports_distributed=True):
    """Per-task learning-rate decay on validation loss, keeping the best-validation weights.

    The protocol of the GPM paper for CIFAR-100, 5-Datasets and miniImageNet. The validation loss
    is the mean cross-entropy over the samples of the current task's validation experience,
    computed in eval mode through the task's own head (``avalanche_forward`` with task labels).
    Plain cross-entropy rather than the strategy's criterion: it is the paper's loss, and a sum
    over samples gives an exact mean whatever the batch size (``strategy._criterion`` reduces per
    batch, and a method's own criterion could add terms that are not a validation loss).

    The schedule follows the first parameter group's learning rate; every group is divided by
    ``factor`` together. The optimizer object is reused across experiences, so its learning rates
    are reset to their initial values at the end of each task.

    Under DDP, rank 0 validates and every rank takes its loss, so all ranks decay, stop and restore
    together and their weights stay identical; copies and validation use the unwrapped model.

    List this plugin **before** any plugin that reads the trained weights in ``after_training_exp``
    (e.g. :class:`~avalanche_gpm.plugin.GPMPlugin`, which :class:`~avalanche_gpm.GPM` places after
    the user's plugins): hooks run in list order, so the GPM memory is then built from the restored
    best weights, not from the last epoch's.

    :param valid_stream: one validation experience per training experience, indexed by the
        training experience's ``current_experience``.
    :param factor: divisor of the learning rate on a plateau, greater than 1.
    :param patience: epochs without improvement before the learning rate is divided.
    :param lr_min: stop the task once the divided learning rate is below this.
    :param eval_mb_size: minibatch size of the validation pass (with batch-statistics BatchNorm
        the loss depends on it).
    :raises ValueError: for arguments out of range; when training starts, for a missing, empty or
        misaligned validation experience, or a :class:`~avalanche.training.JointTraining` strategy.
    """

    def __init__(
        self,
        valid_stream: CLStream | Sequence[CLExperience],
        *,
        factor: float,
        patience: int,
        lr_min: float,
        eval_mb_size: int = 256,
    ):
        super().__init__()
        if eval_mb_size < 1:
            raise ValueError(f"eval_mb_size must be at least 1, got {eval_mb_size!r}")
        self.valid_stream = valid_stream
        self.tracker = PlateauTracker(factor=factor, patience=patience, lr_min=lr_min)
        self.eval_mb_size = eval_mb_size
        self._valid_dataset: AvalancheDataset | None = None
        self._initial_lrs: list[float] = []
        self._best_state: dict[str, Tensor] = {}
        self._epochs_run = 0

    def before_training_exp(self, strategy, **kwargs):
        if isinstance(strategy, JointTraining):
            # Its one experience is all tasks at once, yet `strategy.experience` is only the first.
            raise ValueError(
                "ValidationLRSchedule validates one task per experience; JointTraining trains every task in "
                "one experience and would be validated on the first task only"
            )
        self._valid_dataset = self._validation_dataset(strategy.experience)
        self._initial_lrs = [group["lr"] for group in strategy.optimizer.param_groups]
        self.tracker.reset(self._initial_lrs[0])
        self._epochs_run = 0
        # Copied here, after model adaptation, so the state includes this task's new head; it is
        # what gets restored if no epoch ever improves (e.g. a NaN loss from the start).
        self._best_state = _copy_state(DistributedHelper.unwrap_model(strategy.model))

    def after_training_epoch(self, strategy, **kwargs):
        self._epochs_run += 1
        decision = self.tracker.step(self._validation_loss(strategy))
        if decision is PlateauDecision.IMPROVED:
            self._best_state = _copy_state(DistributedHelper.unwrap_model(strategy.model))
        elif decision is PlateauDecision.DECAY:
            for group in strategy.optimizer.param_groups:
                group["lr"] /= self.tracker.factor
        # Avalanche clears the stop flag only when `train` is called, so a stop raised after the
        # last epoch would skip the next experience of the same `train` call.
        elif decision is PlateauDecision.STOP and self._epochs_run < strategy.train_epochs:
            strategy.stop_training()

    def after_training_exp(self, strategy, **kwargs):
        if math.isinf(self.tracker.best_loss):
            warnings.warn(
                f"no epoch of experience {strategy.experience.current_experience} had a finite validation loss: "
                "the weights from before the experience are restored, so it was not learnt (training diverged?)",
                RuntimeWarning,
            )
        DistributedHelper.unwrap_model(strategy.model).load_state_dict(self._best_state)
        for group, lr in zip(strategy.optimizer.param_groups, self._initial_lrs):
            group["lr"] = lr
        self._best_state = {}
        self._valid_dataset = None

    def _validation_dataset(self, experience: CLExperience) -> AvalancheDataset:
        index = experience.current_experience
        if index >= len(self.valid_stream):
            raise ValueError(
                f"the validation stream has {len(self.valid_stream)} experiences, too few for training "
                f"experience {index}: it needs one validation experience per training experience"
            )
        valid = self.valid_stream[index]
        # Checked first: an empty experience has no task labels either.
        if len(valid.dataset) == 0:
            raise ValueError(f"validation experience {index} is empty: the schedule needs validation samples")
        if set(valid.task_labels) != set(experience.task_labels):
            raise ValueError(
                f"validation experience {index} has task labels {sorted(valid.task_labels)}, the training "
                f"experience {sorted(experience.task_labels)}: the streams are not aligned"
            )
        return valid.dataset.eval()

    def _validation_loss(self, strategy) -> float:
        # Decisions must not differ between ranks: one loss for all, even if their kernels differ.
        loss = self._local_validation_loss(strategy) if DistributedHelper.is_main_process else None
        return DistributedHelper.broadcast_object(loss)

    @torch.no_grad()
    def _local_validation_loss(self, strategy) -> float:
        dataset = self._valid_dataset
        # The bare model: DDP's wrapper would hide the task heads from avalanche_forward.
        model, device = DistributedHelper.unwrap_model(strategy.model), strategy.device
        was_training = model.training
        model.eval()
        total = torch.zeros((), device=device)
        try:
            for x, y, task_labels, *_ in self._batches(dataset):
                output = avalanche_forward(model, x.to(device), task_labels.to(device))
                total += F.cross_entropy(output, y.to(device), reduction="sum")
        finally:
            # Training resumes with the next epoch without another `model.train()` from Avalanche.
            model.train(was_training)
        return total.item() / len(dataset)

    def _batches(self, dataset: AvalancheDataset) -> Iterator[list[Tensor]]:
        # The same batches as a DataLoader in order, by tensor gathers where the data allow it.
        try:
            source = tensor_source([dataset])
        except NotBatchable:
            yield from DataLoader(dataset, batch_size=self.eval_mb_size, shuffle=False, collate_fn=dataset.collate_fn)
            return
        for start in range(0, len(source), self.eval_mb_size):
            yield source.gather(torch.arange(start, min(start + self.eval_mb_size, len(source))))


def _copy_state(model: nn.Module) -> dict[str, Tensor]:
    # state_dict() shares storage with the live parameters: clone, or later steps overwrite the copy.
    return {name: value.detach().clone() for name, value in model.state_dict().items()}
