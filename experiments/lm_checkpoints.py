"""Per-task checkpoints of instruction-tuning runs: a killed run resumes after its last finished task.

After every task (training and evaluation) the runner saves what the rest of the run depends on:
the method plugins' states (LoRA branches, gates, bases, diagnostics), the random generators of
torch, numpy and random, and the score matrices, losses and timings so far. The optimizer needs no
saving: :class:`~avalanche_gainlora.strategy.LanguageModelStrategy` starts every task with a fresh
one. Rerunning the same command loads the checkpoint into freshly built plugins and continues
with the next task, so the record equals that of an uninterrupted run (timings aside).

Checkpoints live in ``<out>/checkpoints/<method>_seed<seed>.pt`` (ignored by git) and are
removed once the record is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from avalanche.training.determinism.rng_manager import RNGManager

from experiments.configs import differing_fields


@dataclasses.dataclass
class RunProgress:
    """What a run has produced so far, task by task.

    :param matrices: score matrices by score name, one row per finished task.
    :param losses: last-epoch training loss of each finished task.
    :param per_task: timings (and epochs) of each finished task.
    :param diverged: the tasks (from 0) whose training loss was NaN or infinite.
    """

    matrices: dict[str, list[list[float | None]]]
    losses: list[float | None] = dataclasses.field(default_factory=list)
    per_task: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    diverged: list[int] = dataclasses.field(default_factory=list)

    @property
    def tasks_done(self) -> int:
        return len(self.losses)


def checkpoint_path(out_dir: str | os.PathLike, method: str, seed: int) -> Path:
    """Where the checkpoint of one run lives: ``<out_dir>/checkpoints/<method>_seed<seed>.pt``."""
    return Path(out_dir) / "checkpoints" / f"{method}_seed{seed}.pt"


def save_run_checkpoint(
    path: Path, config: Mapping[str, Any], progress: RunProgress, plugins: Sequence[Any]
) -> None:
    """Write the checkpoint after a finished task (through a temporary file of this process)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "config": json.loads(json.dumps(config)),
        "progress": dataclasses.asdict(progress),
        "plugins": [plugin.state_dict() for plugin in plugins],
        "rng": RNGManager.__getstate__(),
    }
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    torch.save(state, partial)
    os.replace(partial, path)


def resume_run(path: Path, config: Mapping[str, Any], plugins: Sequence[Any]) -> RunProgress | None:
    """Load a checkpoint into freshly built plugins and the random generators; None when there is none.

    :param path: the run's :func:`checkpoint_path`.
    :param config: the run's configuration, which the checkpoint must have been made with.
    :param plugins: the run's method plugins, freshly built, in the order they were saved.
    :raises ValueError: for an unreadable checkpoint or one of another configuration (naming the
        fields that differ); rerunning with ``force`` starts afresh.
    """
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which and what to do
        raise ValueError(f"{path} is not a readable checkpoint ({error}); delete it or pass --force") from None
    expected = json.loads(json.dumps(config))
    if state["config"] != expected:
        fields = ", ".join(differing_fields([state["config"], expected]))
        raise ValueError(
            f"{path} is the checkpoint of a run with another configuration (differing: {fields}); "
            "pass --force to start afresh or choose another output folder"
        )
    for plugin, plugin_state in zip(plugins, state["plugins"], strict=True):
        plugin.load_state_dict(plugin_state)
    RNGManager.__setstate__(state["rng"])
    return RunProgress(**state["progress"])
