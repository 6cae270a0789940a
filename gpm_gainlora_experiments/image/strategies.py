"""Registry of continual-learning strategies and a factory that builds them from a preset.

Avalanche's strategy wrappers (``Naive``, ``EWC``, ``AGEM``, ``Replay``, ...) and
:class:`avalanche_gpm.GPM` share one keyword-only constructor signature, so the registry maps a
name to the class itself; method-specific arguments (``ewc_lambda``, GPM's ``threshold``, a
replay buffer size, ...) come from :meth:`Hyperparams.options` of the benchmark preset.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from avalanche.training import AGEM, EWC, JointTraining, Naive
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin, SupervisedPlugin
from avalanche.training.storage_policy import ReservoirSamplingBuffer
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from avalanche_gpm import GPM
from gpm_gainlora_experiments.image.hyperparams import Hyperparams



def er_reservoir(*, mem_size: int, plugins: list[SupervisedPlugin] | None = None, **kwargs) -> SupervisedTemplate:
    """Experience replay from a reservoir-sampled buffer (the GPM paper's ER-Reservoir baseline).

    :param mem_size: buffer size in samples, over all experiences.
    :param plugins: further plugins, run before the replay plugin.
    :param kwargs: the keyword arguments of :class:`~avalanche.training.Naive`.
    """
    replay = ReplayPlugin(mem_size, storage_policy=ReservoirSamplingBuffer(max_size=mem_size))
    return Naive(plugins=[*(plugins or []), replay], **kwargs)


STRATEGIES: dict[str, Callable[..., SupervisedTemplate]] = {
    "naive": Naive,
    "ewc": EWC,
    "agem": AGEM,
    "replay": er_reservoir,
    "gpm": GPM,
    # SGP is GPM with a scaled projection: the preset gives it `sgp_alpha`.
    "sgp": GPM,
    # Multitask upper bound: one training on all experiences at once (the runner special-cases it).
    "joint": JointTraining,
}


def check_strategy(name: str) -> None:
    """Fail early on an unknown strategy name.

    :param name: a key of :data:`STRATEGIES`.
    :raises ValueError: listing the valid names.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}")


def build_strategy(
    name: str,
    *,
    model: nn.Module,
    hyperparams: Hyperparams,
    evaluator: EvaluationPlugin,
    device: str | torch.device,
    plugins: list[SupervisedPlugin] | None = None,
    seed: int = 0,
) -> SupervisedTemplate:
    """Build a strategy that trains ``model`` with plain SGD under the given preset.

    :param name: registered strategy name (a key of :data:`STRATEGIES`).
    :param model: the network, freshly initialised.
    :param hyperparams: lr, batch sizes, epochs and the strategy's own options.
    :param evaluator: the evaluation plugin collecting the metrics.
    :param device: where to train.
    :param plugins: further plugins, run before the strategy's own (e.g. before GPM's memory update).
    :param seed: the run's seed; GPM and SGP draw their memory samples with it (unless the preset
        sets their ``seed``), so that seeds differ in those samples too. The other strategies draw
        from the global generators, which the runner seeds.
    """
    check_strategy(name)
    options = hyperparams.options(name)
    if STRATEGIES[name] is GPM:
        options.setdefault("seed", seed)
    return STRATEGIES[name](
        model=model,
        # The paper's protocol: SGD without momentum or weight decay, the same for every method.
        optimizer=torch.optim.SGD(model.parameters(), lr=hyperparams.lr),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=hyperparams.batch_size,
        train_epochs=hyperparams.epochs,
        eval_mb_size=hyperparams.eval_batch_size,
        device=device,
        evaluator=evaluator,
        plugins=plugins,
        **options,
    )
