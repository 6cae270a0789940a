"""GainLoRA as an Avalanche plugin: gates on top of a branch method (O-LoRA or InfLoRA)."""

from __future__ import annotations

from typing import Any

import torch
from avalanche.training.plugins import SupervisedPlugin

from avalanche_gpm.settings import ThresholdSpec
from avalanche_gainlora.branches import LoraBranches
from avalanche_gainlora.gate_memory import GateMemory, gate_grams
from avalanche_gainlora.gates import GateBank, TaskGate
from avalanche_gainlora.plugins.experience_inputs import experience_model_inputs
from avalanche_gainlora.routing import GateRouter

#: Attribute under which the gates are registered in the model (so the optimizer, ``.to()`` and
#: ``state_dict()`` of the model include them).
GATES_ATTRIBUTE = "gainlora_gates"


class GainLoRAPlugin(SupervisedPlugin):
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
        :func:`~avalanche_gainlora.gate_memory.official_threshold`).
    :param batch_size: batch size of the passes that pool the experience's prompts.
    """

    def __init__(
        self, branches: LoraBranches, *, hidden: int = 100, threshold: ThresholdSpec = 0.995, batch_size: int = 32
    ):
        super().__init__()
        if hidden <= 0:
            raise ValueError(f"gate width must be positive, got {hidden}")
        self.branches = branches
        self.hidden = hidden
        self.batch_size = batch_size
        dim = branches.model.get_input_embeddings().embedding_dim
        self.gates = GateBank(dim, hidden)
        self.memory = GateMemory(dim, hidden, threshold)
        self.router = GateRouter(branches.model, self.gates, branches.weights)
        self._before_step: dict[str, torch.Tensor] = {}

    def _pooled(self, strategy: Any) -> list[torch.Tensor]:
        return [
            self.router.pooled(**inputs)
            for inputs in experience_model_inputs(strategy, batch_size=self.batch_size)
        ]

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
        key = self.memory.new_key(gate_grams(template, self._pooled(strategy)))
        self.gates.add(template.successor(key.to(template.key)))
        self.router.attach()
        strategy.make_optimizer()

    def before_update(self, strategy: Any, *args, **kwargs) -> None:
        self._before_step = self.memory.snapshot(self.gates.current)

    def after_update(self, strategy: Any, *args, **kwargs) -> None:
        self.memory.project_update(self.gates.current, self._before_step)

    def after_training_exp(self, strategy: Any, *args, **kwargs) -> None:
        self.memory.update(gate_grams(self.gates.current, self._pooled(strategy)), task=len(self.gates) - 1)

    def state_dict(self) -> dict:
        return {"num_gates": len(self.gates), "gates": self.gates.state_dict(), "memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the gates into a fresh plugin (the branch plugin restores the branches)."""
        if len(self.gates):
            raise ValueError("load GainLoRA state into a freshly built plugin and model")
        model = self.branches.model
        model.add_module(GATES_ATTRIBUTE, self.gates)
        for _ in range(state["num_gates"]):
            self.gates.add(TaskGate(self.gates.dim, self.hidden))
        self.gates.load_state_dict(state["gates"])
        self.gates.to(model.get_input_embeddings().weight.device)
        self.memory.load_state_dict(state["memory"])
        self.router.attach()
