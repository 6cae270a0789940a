"""Per-experience checkpoints of the runners: where they live, how they are written and read back.

A checkpoint is a dict saved next to the run's record, in ``<out>/checkpoints/<name>_seed<seed>.pt``
(ignored by git). It carries the run's configuration, and a checkpoint of another configuration
is refused, naming the fields that differ. What else it holds, and how it is pickled, is the
runner's business: :mod:`gpm_gainlora_experiments.lm.checkpoints` saves the LoRA plugins' states with
``torch.save``, :mod:`gpm_gainlora_experiments.image.checkpoints` the whole Avalanche strategy with dill.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from gpm_gainlora_experiments.common.configs import differing_fields
from gpm_gainlora_experiments.common.records import atomic_file


def checkpoint_path(out_dir: str | os.PathLike, name: str, seed: int) -> Path:
    """Where the checkpoint of one run lives: ``<out_dir>/checkpoints/<name>_seed<seed>.pt``."""
    return Path(out_dir) / "checkpoints" / f"{name}_seed{seed}.pt"


def _torch_dump(state: Any, file: BinaryIO) -> None:
    torch.save(state, file)


def _torch_load(file: BinaryIO) -> Any:
    return torch.load(file, weights_only=False)


def write_checkpoint(
    path: Path,
    config: Mapping[str, Any],
    state: Mapping[str, Any],
    *,
    dump: Callable[[Any, BinaryIO], None] = _torch_dump,
) -> None:
    """Save ``state`` with the run's ``config``, through :func:`~gpm_gainlora_experiments.common.records.atomic_file`.

    :param dump: writes the checkpoint dict to an open binary file (default ``torch.save``).
    """
    with atomic_file(path, "wb") as file:
        dump({"config": json.loads(json.dumps(config)), **state}, file)


def read_checkpoint(
    path: Path, config: Mapping[str, Any], *, load: Callable[[BinaryIO], Any] = _torch_load
) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (None when there is none), which must have been made with ``config``.

    :param load: reads what ``write_checkpoint``'s ``dump`` wrote (default ``torch.load``).
    :raises ValueError: for an unreadable checkpoint or one of another configuration; rerunning
        with ``--force`` starts afresh.
    """
    if not path.exists():
        return None
    try:
        with open(path, "rb") as file:
            state = load(file)
    except Exception as error:  # a truncated or foreign file: say which and what to do
        raise ValueError(f"{path} is not a readable checkpoint ({error}); delete it or pass --force") from None
    expected = json.loads(json.dumps(config))
    if not isinstance(state, dict) or state.get("config") != expected:
        found = state.get("config") if isinstance(state, dict) else None
        fields = "all" if not isinstance(found, dict) else ", ".join(differing_fields([found, expected]))
        raise ValueError(
            f"{path} is the checkpoint of a run with another configuration (differing: {fields}); "
            "pass --force to start afresh or choose another output folder"
        )
    return state
