"""Tensors built from parameters (concatenations, stacks), rebuilt only when a parameter changed.

GainLoRA runs all branches, and all gates, as a few batched products over parameters put side by
side. Building those copies every parameter at every forward pass (during generation, at every
decoding step), although frozen branches and gates never change. :class:`ParameterCache` keeps
the built tensor while its parameters are the same tensors, in the same storage, at the same
version (every in-place update bumps a tensor's version: optimizer steps, ``load_state_dict``,
``copy_``), and while no autograd graph has to run through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class ParameterCache:
    """One tensor built from parameters, reused until one of them changes."""

    def __init__(self) -> None:
        # The tensors themselves are held, not their ids: a freed tensor's id and storage could be
        # reused by a new one (the router's weights are a new tensor at every call).
        self._parameters: list[Tensor] = []
        self._key: tuple | None = None
        self._value: Tensor | None = None

    def get(self, parameters: Sequence[Tensor], build: Callable[[], Tensor], context: tuple = ()) -> Tensor:
        """``build()``, or the result of the last call if ``parameters`` and ``context`` have not changed since.

        :param parameters: the tensors ``build`` reads.
        :param build: makes the tensor from ``parameters``.
        :param context: anything else the result depends on (shapes, dtypes), compared by equality.
        """
        if torch.is_grad_enabled() and any(p.requires_grad for p in parameters):
            return build()  # the result must carry this forward pass's graph
        key = (context, tuple((p.data_ptr(), p._version) for p in parameters))
        same = len(parameters) == len(self._parameters) and all(a is b for a, b in zip(parameters, self._parameters))
        if not same or key != self._key:
            self._value, self._key, self._parameters = build(), key, list(parameters)
        return self._value
