"""What the runners need from Avalanche's evaluation: a silent or a logged evaluator and accuracy rows."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.logging import BaseLogger
from avalanche.training.plugins import EvaluationPlugin

_EXPERIENCE_ACCURACY = "Top1_Acc_Exp/eval_phase/{stream}_stream/"


def _ignore_callback(strategy, **kwargs) -> None:
    return None


class EvalPhaseEvaluator(EvaluationPlugin):
    """Avalanche's :class:`EvaluationPlugin` for metrics that only measure evaluation phases.

    Avalanche hands every callback of every training iteration (eight per step) to each metric and
    each time makes a logging copy of the current experience first. With eval-phase metrics those
    calls do nothing, yet on the PMNIST MLP with batch 10 they cost about as much as the training
    step itself. Here training callbacks are skipped; evaluation callbacks run as in Avalanche.

    :param metrics: Avalanche plugin metrics, all in evaluation mode.
    :param kwargs: the rest of :class:`EvaluationPlugin`'s arguments (loggers, ...).
    :raises ValueError: for a metric that also measures training (use :class:`EvaluationPlugin`).
    """

    def __init__(self, *metrics, **kwargs):
        super().__init__(*metrics, **kwargs)
        training = [type(m).__name__ for m in self.metrics if getattr(m, "_mode", None) != "eval"]
        if training:
            raise ValueError(
                f"metrics {', '.join(training)} also measure training; EvalPhaseEvaluator would skip their "
                "training callbacks: use Avalanche's EvaluationPlugin"
            )

    def __getattribute__(self, item: str):
        if item.startswith(("before_", "after_")) and "eval" not in item:
            return _ignore_callback
        return super().__getattribute__(item)


def quiet_evaluator() -> EvaluationPlugin:
    """Per-experience and stream accuracy without loggers (the runner shows its own progress)."""
    with warnings.catch_warnings():
        # Having no logger is the point here, not a mistake.
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvalPhaseEvaluator(accuracy_metrics(experience=True, stream=True), loggers=[])


def image_evaluator(loggers: Sequence[BaseLogger] = ()) -> EvaluationPlugin:
    """The image runner's evaluator: :func:`quiet_evaluator` without loggers; with loggers, Avalanche's
    :class:`EvaluationPlugin` with accuracy and loss per epoch, experience and stream, so the
    training curves are logged too (the training callbacks then cost what they cost in Avalanche).
    The accuracy rows are the same either way."""
    if not loggers:
        return quiet_evaluator()
    return EvaluationPlugin(
        accuracy_metrics(epoch=True, experience=True, stream=True),
        loss_metrics(epoch=True, experience=True, stream=True),
        loggers=list(loggers),
    )


def accuracy_row(results: Mapping[str, float], num_experiences: int, stream: str = "test") -> list[float]:
    """Accuracy of every experience from the metrics returned by one ``strategy.eval``.

    :param results: the dictionary ``strategy.eval(stream)`` returns.
    :param num_experiences: number of experiences in the evaluated stream.
    :param stream: the evaluated stream's name (``stream.name``: ``"test"``, ``"valid"``, ...).
    :return: accuracy of experience ``0 .. num_experiences - 1``, whatever their task labels.
    """
    return experience_row(results, _EXPERIENCE_ACCURACY.format(stream=stream), num_experiences)


def experience_row(results: Mapping[str, float], prefix: str, num_experiences: int) -> list[float]:
    """One per-experience metric of every evaluated experience, from one ``strategy.eval``.

    :param results: the dictionary ``strategy.eval(stream)`` returns.
    :param prefix: the metric's name up to the task part, e.g.
        ``"Top1_Acc_Exp/eval_phase/test_stream/"``; keys continue with ``TaskNNN/ExpNNN``.
    :param num_experiences: number of experiences in the evaluated stream.
    :return: the metric of experience ``0 .. num_experiences - 1``, whatever their task labels.
    """
    by_experience = {
        int(key.rpartition("/Exp")[2]): float(value)
        for key, value in results.items()
        if key.startswith(prefix)
    }
    missing = [j for j in range(num_experiences) if j not in by_experience]
    if missing:
        raise KeyError(f"no {prefix.split('/')[0]} for experiences {missing}; was the whole stream evaluated?")
    return [by_experience[j] for j in range(num_experiences)]
