"""Avalanche checkpoints that include the optimizer.

Avalanche 0.6.0 pickles the whole strategy with dill. dill pickles a class *by value* when it
cannot find it again under its module's attribute path, and ``torch.optim`` deletes its submodule
attributes (``torch.optim.sgd`` is not an attribute of ``torch.optim``), so every torch optimizer
class is pickled by value, which fails deep inside (``Can't pickle sentinel``). Pinning
``typing_extensions`` only moves the failure.

:func:`save_checkpoint` registers with dill, for every optimizer class, a reducer that names the
class by module and qualified name and pickles only the optimizer's own state (defaults, param
groups, per-parameter state such as momentum buffers). The parameters in the param groups are the
model's own objects in the same pickle, so after loading the optimizer still steps the loaded
model. Nothing in torch or dill is patched; the reducers are dill's documented extension point,
the one Avalanche uses for its datasets.

Usage, as with Avalanche's functions of the same names::

    strategy, next_exp = maybe_load_checkpoint(strategy, "ckpt.pkl")
    for experience in benchmark.train_stream[next_exp:]:
        strategy.train(experience)
        save_checkpoint(strategy, "ckpt.pkl")
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Collection
from typing import Any

import dill
import torch
from avalanche.checkpointing import maybe_load_checkpoint
from avalanche.checkpointing import save_checkpoint as _avalanche_save_checkpoint

__all__ = ["maybe_load_checkpoint", "register_optimizer_pickling", "save_checkpoint"]


def _restore_optimizer(module: str, qualname: str, state: dict[str, Any]) -> torch.optim.Optimizer:
    cls: Any = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    optimizer = cls.__new__(cls)
    optimizer.__setstate__(state)  # Optimizer.__setstate__ also re-creates the (empty) hook tables
    return optimizer


def _reduce_optimizer(pickler: Any, optimizer: torch.optim.Optimizer) -> None:
    cls = type(optimizer)
    pickler.save_reduce(_restore_optimizer, (cls.__module__, cls.__qualname__, optimizer.__getstate__()), obj=optimizer)


def _optimizer_classes() -> list[type]:
    found, pending = [], [torch.optim.Optimizer]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def register_optimizer_pickling() -> None:
    """Make dill pickle every optimizer class defined so far by reference (idempotent).

    :func:`save_checkpoint` calls it; call it yourself before ``dill.dump`` of your own objects
    that hold optimizers. Classes defined later are covered by the next call.
    """
    for cls in _optimizer_classes():
        if cls not in dill.Pickler.dispatch:
            dill.register(cls)(_reduce_optimizer)


def save_checkpoint(strategy: Any, path: str | os.PathLike, exclude: Collection[str] | None = None) -> None:
    """Avalanche's ``save_checkpoint`` with the optimizer included (see the module docstring).

    :param strategy: the strategy to save, between experiences.
    :param path: file to write.
    :param exclude: strategy attributes to leave out, as in Avalanche.
    """
    register_optimizer_pickling()
    _avalanche_save_checkpoint(strategy, path, exclude=exclude)
