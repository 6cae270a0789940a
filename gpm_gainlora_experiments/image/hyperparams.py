"""Training hyper-parameters of one run, shared by every strategy, plus per-strategy options."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LRScheduleConfig:
    """The GPM paper's per-task learning-rate decay on validation loss.

    See :class:`~gpm_gainlora_experiments.image.plugins.ValidationLRSchedule`, which applies it.

    :param factor: divisor of the learning rate after ``patience`` epochs without improvement.
    :param patience: epochs without a better validation loss before the learning rate is divided.
    :param lr_min: a task stops once its divided learning rate is below this.
    """

    factor: float
    patience: int
    lr_min: float


@dataclass(frozen=True)
class Hyperparams:
    """Protocol of one run: optimiser, batches, epochs, and the options of each strategy.

    :param lr: learning rate of plain SGD (no momentum, no weight decay).
    :param batch_size: training minibatch size.
    :param epochs: training epochs per experience (the most, with ``lr_schedule``).
    :param eval_batch_size: evaluation minibatch size.
    :param strategy_options: keyword arguments of each strategy's constructor by strategy name,
        e.g. ``{"ewc": {"ewc_lambda": 10.0}, "gpm": {"threshold": 0.97}}``; strategies without an
        entry get none.
    :param lr_schedule: decay the learning rate on the validation loss and keep the best-validation
        weights of each task; ``None`` trains every task for ``epochs`` at ``lr``.
    """

    lr: float
    batch_size: int
    epochs: int
    eval_batch_size: int = 256
    strategy_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    lr_schedule: LRScheduleConfig | None = None

    def options(self, strategy: str) -> dict[str, Any]:
        """Constructor keyword arguments specific to ``strategy``.

        :param strategy: registered strategy name.
        """
        return dict(self.strategy_options.get(strategy, {}))

    def with_options(self, strategy: str, options: Mapping[str, Any]) -> Hyperparams:
        """A copy where ``strategy``'s options are updated with ``options`` (others unchanged).

        :param strategy: registered strategy name.
        :param options: constructor keyword arguments to set, e.g. ``{"ewc_lambda": 1000.0}``.
        """
        merged = {**self.strategy_options, strategy: {**self.options(strategy), **options}}
        return self.replace(strategy_options=merged)

    def replace(self, **changes: Any) -> Hyperparams:
        """A copy with some fields changed, e.g. ``hp.replace(epochs=1)``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self, strategy: str) -> dict[str, Any]:
        """JSON-compatible protocol of one strategy's run, as stored in its record.

        Only ``strategy``'s own options are included, so tuning one strategy does not change
        the recorded configuration of the others. ``lr_schedule`` appears only when set, so
        records written before it existed still match their configuration and are skipped.

        :param strategy: registered strategy name.
        """
        record = {
            "lr": self.lr,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "eval_batch_size": self.eval_batch_size,
            "options": jsonable(self.options(strategy)),
        }
        if self.lr_schedule is not None:
            record["lr_schedule"] = jsonable(self.lr_schedule)
        return record


def jsonable(value: Any) -> Any:
    """Convert options to JSON types; dataclasses (e.g. threshold schedules) keep their type name.

    :param value: a nested structure of numbers, strings, sequences, mappings and dataclasses.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"type": type(value).__name__, **fields}
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    # Anything else (a lambda schedule, say) is at least recorded recognisably.
    return repr(value)
