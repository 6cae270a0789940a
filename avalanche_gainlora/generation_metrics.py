"""Avalanche metrics that score greedy generations against the reference answers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from avalanche.distributed import DistributedHelper
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricResult, MetricValue
from avalanche.evaluation.metric_utils import get_metric_name
from avalanche.evaluation.metrics import Mean

from avalanche_gainlora import scoring
from avalanche_gpm.distributed import all_reduce_sum
from avalanche_gainlora.data import decode_references


class GeneratingStrategy(Protocol):
    """What the metric reads of a strategy: Avalanche's template state (mini-batch, clock,
    experience) and greedy generation, as :class:`~avalanche_gainlora.strategy.LanguageModelStrategy`
    has them. A protocol rather than that class, which builds its default evaluator from this module."""

    mb_x: Any
    mb_y: Any
    clock: Any
    experience: Any

    def generate(self, inputs: Any) -> list[str]: ...

Score = Callable[[str, str], float]

SCORES: dict[str, Score] = {"ExactMatch": scoring.exact_match, "RougeL": scoring.rouge_l}
"""The scores :func:`generation_metrics` can report, by metric name."""


class GenerationScores(PluginMetric[dict[str, float]]):
    """Mean scores of the strategy's greedy answers on the evaluated experiences.

    After every evaluation iteration it generates once for the mini-batch
    (``strategy.generate(strategy.mb_x)``) and scores the answers with every scorer against
    the references in ``strategy.mb_y``. For a scorer named ``Name`` it emits
    ``Name_Exp/eval_phase/<stream>/TaskNNN/ExpNNN`` after each experience and
    ``Name_Stream/eval_phase/<stream>/TaskNNN`` (mean over all examples of the stream) after
    the stream, with Avalanche's usual naming.

    On several processes each rank scores its shard of the evaluated data, and the emitted means
    are over the examples of all ranks (sums and counts are added up across ranks), so they equal
    a single-process evaluation when the shards cover every example once, as the strategy's
    evaluation loader ensures.
    """

    def __init__(self, scorers: Mapping[str, Score], *, experience: bool = True, stream: bool = True):
        """Init.

        :param scorers: metric names mapped to pairwise scores ``score(prediction, reference)``.
        :param experience: emit the mean of each experience.
        :param stream: emit the mean of each evaluated stream.
        """
        super().__init__()
        if not scorers or not (experience or stream):
            raise ValueError("GenerationScores has nothing to report: give at least one scorer and one level")
        self._scorers = dict(scorers)
        self._experience_means = {name: Mean() for name in scorers} if experience else {}
        self._stream_means = {name: Mean() for name in scorers} if stream else {}

    def result(self) -> dict[str, float]:
        """Mean scores of the current (or last) experience by metric name; empty without ``experience``."""
        return {name: mean.result() for name, mean in self._experience_means.items()}

    def reset(self) -> None:
        """Forget all scores."""
        for mean in (*self._experience_means.values(), *self._stream_means.values()):
            mean.reset()

    def before_eval(self, strategy: GeneratingStrategy) -> MetricResult:
        for mean in self._stream_means.values():
            mean.reset()

    def before_eval_exp(self, strategy: GeneratingStrategy) -> MetricResult:
        for mean in self._experience_means.values():
            mean.reset()

    def after_eval_iteration(self, strategy: GeneratingStrategy) -> MetricResult:
        super().after_eval_iteration(strategy)
        predictions = strategy.generate(strategy.mb_x)
        references = decode_references(strategy.mb_y)
        for name, score in self._scorers.items():
            scores = scoring.batch_scores(score, predictions, references)
            for means in (self._experience_means, self._stream_means):
                if name in means:
                    means[name].update(sum(scores) / len(scores), len(scores))

    def after_eval_exp(self, strategy: GeneratingStrategy) -> MetricResult:
        return self._emit(strategy, self._experience_means, "Exp")

    def after_eval(self, strategy: GeneratingStrategy) -> MetricResult:
        return self._emit(strategy, self._stream_means, "Stream")

    def _emit(self, strategy: GeneratingStrategy, means: Mapping[str, Mean], suffix: str) -> MetricResult:
        return [
            MetricValue(
                self,
                get_metric_name(f"{name}_{suffix}", strategy, add_experience=suffix == "Exp"),
                _mean_over_ranks(mean),
                strategy.clock.train_iterations,
            )
            for name, mean in means.items()
        ]

    def __str__(self) -> str:
        return "GenerationScores"


def _mean_over_ranks(mean: Mean) -> float:
    """The mean over every rank's examples (this process's own when not distributed)."""
    if not DistributedHelper.is_distributed:
        return mean.result()
    summed, weight = all_reduce_sum(torch.tensor([mean.summed, mean.weight], dtype=torch.float64)).tolist()
    return summed / weight if weight else 0.0


def generation_metrics(
    *, exact_match: bool = True, rouge_l: bool = True, experience: bool = True, stream: bool = True
) -> list[PluginMetric]:
    """Generation metrics for an :class:`~avalanche.training.plugins.EvaluationPlugin`.

    Usage: ``EvaluationPlugin(loss_metrics(experience=True), *generation_metrics())``.
    Exact match and ROUGE-L share one generation per mini-batch.

    :param exact_match: report ``ExactMatch`` (see :func:`~avalanche_gainlora.scoring.exact_match`).
    :param rouge_l: report ``RougeL`` (see :func:`~avalanche_gainlora.scoring.rouge_l`).
    :param experience: report per experience (``*_Exp``).
    :param stream: report per evaluated stream (``*_Stream``).
    :return: a list with one :class:`GenerationScores` metric.
    """
    wanted = {"ExactMatch": exact_match, "RougeL": rouge_l}
    scorers = {name: SCORES[name] for name, enabled in wanted.items() if enabled}
    return [GenerationScores(scorers, experience=experience, stream=stream)]
