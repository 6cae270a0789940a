"""GainLoRA as an Avalanche plugin: gates on top of a branch method (O-LoRA or InfLoRA)."""

from __future__ import annotations

from typing import Any

import torch
from avalanche.training.plugins import SupervisedPlugin

from avalanche_gpm.distributed import all_reduce_sum
from avalanche_gpm.settings import ThresholdSpec
from avalanche_gainlora.bases import BasisRule
from avalanche_gainlora.branches import LoraBranches
from avalanche_gainlora.distributed import (
    DistributedHelper,
    broadcast_module_,
    main_process_result,
    sum_grams_over_ranks,
    update_on_main_process,
)
from avalanche_gainlora.gate_memory import GateMemory, gate_grams
from avalanche_gainlora.gates import GateBank, TaskGate
from avalanche_gainlora.plugins.experience_inputs import experience_model_inputs
from avalanche_gainlora.routing import GateRouter

#: Attribute under which the gates are registered in the model (so the optimizer, ``.to()`` and
#: ``state_dict()`` of the model include them).
GATES_ATTRIBUTE = "gainlora_gates"


class GainLoRAPlugin(SupervisedPlugin, supports_distributed=True):
    """GainLoRA (Liang & Li, 2025): every branch is weighted per sample by its task's gate.

    Put it *after* the branch plugin of the base method in the strategy's plugin list, e.g.
    ``plugins=[InfLoRAPlugin(branches), GainLoRAPlugin(branches)]``: the branch plugin adds the
    task's branch, then this plugin adds the task's gate (a copy of the previous gate with a key
    orthogonal to old inputs), projects every update of the gate off the old gate-input
    subspaces, and grows those subspaces after the task.

    :param branches: the model's branches, shared with the branch plugin.
    :param hidden: width of each gate's MLP (paper: 100 for T5, 50 for LLaMA).
    :param threshold: energy threshold of the gate-input bases (float, mapping over
        ``("down", "up", "key")``, or a callable ``task -> threshold`` such as
        :func:`~avalanche_gainlora.bases.official_threshold`).
    :param batch_size: batch size of the passes that pool the experience's prompts.
    :param rule: energy rule of the gate-input bases: ``"official"`` (the GainLoRA code: squared
        covariance eigenvalues, at least one direction on the first task) or ``"gpm"``; see
        :mod:`avalanche_gainlora.bases`.

    ``diagnostics`` holds one entry per task: the new gate's mean value on the task's own training
    prompts when the task starts (``gate_start``) and when it ends (``gate_end``), and the gate
    layers' basis sizes after the task.

    Under DDP (see :mod:`avalanche_gainlora.distributed`) the new gate starts from rank 0's
    template, each rank pools a shard of the experience, the gate-input Gram matrices are summed
    over ranks, and rank 0 computes the key and grows the bases for everyone. The update
    projection in ``after_update`` then acts identically on every rank's identical parameters.
    """

    def __init__(
        self,
        branches: LoraBranches,
        *,
        hidden: int = 100,
        threshold: ThresholdSpec = 0.995,
        batch_size: int = 32,
        rule: BasisRule = "official",
    ):
        super().__init__()
        if hidden <= 0:
            raise ValueError(f"gate width must be positive, got {hidden}")
        self.branches = branches
        self.hidden = hidden
        self.batch_size = batch_size
        dim = branches.model.get_input_embeddings().embedding_dim
        self.gates = GateBank(dim, hidden)
        self.memory = GateMemory(dim, hidden, threshold, rule)
        self.router = GateRouter(branches.model, self.gates, branches.weights)
        self.diagnostics: list[dict[str, Any]] = []
        self._before_step: dict[str, torch.Tensor] = {}

    def _pooled(self, strategy: Any) -> list[torch.Tensor]:
        """The pooled prompts of the experience (this rank's shard under DDP)."""
        shard = DistributedHelper.is_distributed
        return [
            self.router.pooled(**inputs)
            for inputs in experience_model_inputs(strategy, batch_size=self.batch_size, shard=shard)
        ]

    def _gate_grams(self, gate: TaskGate, pooled: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if not DistributedHelper.is_distributed:
            return gate_grams(gate, pooled)
        return sum_grams_over_ranks(gate_grams(gate, pooled) if pooled else None, self.memory.memory.input_dims)

    def _mean_gate(self, gate: TaskGate, pooled: list[torch.Tensor]) -> float:
        """The gate's mean value over the pooled prompts (of all ranks under DDP)."""
        with torch.no_grad():
            values = [gate(batch.to(gate.key)) for batch in pooled]
        total = torch.tensor([sum(float(v.sum()) for v in values), sum(v.numel() for v in values)], dtype=torch.float64)
        if DistributedHelper.is_distributed:
            total = all_reduce_sum(total)
        return float(total[0] / total[1].clamp_min(1))

    def before_training_exp(self, strategy: Any, *args, **kwargs) -> None:
        if self.branches.num_branches != len(self.gates) + 1:
            raise RuntimeError(
                f"GainLoRAPlugin found {self.branches.num_branches} LoRA branches for {len(self.gates) + 1} tasks: "
                "put a branch plugin (InfLoRAPlugin or OLoRAPlugin) before GainLoRAPlugin in the plugin list"
            )
        model = self.branches.model
        if len(self.gates) == 0:
            model.add_module(GATES_ATTRIBUTE, self.gates)
            template = TaskGate(self.gates.dim, self.hidden)
        else:
            template = self.gates.current
        template.to(strategy.device)
        broadcast_module_(template)  # a fresh first gate is initialised differently on every rank
        pooled = self._pooled(strategy)
        grams = self._gate_grams(template, pooled)
        key = main_process_result(lambda: self.memory.new_key(grams))
        self.gates.add(template.successor(key.to(template.key)))
        self.diagnostics.append({"task": len(self.gates) - 1, "gate_start": self._mean_gate(self.gates.current, pooled)})
        self.router.attach()
        strategy.make_optimizer()

    def before_update(self, strategy: Any, *args, **kwargs) -> None:
        self._before_step = self.memory.snapshot(self.gates.current)

    def after_update(self, strategy: Any, *args, **kwargs) -> None:
        self.memory.project_update(self.gates.current, self._before_step)

    def after_training_exp(self, strategy: Any, *args, **kwargs) -> None:
        gate, task = self.gates.current, len(self.gates) - 1
        pooled = self._pooled(strategy)
        grams = self._gate_grams(gate, pooled)
        update_on_main_process(self.memory, lambda: self.memory.update(grams, task=task))
        if self.diagnostics and self.diagnostics[-1]["task"] == task:
            self.diagnostics[-1].update(gate_end=self._mean_gate(gate, pooled), basis_sizes=self.memory.memory.basis_sizes())

    def state_dict(self) -> dict:
        return {
            "num_gates": len(self.gates),
            "gates": self.gates.state_dict(),
            "memory": self.memory.state_dict(),
            "diagnostics": [dict(entry) for entry in self.diagnostics],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the gates into a fresh plugin (the branch plugin restores the branches)."""
        if len(self.gates):
            raise ValueError("load GainLoRA state into a freshly built plugin and model")
        self.memory.load_state_dict(state["memory"])
        self.diagnostics = [dict(entry) for entry in state.get("diagnostics", [])]
        if not state["num_gates"]:  # saved before the first task: routing starts with its gate
            return
        model = self.branches.model
        model.add_module(GATES_ATTRIBUTE, self.gates)
        for _ in range(state["num_gates"]):
            self.gates.add(TaskGate(self.gates.dim, self.hidden))
        self.gates.load_state_dict(state["gates"])
        self.gates.to(model.get_input_embeddings().weight.device)
        self.router.attach()
