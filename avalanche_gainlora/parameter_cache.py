"""Tensors built from parameters (concatenations, stacks), rebuilt only when a parameter changed.

GainLoRA runs all branches, and all gates, as a few batched products over parameters put side by
side. Building those copies every parameter at every forward pass (during generation, at every
decoding step), although frozen branches and gates never change. :class:`ParameterCache` keeps
the built tensor while its parameters are the same tensors, in the same storage, at the same
version (in-place updates bump a tensor's version: ``load_state_dict``, ``copy_``, plain and
``foreach`` optimizer steps), while no autograd graph has to run through it, and, if any of them
is trainable, while no optimizer has stepped (fused optimizer kernels write parameters without
bumping their version). Writes through ``.data`` bypass the version counter and are not seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook


class _OptimizerSteps:
    """Counts the steps of every torch optimizer, from the first :class:`ParameterCache` on."""

    count = 0
    _hook = None

    @classmethod
    def watch(cls) -> None:
        if cls._hook is None:
            cls._hook = register_optimizer_step_post_hook(cls._step)

    @classmethod
    def _step(cls, _optimizer: torch.optim.Optimizer, _args: tuple, _kwargs: dict) -> None:
        cls.count += 1


class ParameterCache:
    """One tensor built from parameters, reused until one of them changes."""

    def __init__(self) -> None:
        # The tensors themselves are held, not their ids: a freed tensor's id and storage could be
        # reused by a new one (the router's weights are a new tensor at every call).
        self._parameters: list[Tensor] = []
        self._key: tuple | None = None
        self._value: Tensor | None = None
        _OptimizerSteps.watch()

    def get(self, parameters: Sequence[Tensor], build: Callable[[], Tensor], context: tuple = ()) -> Tensor:
        """``build()``, or the result of the last call if ``parameters`` and ``context`` have not changed since.

        :param parameters: the tensors ``build`` reads.
        :param build: makes the tensor from ``parameters``.
        :param context: anything else the result depends on (shapes, dtypes), compared by equality.
        """
        trainable = any(p.requires_grad for p in parameters)
        if trainable and torch.is_grad_enabled():
            return build()  # the result must carry this forward pass's graph
        # Frozen parameters get no gradient, so no optimizer step writes them.
        steps = _OptimizerSteps.count if trainable else None
        key = (context, steps, tuple((p.data_ptr(), p._version) for p in parameters))
        same = len(parameters) == len(self._parameters) and all(a is b for a, b in zip(parameters, self._parameters))
        if not same or key != self._key:
            self._value, self._key, self._parameters = build(), key, list(parameters)
        return self._value
