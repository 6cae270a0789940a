"""O-LoRA as an Avalanche plugin."""

from __future__ import annotations

from typing import Any

from avalanche_gainlora.branches import LoraBranches
from avalanche_gainlora.olora import orthogonality_penalty
from avalanche_gainlora.plugins.branch_plugin import BranchPlugin


class OLoRAPlugin(BranchPlugin, supports_distributed=True):
    """O-LoRA (Wang et al., 2023): a trainable branch per task, kept orthogonal to the old ones by
    adding ``lambda1 * sum_{i<t} sum |A_i A_t^T|`` to the loss.

    :param branches: the model's branches.
    :param lambda1: weight of the orthogonality penalty (0.5 in the official scripts).
    """

    def __init__(self, branches: LoraBranches, *, lambda1: float = 0.5):
        super().__init__(branches)
        if lambda1 < 0:
            raise ValueError(f"lambda1 must be >= 0, got {lambda1}")
        self.lambda1 = lambda1

    def before_backward(self, strategy: Any, *args, **kwargs) -> None:
        current = self.branches.num_branches - 1
        if current == 0 or self.lambda1 == 0:
            return
        old = [{k: v.detach() for k, v in self.branches.down(i).items()} for i in range(current)]
        strategy.loss = strategy.loss + self.lambda1 * orthogonality_penalty(old, self.branches.down(current))
