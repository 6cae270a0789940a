"""The plugin that gives each experience its own LoRA branch; the base of every LoRA method here."""

from __future__ import annotations

from typing import Any

from avalanche.training.plugins import SupervisedPlugin

from avalanche_gainlora.branches import LoraBranches


class BranchPlugin(SupervisedPlugin, supports_distributed=True):
    """Adds a new LoRA branch before each training experience and trains only that branch.

    Without any other plugin this is the ungated sum of per-task branches; subclasses decide how
    a branch is initialised and trained (O-LoRA, InfLoRA), :class:`SeqLoRAPlugin` keeps a single one.
    Adding the branch (:meth:`add_experience_branch`) is kept apart from rebuilding the optimizer,
    so that :class:`~avalanche_gainlora.plugins.GainLoRAPlugin` rebuilds it once for branch and gate.

    :param branches: the model's branches (see :class:`~avalanche_gainlora.branches.LoraBranches`).
    """

    #: whether every experience gets a branch of its own
    branch_per_experience: bool = True

    def __init__(self, branches: LoraBranches):
        super().__init__()
        self.branches = branches

    def before_training_exp(self, strategy: Any, *args, **kwargs) -> None:
        if self.add_experience_branch(strategy):
            # Avalanche built this experience's optimizer before this hook: register the new branch.
            strategy.make_optimizer()

    def add_experience_branch(self, strategy: Any) -> bool:
        """Add and initialise the branch of the experience starting now, if it gets one.

        The optimizer is left as it is: the caller registers the new branch with
        ``strategy.make_optimizer()``.

        :param strategy: the strategy about to train the experience.
        :return: whether a branch was added.
        """
        if not (self.branch_per_experience or self.branches.num_branches == 0):
            return False
        index = self.branches.add_branch()
        self.branches.model.to(strategy.device)
        self.init_branch(strategy, index)
        return True

    def init_branch(self, strategy: Any, index: int) -> None:
        """Initialise branch ``index`` before it is trained (default: peft's init, ``B = 0``)."""

    def state_dict(self) -> dict:
        return {"branches": self.branches.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.branches.load_state_dict(state["branches"])


class SeqLoRAPlugin(BranchPlugin, supports_distributed=True):
    """SeqLoRA: one LoRA branch trained on every task in turn (the forgetting baseline)."""

    branch_per_experience = False
