"""Gradient Projection Memory (Saha, Garg & Roy, ICLR 2021) as an Avalanche plugin."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from avalanche.evaluation.metric_results import MetricValue
from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins import SupervisedPlugin
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Subset

from avalanche_gpm.capture import GramRecorder, input_dim
from avalanche_gpm.distributed import DistributedHelper, shard_count, sum_grams_over_ranks, update_on_main_process
from avalanche_gpm.memory import GradientProjectionMemory, check_memory_options
from avalanche_gpm.projection import ProjectionForm
from avalanche_gpm.selection import LayerSelection, select_layers
from avalanche_gpm.settings import (
    ThresholdSpec,
    check_positive_int,
    check_threshold_spec,
    resolve_num_samples,
    resolve_thresholds,
)
from avalanche_gpm.step_recorder import StepRecorder
from avalanche_gpm.subspace import FirstTaskRule


class GPMPlugin(SupervisedPlugin, supports_distributed=True):
    """Gradient Projection Memory.

    After each experience the plugin records the inputs of every protected layer on a few
    training samples, and grows an orthonormal basis of the space they span (the energy
    threshold decides how much of it). While later experiences train, ``after_backward`` removes
    from each protected layer's gradient its component in that space, so the layer's response
    to old inputs does not change. Normalisation layers' affine parameters learn on the first
    experience only.

    Use it with plain SGD (momentum is fine, weight decay is not: it moves weights inside the
    protected space). Layers with a bias are protected as affine maps (the bias is the weight
    of a constant input 1), which the paper's bias-free models do not need.

    :param threshold: fraction of each layer's input energy to protect, in (0, 1]: a float, a
        sequence with one value per protected layer (model order), a mapping by layer name, or a
        callable ``task_index -> any of those`` (e.g. :class:`~avalanche_gpm.settings.LinearSchedule`
        ``(0.97, 0.003)`` for the paper's CIFAR-100 schedule).

    Under torch DDP (see :mod:`avalanche_gpm.distributed`) the plugin works on the unwrapped model
    (layer names without ``module.``), splits the capture samples over the ranks, sums the Gram
    matrices over ranks, grows the bases on rank 0 and broadcasts them, so every rank holds a
    bitwise identical memory; gradients are projected after DDP has averaged them.
    :param modules: names of the layers to protect; default every ``nn.Linear`` and
        ``nn.Conv2d`` outside task heads and ``exclude``.
    :param exclude: modules left unprotected (with their children), e.g. a task-specific head.
        ``MultiHeadClassifier`` modules are always excluded.
    :param num_samples: training samples whose inputs form each layer's representation: an int
        or one per layer (default 300, the paper's PMNIST value; AlexNet uses
        ``[24, 100, 100, 125, 125]``).
    :param first_task_rule: ``"paper"`` keeps the smallest rank reaching the threshold on the
        first experience; ``"official"`` keeps one direction fewer, as the authors' code does.
    :param capture_batch_size: batch size of the capture pass; default all samples in one batch,
        as the paper does (matters for BatchNorm with batch statistics).
    :param projection_form: force ``"dense"``, ``"basis"`` or ``"complement"`` projection instead
        of the cheapest per layer.
    :param seed: seed of the sample selection for the capture.
    :param sgp_alpha: ``None`` (default) for GPM's orthogonal projection; a number switches to
        Scaled Gradient Projection (Saha & Roy, AAAI 2023): each protected direction is removed in
        proportion to its importance ``(alpha+1) s / (alpha s + max s)``, accumulated over tasks,
        so less important directions stay partly trainable (paper: ``alpha = 10``).
    """

    def __init__(
        self,
        threshold: ThresholdSpec = 0.97,
        *,
        modules: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        num_samples: int | Sequence[int] | Mapping[str, int] = 300,
        first_task_rule: FirstTaskRule = "paper",
        capture_batch_size: int | None = None,
        projection_form: ProjectionForm | None = None,
        seed: int = 0,
        sgp_alpha: float | None = None,
    ):
        super().__init__()
        check_threshold_spec(threshold)
        if isinstance(modules, str) or isinstance(exclude, str):
            raise TypeError("GPM `modules` and `exclude` take a list of module names, not a single string")
        self.threshold = threshold
        self.modules = None if modules is None else list(modules)
        self.exclude = list(exclude)
        self.num_samples = num_samples
        self.first_task_rule: FirstTaskRule = first_task_rule
        self.capture_batch_size = capture_batch_size
        self.projection_form = projection_form
        self.seed = seed
        self.sgp_alpha = sgp_alpha
        check_memory_options(first_task_rule, sgp_alpha, projection_form=projection_form)
        if capture_batch_size is not None:
            hint = ", or None for all samples in one batch (the paper's choice)"
            check_positive_int(capture_batch_size, "GPM capture_batch_size", hint)

        self.memory: GradientProjectionMemory | None = None
        self.experiences_learned = 0
        self.usage_history: list[dict[str, dict[str, int]]] = []
        self._selection: LayerSelection | None = None
        self._steps: StepRecorder | None = None  # takes over the experience's linear layers

    # -- hooks -----------------------------------------------------------------------------

    def before_training_exp(self, strategy, **kwargs):
        self._select(DistributedHelper.unwrap_model(strategy.model))
        self._check_optimizer(strategy.optimizer)
        if self.experiences_learned > 0:
            # A momentum buffer from the previous experience points inside the protected space.
            for param in self._frozen_or_projected_parameters():
                strategy.optimizer.state.pop(param, None)
            if self._steps is not None:  # left over by an experience that raised mid-training
                self._steps.remove()
            linear = {name: m for name, m in self._selection.protected.items() if isinstance(m, nn.Linear)}
            # Under DDP the recorder would see this rank's unreduced inputs, never the averaged gradient.
            self._steps = None if DistributedHelper.is_distributed else StepRecorder(linear, self._takes_over)

    def before_forward(self, strategy, **kwargs):
        if self._steps is not None:
            self._steps.start_step()

    def after_backward(self, strategy, **kwargs):
        if self.experiences_learned == 0:
            return
        self.memory.project_gradients(self._selection.protected, self._steps.records if self._steps else None)
        if self._steps is not None:
            self._steps.finish_step()
        for norm in self._selection.norms.values():
            for param in norm.parameters(recurse=False):
                param.grad = None

    def _takes_over(self, name: str, rows: int) -> bool:
        return self.memory.projects_inputs(name, rows, self._selection.protected[name].weight.shape[0])

    def after_training_exp(self, strategy, **kwargs):
        if self._steps is not None:
            self._steps.remove()
            self._steps = None
        names = self.memory.layer_names
        grams = self._capture(strategy)
        thresholds = resolve_thresholds(self.threshold, self.experiences_learned, names)
        if DistributedHelper.is_distributed:
            self._update_distributed(grams, thresholds)
        else:
            self.memory.update(grams, thresholds)
        self.experiences_learned += 1
        usage = self.memory.usage()
        self.usage_history.append(
            {name: {"basis_size": u.basis_size, "input_dim": u.input_dim} for name, u in usage.items()}
        )
        self._publish_usage(strategy, usage)

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Bases, counters and memory history; restore with :meth:`load_state_dict`."""
        return {
            "memory": None if self.memory is None else self.memory.state_dict(),
            "input_dims": None if self.memory is None else dict(self.memory.input_dims),
            "experiences_learned": self.experiences_learned,
            "usage_history": [dict(entry) for entry in self.usage_history],
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what :meth:`state_dict` returned (before training or between experiences)."""
        if state["memory"] is not None:
            memory = self._new_memory(state["input_dims"])
            memory.load_state_dict(state["memory"])
            self.memory = memory
            self.first_task_rule = memory.first_task_rule
            self._selection = None  # re-checked against the model at the next experience
        self.experiences_learned = state["experiences_learned"]
        self.usage_history = [dict(entry) for entry in state["usage_history"]]

    # -- helpers -------------------------------------------------------------------------------

    def _select(self, model: nn.Module) -> None:
        selection = select_layers(model, self.modules, self.exclude)
        dims = {name: input_dim(layer) for name, layer in selection.protected.items()}
        if self.memory is None:
            self.memory = self._new_memory(dims)
        elif self.memory.input_dims != dims:
            raise ValueError(
                f"GPM memory was built for layers {self.memory.input_dims} but the model now has {dims}; "
                "GPM needs the same protected layers in every experience"
            )
        if self._selection is None:
            self._warn_about(selection)
        self._selection = selection
        # Settings that do not fit the model would otherwise fail only after the experience trained.
        resolve_thresholds(self.threshold, self.experiences_learned, self.memory.layer_names)
        resolve_num_samples(self.num_samples, self.memory.layer_names)

    def _new_memory(self, input_dims: Mapping[str, int]) -> GradientProjectionMemory:
        return GradientProjectionMemory(input_dims, self.first_task_rule, self.projection_form, self.sgp_alpha)

    @staticmethod
    def _warn_about(selection: LayerSelection) -> None:
        if selection.unprotected:
            warnings.warn(
                f"GPM leaves these trainable parameters unprotected, so they can change old tasks' outputs: "
                f"{selection.unprotected}. Add their modules to `exclude` if they are task-specific."
            )
        if selection.running_stats:
            warnings.warn(
                f"normalisation layers {selection.running_stats} track running statistics, which drift on new "
                "tasks and change old tasks' outputs whatever GPM does; the paper uses "
                "BatchNorm(track_running_stats=False)."
            )

    def _frozen_or_projected_parameters(self):
        for module in [*self._selection.protected.values(), *self._selection.norms.values()]:
            yield from module.parameters(recurse=False)

    def _check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        guarded = {id(p) for p in self._frozen_or_projected_parameters()}
        for group in optimizer.param_groups:
            if group.get("weight_decay", 0) and any(id(p) in guarded for p in group["params"]):
                raise ValueError(
                    f"GPM cannot protect old tasks with weight_decay={group['weight_decay']}: decay moves "
                    "weights inside the protected space. Set weight_decay=0 for the protected layers."
                )
        if not isinstance(optimizer, torch.optim.SGD):
            warnings.warn(
                f"GPM's guarantee holds for SGD; {type(optimizer).__name__} rescales the projected gradient "
                "per coordinate, which moves weights inside the protected space."
            )

    def _update_distributed(self, grams: dict[str, torch.Tensor], thresholds: Mapping[str, float]) -> None:
        """Sum the ranks' Gram matrices, grow the bases on rank 0, give every rank rank 0's memory."""
        summed = sum_grams_over_ranks(grams, self.memory.input_dims)
        update_on_main_process(self.memory, lambda: self.memory.update(summed, thresholds))

    @torch.no_grad()
    def _capture(self, strategy) -> dict[str, torch.Tensor]:
        names = self.memory.layer_names
        num_samples = resolve_num_samples(self.num_samples, names)
        dataset = strategy.experience.dataset.eval()
        if len(dataset) == 0:
            raise ValueError("GPM cannot build its memory from an empty experience")
        if len(dataset) < max(num_samples.values()):
            warnings.warn(
                f"GPM num_samples asks for {max(num_samples.values())} samples but experience "
                f"{strategy.experience.current_experience} has {len(dataset)}: its representation uses all of them"
            )
        generator = torch.Generator().manual_seed(self.seed + self.experiences_learned)
        collate_fn = getattr(dataset, "collate_fn", None)
        if DistributedHelper.is_distributed:
            # The samples a single process would record, in its order; rank r takes every
            # world_size-th one from position r, so the ranks' Gram matrices sum to its Gram matrix.
            rank, world = DistributedHelper.rank, DistributedHelper.world_size
            order = list(RandomSampler(dataset, generator=generator))[: max(num_samples.values())]
            num_samples = {name: shard_count(n, len(order), rank, world) for name, n in num_samples.items()}
            dataset = Subset(dataset, order[rank::world])
            loader = DataLoader(
                dataset, batch_size=self.capture_batch_size or max(1, len(dataset)), collate_fn=collate_fn
            )
        else:
            loader = DataLoader(
                dataset,
                batch_size=self.capture_batch_size or max(num_samples.values()),
                shuffle=True,
                generator=generator,
                collate_fn=collate_fn,
            )
        recorder = GramRecorder(self._selection.protected, num_samples)
        model = DistributedHelper.unwrap_model(strategy.model)  # no DDP forward: no collectives here
        was_training = model.training
        model.eval()
        try:
            with recorder.recording():
                for x, _, task_labels, *_ in loader:
                    avalanche_forward(model, x.to(strategy.device), task_labels.to(strategy.device))
                    if recorder.done:
                        break
        finally:
            model.train(was_training)
        return recorder.grams

    def _publish_usage(self, strategy, usage) -> None:
        evaluator = getattr(strategy, "evaluator", None)
        if evaluator is None:
            return
        # Against the training iteration, like Avalanche's own metrics, so loggers plot them on one axis.
        step = strategy.clock.train_iterations
        for name, layer_usage in usage.items():
            evaluator.publish_metric_value(MetricValue(self, f"GPM/basis_size/{name}", layer_usage.basis_size, step))
            evaluator.publish_metric_value(MetricValue(self, f"GPM/memory_fraction/{name}", layer_usage.fraction, step))
