"""``GPM``: an Avalanche strategy that trains with a :class:`~avalanche_gpm.plugin.GPMPlugin`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from avalanche.training.templates.strategy_mixin_protocol import CriterionType
from torch.nn import CrossEntropyLoss, Module
from torch.optim import Optimizer

from avalanche_gpm.plugin import GPMPlugin
from avalanche_gpm.projection import ProjectionForm
from avalanche_gpm.settings import ThresholdSpec
from avalanche_gpm.subspace import FirstTaskRule


class GPM(SupervisedTemplate):
    """Gradient Projection Memory strategy (Saha et al., ICLR 2021).

    See :class:`~avalanche_gpm.plugin.GPMPlugin` for the method and its arguments.
    """

    def __init__(
        self,
        *,
        model: Module,
        optimizer: Optimizer,
        criterion: CriterionType = CrossEntropyLoss(),
        threshold: ThresholdSpec = 0.97,
        modules: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        num_samples: int | Sequence[int] | Mapping[str, int] = 300,
        first_task_rule: FirstTaskRule = "paper",
        capture_batch_size: int | None = None,
        projection_form: ProjectionForm | None = None,
        seed: int = 0,
        sgp_alpha: float | None = None,
        train_mb_size: int = 1,
        train_epochs: int = 1,
        eval_mb_size: int | None = None,
        device: str | torch.device = "cpu",
        plugins: list[SupervisedPlugin] | None = None,
        evaluator: EvaluationPlugin | Callable[[], EvaluationPlugin] = default_evaluator,
        eval_every: int = -1,
        **base_kwargs,
    ):
        """Init.

        :param model: the model (any mix of ``nn.Linear``/``nn.Conv2d`` layers and task heads).
        :param optimizer: the optimizer; plain SGD without weight decay, as in the paper.
        :param criterion: the loss criterion.
        :param threshold: energy threshold(s), see :class:`~avalanche_gpm.plugin.GPMPlugin`.
        :param modules: names of the layers to protect (default: all Linear/Conv2d outside heads).
        :param exclude: modules to leave unprotected.
        :param num_samples: samples per layer for the representation matrices.
        :param first_task_rule: ``"paper"`` or ``"official"`` first-task rank.
        :param capture_batch_size: batch size of the representation capture.
        :param projection_form: force a projection form instead of the cheapest.
        :param seed: seed of the capture's sample selection.
        :param sgp_alpha: switch to Scaled Gradient Projection with this importance coefficient.
        :param train_mb_size: the train minibatch size.
        :param train_epochs: the number of training epochs per experience.
        :param eval_mb_size: the eval minibatch size.
        :param device: the device to use.
        :param plugins: further plugins.
        :param evaluator: instance of EvaluationPlugin for logging and metric computations.
        :param eval_every: the frequency of the calls to `eval` inside the training loop.
        :param base_kwargs: any additional :class:`~avalanche.training.BaseTemplate` arguments.
        """
        gpm = GPMPlugin(
            threshold,
            modules=modules,
            exclude=exclude,
            num_samples=num_samples,
            first_task_rule=first_task_rule,
            capture_batch_size=capture_batch_size,
            projection_form=projection_form,
            seed=seed,
            sgp_alpha=sgp_alpha,
        )
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion,
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=[*(plugins or []), gpm],
            evaluator=evaluator,
            eval_every=eval_every,
            **base_kwargs,
        )
        self.gpm = gpm
