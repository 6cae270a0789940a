"""GainLoRA as an Avalanche plugin: gates on top of a base method (O-LoRA or InfLoRA), which it runs."""

from __future__ import annotations

from collections.abc import Callable
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
from avalanche_gainlora.plugins.branch_plugin import BranchPlugin
from avalanche_gainlora.plugins.experience_inputs import experience_model_inputs
from avalanche_gainlora.plugins.inflora import InfLoRAPlugin
from avalanche_gainlora.plugins.olora import OLoRAPlugin
from avalanche_gainlora.routing import GateRouter

#: Attribute under which the gates are registered in the model (so the optimizer, ``.to()`` and
#: ``state_dict()`` of the model include them).
GATES_ATTRIBUTE = "gainlora_gates"

#: The base methods GainLoRA builds on.
BASE_PLUGINS: tuple[type[BranchPlugin], ...] = (OLoRAPlugin, InfLoRAPlugin)

#: Avalanche's callbacks of a supervised plugin (training and evaluation).
CALLBACKS: tuple[str, ...] = tuple(name for name in dir(SupervisedPlugin) if name.startswith(("before_", "after_")))


def _check_base(base: Any) -> None:
    accepted = " or ".join(cls.__name__ for cls in BASE_PLUGINS)
    if not isinstance(base, BASE_PLUGINS):
        raise TypeError(
            f"GainLoRAPlugin's base must be an {accepted} instance, got {type(base).__name__}: "
            "build it as GainLoRAPlugin(InfLoRAPlugin(branches), ...) or GainLoRAPlugin(OLoRAPlugin(branches), ...)"
        )
    if type(base).before_training_exp is not BranchPlugin.before_training_exp:
        # GainLoRAPlugin adds the base's branch through add_experience_branch, not this hook.
        raise TypeError(
            f"{type(base).__name__} overrides before_training_exp, which GainLoRAPlugin does not call: "
            "override add_experience_branch or init_branch instead"
        )


class GainLoRAPlugin(SupervisedPlugin, supports_distributed=True):
    """GainLoRA (Liang & Li, 2025): every branch is weighted per sample by its task's gate.

    The plugin takes its base method's plugin and runs it, so the strategy gets this plugin only,
    e.g. ``plugins=[GainLoRAPlugin(InfLoRAPlugin(branches), hidden=50)]``. Every hook runs the base
    method's hook first, then the gates'; before each experience the base adds the task's branch
    (:meth:`~avalanche_gainlora.plugins.BranchPlugin.add_experience_branch`), this plugin adds
    the task's gate (a copy of the previous gate with a key orthogonal to old inputs), and the
    optimizer is rebuilt once for both. Every update of the gate is projected off the old
    gate-input subspaces, which grow after the task.

    :param base: the base method's plugin, an :class:`~avalanche_gainlora.plugins.OLoRAPlugin` or
        :class:`~avalanche_gainlora.plugins.InfLoRAPlugin`, which is not itself passed to the
        strategy (its branches are the gated ones).
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
    layers' basis sizes after the task (the base method's own are in ``base.diagnostics``).
    ``state_dict()`` includes the base method's state, so one plugin state restores both.

    Under DDP (see :mod:`avalanche_gainlora.distributed`) the new gate starts from rank 0's
    template, each rank pools a shard of the experience, the gate-input Gram matrices are summed
    over ranks, and rank 0 computes the key and grows the bases for everyone. The update
    projection in ``after_update`` then acts identically on every rank's identical parameters.
    """

    def __init__(
        self,
        base: OLoRAPlugin | InfLoRAPlugin,
        *,
        hidden: int = 100,
        threshold: ThresholdSpec = 0.995,
        batch_size: int = 32,
        rule: BasisRule = "official",
    ):
        super().__init__()
        _check_base(base)
        if hidden <= 0:
            raise ValueError(f"gate width must be positive, got {hidden}")
        self.base = base
        branches = base.branches
        self.hidden = hidden
        self.batch_size = batch_size
        dim = branches.model.get_input_embeddings().embedding_dim
        self.gates = GateBank(dim, hidden)
        self.memory = GateMemory(dim, hidden, threshold, rule)
        self.router = GateRouter(branches.model, self.gates, branches.weights)
        self.diagnostics: list[dict[str, Any]] = []
        self._before_step: dict[str, torch.Tensor] = {}

    @property
    def branches(self) -> LoraBranches:
        """The gated branches: those of the base method."""
        return self.base.branches

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
        if any(plugin is self.base for plugin in strategy.plugins):
            raise ValueError(
                f"the {type(self.base).__name__} given to GainLoRAPlugin is also in the strategy's plugin list, "
                "so its hooks would run twice: pass it only as GainLoRAPlugin(base=...)"
            )
        self.base.add_experience_branch(strategy)
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
        # Avalanche built this experience's optimizer before this hook: register the new branch and gate.
        strategy.make_optimizer()

    def before_update(self, strategy: Any, *args, **kwargs) -> None:
        self.base.before_update(strategy, *args, **kwargs)
        self._before_step = self.memory.snapshot(self.gates.current)

    def after_update(self, strategy: Any, *args, **kwargs) -> None:
        self.base.after_update(strategy, *args, **kwargs)
        self.memory.project_update(self.gates.current, self._before_step)

    def after_training_exp(self, strategy: Any, *args, **kwargs) -> None:
        self.base.after_training_exp(strategy, *args, **kwargs)
        gate, task = self.gates.current, len(self.gates) - 1
        pooled = self._pooled(strategy)
        grams = self._gate_grams(gate, pooled)
        update_on_main_process(self.memory, lambda: self.memory.update(grams, task=task))
        if self.diagnostics and self.diagnostics[-1]["task"] == task:
            self.diagnostics[-1].update(gate_end=self._mean_gate(gate, pooled), basis_sizes=self.memory.memory.basis_sizes())

    def state_dict(self) -> dict:
        return {
            "base": self.base.state_dict(),
            "num_gates": len(self.gates),
            "gates": self.gates.state_dict(),
            "memory": self.memory.state_dict(),
            "diagnostics": [dict(entry) for entry in self.diagnostics],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the base method (branches, bases) and the gates into a fresh plugin and model.

        :param state: a :meth:`state_dict` of a GainLoRA plugin built with the same base method.
        :raises ValueError: for a used plugin, or a state without the base method's part.
        """
        if len(self.gates):
            raise ValueError("load GainLoRA state into a freshly built plugin and model")
        if "base" not in state:
            raise ValueError(
                "this GainLoRA state has no 'base' entry (the base method's branches and bases); a state saved "
                "by the former two-plugin API holds only the gates: load {**gainlora_state, 'base': base_state}"
            )
        self.base.load_state_dict(state["base"])
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


def _base_hook(name: str) -> Callable[..., None]:
    def hook(self: GainLoRAPlugin, strategy: Any, *args, **kwargs) -> None:
        getattr(self.base, name)(strategy, *args, **kwargs)

    hook.__name__ = name
    hook.__qualname__ = f"GainLoRAPlugin.{name}"
    return hook


# The base method's hooks the gates have no part in (O-LoRA's penalty in before_backward, say)
# run as they did when the base was a plugin of the strategy.
for _name in CALLBACKS:
    if _name not in vars(GainLoRAPlugin):
        setattr(GainLoRAPlugin, _name, _base_hook(_name))
del _name
