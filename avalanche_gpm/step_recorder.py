"""What a linear layer saw in one training step, for projecting its gradient on the input side.

A linear layer's weight gradient is ``G = delta^T X`` (``delta``: gradients of its outputs,
``X``: its input rows). Projecting ``G`` costs ``4 out in k`` per step; projecting ``X`` first,
``G_p = delta^T (X P)``, costs ``4 rows in k`` plus the product, far less when a step has fewer
rows (samples, tokens) than the layer has outputs, as in the paper's PMNIST MLP with batch 10.
:class:`StepRecorder` keeps ``X`` and ``delta`` of the current step with hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from avalanche_gpm.capture import input_vectors


@dataclass
class StepRecord:
    """Input rows and output gradients of one layer over the calls of one step."""

    inputs: list[Tensor] = field(default_factory=list)
    # One slot per call, filled by the backward pass (which visits calls in reverse order).
    output_grads: list[Tensor | None] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every recorded call got its output gradient."""
        return bool(self.inputs) and all(grad is not None for grad in self.output_grads)

    @property
    def rows(self) -> int:
        return sum(x.shape[0] for x in self.inputs)


class StepRecorder:
    """Records, during training forward/backward passes, what each linear layer needs.

    :param layers: the ``nn.Linear`` layers to watch, by name.
    """

    def __init__(self, layers: Mapping[str, nn.Linear]):
        self.records: dict[str, StepRecord] = {name: StepRecord() for name in layers}
        # Only training iterations record: other passes (another plugin's importance estimate,
        # say) would otherwise pile up inputs that no projection ever consumes.
        self.armed = False
        self._handles: list[RemovableHandle] = [
            layer.register_forward_hook(self._hook(name)) for name, layer in layers.items()
        ]

    def _hook(self, name: str):
        def record(layer: nn.Linear, args: tuple, output: Tensor) -> None:
            if not (self.armed and layer.training and torch.is_grad_enabled() and output.requires_grad):
                return
            entry = self.records[name]
            entry.inputs.append(input_vectors(layer, args[0].detach()))
            entry.output_grads.append(None)
            slot = len(entry.output_grads) - 1

            def keep(grad: Tensor) -> None:
                entry.output_grads[slot] = grad.detach().reshape(-1, grad.shape[-1])

            output.register_hook(keep)

        return record

    def start_step(self) -> None:
        """Forget the previous step and record the next forward/backward pass."""
        self.clear()
        self.armed = True

    def finish_step(self) -> None:
        """Stop recording and drop what was recorded (after the projection used it)."""
        self.clear()
        self.armed = False

    def clear(self) -> None:
        """Forget what was recorded."""
        for entry in self.records.values():
            entry.inputs.clear()
            entry.output_grads.clear()

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
