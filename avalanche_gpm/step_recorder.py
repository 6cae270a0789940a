"""What a linear layer saw in one training step, for projecting its gradient on the input side.

A linear layer's weight gradient is ``G = delta^T X`` (``delta``: gradients of its outputs,
``X``: its input rows). Projecting ``G`` costs ``4 out in k`` per step; projecting ``X`` first,
``G_p = delta^T (X P)``, costs ``4 rows in k``, far less when a step has fewer rows (samples,
tokens) than the layer has outputs, as in the paper's PMNIST MLP with batch 10.

For such calls :class:`StepRecorder` *takes over* the weight gradient: the layer's parameters do
not require grad while it runs, so autograd computes only the gradient of the layer's input, and
the recorder keeps ``X`` and ``delta``. The memory then computes ``delta^T (X P)`` in place of
autograd's ``delta^T X``: GPM's only extra work on such a layer is projecting ``X``. Anything
else that reaches the parameters through autograd (a regulariser, a call that was not taken over)
still lands in ``.grad`` and is projected there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from avalanche_gpm.capture import input_vectors


@dataclass
class StepRecord:
    """Input rows and output gradients of one layer over the calls taken over in one step."""

    inputs: list[Tensor] = field(default_factory=list)
    # One slot per call, filled by the backward pass; None when the call's output got no gradient.
    output_grads: list[Tensor | None] = field(default_factory=list)

    def pairs(self) -> tuple[Tensor, Tensor] | None:
        """``(delta, X)`` of the calls whose outputs received a gradient, rows concatenated."""
        used = [(grad, x) for grad, x in zip(self.output_grads, self.inputs) if grad is not None]
        if len(used) <= 1:  # the usual case: one call per step, nothing to concatenate
            return used[0] if used else None
        return torch.cat([grad for grad, _ in used]), torch.cat([x for _, x in used])


class _KeepOutputGradient(torch.autograd.Function):
    """Identity on a layer's output whose backward hands the output gradient to a callback.

    It takes the layer's weight as an extra input so that the output is part of the graph even
    when nothing before it requires grad (the first layer of a network); the weight receives no
    gradient from it. The output is cloned because in-place ops (``ReLU(inplace=True)``) may follow.
    """

    @staticmethod
    def forward(ctx, output: Tensor, anchor: Tensor, keep: Callable[[Tensor], None]) -> Tensor:
        ctx.keep = keep
        return output.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        ctx.keep(grad.detach())
        return grad, None, None


class StepRecorder:
    """Takes over, during training steps, the weight gradients of linear layers where that pays.

    :param layers: the ``nn.Linear`` layers to watch, by name.
    :param takes_over: ``takes_over(name, rows)``: whether a call of layer ``name`` on ``rows``
        input rows should be projected on the input side.
    """

    def __init__(self, layers: Mapping[str, nn.Linear], takes_over: Callable[[str, int], bool]):
        self.layers = dict(layers)
        self.takes_over = takes_over
        self.records: dict[str, StepRecord] = {name: StepRecord() for name in self.layers}
        # Only training iterations are taken over: other passes (another plugin's importance
        # estimate, say) keep plain autograd, and nothing would consume their records.
        self.armed = False
        # the call being taken over: its input rows and the parameters switched off for it
        self._pending: tuple[Tensor, list[nn.Parameter]] | None = None
        self._handles: list[RemovableHandle] = []
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_pre_hook(self._before(name)))
            self._handles.append(layer.register_forward_hook(self._after(name)))

    def _before(self, name: str):
        def detach_parameters(layer: nn.Linear, args: tuple) -> None:
            if not (self.armed and layer.training and torch.is_grad_enabled()):
                return
            params = [p for p in (layer.weight, layer.bias) if p is not None]
            rows = args[0].numel() // args[0].shape[-1]  # samples x tokens
            if not (all(p.requires_grad for p in params) and self.takes_over(name, rows)):
                return
            inputs = input_vectors(layer, args[0].detach())
            for param in params:
                param.requires_grad_(False)
            self._pending = (inputs, params)

        return detach_parameters

    def _after(self, name: str):
        def keep_output_gradient(layer: nn.Linear, args: tuple, output: Tensor) -> Tensor | None:
            if self._pending is None:
                return None
            inputs = self._pending[0]
            self._restore()
            entry = self.records[name]
            entry.inputs.append(inputs)
            entry.output_grads.append(None)
            slot = len(entry.output_grads) - 1

            def keep(grad: Tensor) -> None:
                entry.output_grads[slot] = grad.reshape(-1, grad.shape[-1])

            return _KeepOutputGradient.apply(output, layer.weight, keep)

        return keep_output_gradient

    def _restore(self) -> None:
        if self._pending is not None:
            for param in self._pending[1]:
                param.requires_grad_(True)
            self._pending = None

    def start_step(self) -> None:
        """Forget the previous step and take over the calls of the next forward/backward pass."""
        self.clear()
        self.armed = True

    def finish_step(self) -> None:
        """Stop taking over calls and drop what was recorded (after the projection used it)."""
        self.clear()
        self.armed = False

    def clear(self) -> None:
        """Forget what was recorded; parameters of a call that raised require grad again."""
        self._restore()
        for entry in self.records.values():
            entry.inputs.clear()
            entry.output_grads.clear()

    def remove(self) -> None:
        """Remove the hooks."""
        self.clear()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
