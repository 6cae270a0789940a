"""What a linear layer saw in one training step, for projecting its gradient on the input side.

A linear layer's weight gradient is ``G = delta^T X`` (``delta``: gradients of its outputs,
``X``: its input rows). Projecting ``G`` costs ``4 out in k`` per step; projecting ``X`` first,
``G_p = delta^T (X P)``, costs ``4 rows in k``, far less when a step has fewer rows (samples,
tokens) than the layer has outputs, as in the paper's PMNIST MLP with batch 10.

For such calls :class:`StepRecorder` *takes over* the weight gradient: while it watches a layer,
the layer's forward runs as one autograd function whose backward computes only the gradient of
the layer's input and hands ``delta`` to the recorder, which also keeps ``X``. The memory then
computes ``delta^T (X P)`` in place of autograd's ``delta^T X``: GPM's only extra work on such a
layer is projecting ``X``. Anything else that reaches the parameters through autograd (a
regulariser, a call that was not taken over) still lands in ``.grad`` and is projected there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


class _LinearKeepingOutputGradient(torch.autograd.Function):
    """``F.linear`` whose backward gives the input's gradient only and hands the output's to ``keep``.

    Weight and bias are inputs of the function, so its output is part of the graph even when
    nothing before it requires grad (the first layer of a network); they receive no gradient
    from it. Under autocast the forward runs in the autocast dtype and the backward matches it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, keep: Callable[[Tensor], None]) -> Tensor:
        output = F.linear(x, weight, bias)
        ctx.keep = keep
        ctx.save_for_backward(weight)
        return output

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        (weight,) = ctx.saved_tensors
        ctx.keep(grad)
        grad_input = grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
        return grad_input, None, None, None


class _TakingOverForward:
    """The forward a watched layer runs instead of its own: takes a training call over when it pays.

    An object, not a closure, so that a deep copy of the model (a teacher copy, say) gets one bound
    to the copied layer; the copy's recorder is never armed, so the copy computes as usual.
    """

    def __init__(self, recorder: StepRecorder, name: str, layer: nn.Linear, own_forward: Callable[..., Tensor]):
        self.recorder, self.name, self.layer, self.own_forward = recorder, name, layer, own_forward

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        recorder, layer = self.recorder, self.layer
        if args or kwargs or not (recorder.armed and layer.training and torch.is_grad_enabled()):
            return self.own_forward(x, *args, **kwargs)
        weight, bias = layer.weight, layer.bias
        rows = x.numel() // x.shape[-1]  # samples x tokens
        if not (weight.requires_grad and (bias is None or bias.requires_grad) and recorder.takes_over(self.name, rows)):
            return self.own_forward(x)
        entry = recorder.records[self.name]
        entry.inputs.append(input_vectors(layer, x.detach()))
        entry.output_grads.append(None)
        slot = len(entry.output_grads) - 1

        def keep(grad: Tensor) -> None:
            entry.output_grads[slot] = grad.reshape(-1, grad.shape[-1])

        return _LinearKeepingOutputGradient.apply(x, weight, bias, keep)


class StepRecorder:
    """Takes over, during training steps, the weight gradients of linear layers where that pays.

    It replaces each layer's ``forward`` (an instance attribute, as hook libraries do) until
    :meth:`remove`; forward hooks registered on the layer still run.

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
        # what each layer's instance ``forward`` was before (None: the class's own)
        self._replaced: dict[str, Callable[..., Tensor] | None] = {}
        for name, layer in self.layers.items():
            self._replaced[name] = layer.__dict__.get("forward")
            layer.forward = _TakingOverForward(self, name, layer, layer.forward)

    def start_step(self) -> None:
        """Forget the previous step and take over the calls of the next forward/backward pass."""
        self.clear()
        self.armed = True

    def finish_step(self) -> None:
        """Stop taking over calls and drop what was recorded (after the projection used it)."""
        self.clear()
        self.armed = False

    def clear(self) -> None:
        """Forget what was recorded."""
        for entry in self.records.values():
            entry.inputs.clear()
            entry.output_grads.clear()

    def remove(self) -> None:
        """Give every layer its own forward back."""
        self.clear()
        self.armed = False
        for name, layer in self.layers.items():
            previous = self._replaced.pop(name, None)
            if previous is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = previous
        self.layers.clear()
