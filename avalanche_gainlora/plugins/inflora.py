"""InfLoRA as an Avalanche plugin."""

from __future__ import annotations

from typing import Any

import torch

from avalanche_gpm.memory import GradientProjectionMemory
from avalanche_gpm.settings import ThresholdSpec, check_threshold_spec, resolve_thresholds
from avalanche_gainlora.bases import BasisRule, check_basis_rule, input_memory
from avalanche_gainlora.branches import LoraBranches
from avalanche_gainlora.capture import layer_input_grams
from avalanche_gainlora.distributed import (
    DistributedHelper,
    main_process_result,
    sum_grams_over_ranks,
    update_on_main_process,
)
from avalanche_gainlora.inflora import design_down_projection, reachable_energy
from avalanche_gainlora.plugins.branch_plugin import BranchPlugin
from avalanche_gainlora.plugins.experience_inputs import experience_model_inputs


class InfLoRAPlugin(BranchPlugin, supports_distributed=True):
    """InfLoRA (Liang & Li, CVPR 2024): each task's down-projection ``A_t`` is designed from the
    task's inputs outside the old input subspace of its layer and frozen; only ``B_t`` is trained.

    The inputs of every adapted layer are recorded sample by sample (no padding in the
    statistics): before training to design ``A_t``, after training to grow the layer's basis.

    :param branches: the model's branches.
    :param threshold: energy threshold of the layers' input bases (float, per-layer mapping, or a
        callable ``task -> threshold``, e.g. :func:`~avalanche_gainlora.bases.official_threshold`).
    :param max_samples: samples of each experience used for the statistics (all when ``None``).
    :param rule: energy rule of the bases: ``"official"`` (InfLoRA's code: squared covariance
        eigenvalues, at least one direction on the first task) or ``"gpm"`` (GPM's criteria); see
        :mod:`avalanche_gainlora.bases`.

    ``diagnostics`` holds one entry per task: the share of the task's input energy that ``A_t``
    reaches in every adapted layer (:func:`~avalanche_gainlora.inflora.reachable_energy`) and the
    layers' basis sizes after the task.

    Under DDP (see :mod:`avalanche_gainlora.distributed`) each rank records a shard of those
    samples, the Gram matrices are summed over ranks, and rank 0 designs ``A_t`` and grows the
    bases for everyone, so both are identical on every rank.
    """

    def __init__(
        self,
        branches: LoraBranches,
        *,
        threshold: ThresholdSpec = 0.995,
        max_samples: int | None = None,
        rule: BasisRule = "official",
    ):
        super().__init__(branches)
        check_threshold_spec(threshold)
        check_basis_rule(rule)
        if max_samples is not None and max_samples <= 0:
            raise ValueError(f"max_samples must be positive or None, got {max_samples}")
        self.threshold = threshold
        self.max_samples = max_samples
        self.rule: BasisRule = rule
        self.memory: GradientProjectionMemory | None = None
        self.diagnostics: list[dict[str, Any]] = []

    def _new_memory(self) -> GradientProjectionMemory:
        return input_memory({name: layer.in_features for name, layer in self.branches.layers().items()}, self.rule)

    def _grams(self, strategy: Any) -> dict[str, torch.Tensor]:
        model = self.branches.model
        was_training = model.training
        model.eval()
        try:
            layers = self.branches.layers()
            if not DistributedHelper.is_distributed:
                inputs = experience_model_inputs(strategy, batch_size=1, max_samples=self.max_samples)
                return layer_input_grams(model, layers, inputs)
            # This rank's shard (unwrapped model: no collectives), then the sum over ranks.
            inputs = list(experience_model_inputs(strategy, batch_size=1, max_samples=self.max_samples, shard=True))
            local = layer_input_grams(model, layers, inputs) if inputs else None
            return sum_grams_over_ranks(local, {name: layer.in_features for name, layer in layers.items()})
        finally:
            model.train(was_training)

    def init_branch(self, strategy: Any, index: int) -> None:
        if self.memory is None:
            self.memory = self._new_memory()
        grams = self._grams(strategy)
        downs = self.branches.down(index)
        designed = main_process_result(
            lambda: {name: design_down_projection(grams[name], self.memory.bases[name], self.branches.rank) for name in downs}
        )
        with torch.no_grad():
            for name, down in downs.items():
                down.copy_(designed[name])
        self.branches.freeze_all_but(index, train_down=False)
        reached = {name: reachable_energy(down, grams[name]) for name, down in downs.items()}
        self.diagnostics.append({"task": index, "reachable_energy": reached})

    def after_training_exp(self, strategy: Any, *args, **kwargs) -> None:
        task = self.branches.num_branches - 1
        names = list(self.branches.layers())
        grams = self._grams(strategy)
        update_on_main_process(self.memory, lambda: self.memory.update(grams, resolve_thresholds(self.threshold, task, names)))
        if self.diagnostics and self.diagnostics[-1]["task"] == task:
            self.diagnostics[-1]["basis_sizes"] = self.memory.basis_sizes()

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "memory": None if self.memory is None else self.memory.state_dict(),
            "diagnostics": [dict(entry) for entry in self.diagnostics],
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.diagnostics = [dict(entry) for entry in state.get("diagnostics", [])]
        if state["memory"] is not None:
            self.memory = self._new_memory()
            self.memory.load_state_dict(state["memory"])
