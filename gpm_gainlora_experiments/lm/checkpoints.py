"""Per-task checkpoints of instruction-tuning runs: a killed run resumes after its last finished task.

After every task (training and evaluation) the runner saves what the rest of the run depends on:
the method plugins' states (LoRA branches, gates, bases, diagnostics), the random generators of
torch, numpy and random, and the score matrices, losses and timings so far. The optimizer needs no
saving: :class:`~avalanche_gainlora.strategy.LanguageModelStrategy` starts every task with a fresh
one. Rerunning the same command loads the checkpoint into freshly built plugins and continues
with the next task, so the record equals that of an uninterrupted run (timings aside).

Checkpoints live in ``<out>/checkpoints/<method>_seed<seed>.pt`` (ignored by git, see
:mod:`gpm_gainlora_experiments.common.checkpoints`) and are removed once the record is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from avalanche.training.determinism.rng_manager import RNGManager

from gpm_gainlora_experiments.common.checkpoints import read_checkpoint, write_checkpoint


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


def save_run_checkpoint(
    path: Path, config: Mapping[str, Any], progress: RunProgress, plugins: Sequence[Any]
) -> None:
    """Write the checkpoint after a finished task."""
    state = {
        "progress": dataclasses.asdict(progress),
        "plugins": [plugin.state_dict() for plugin in plugins],
        "rng": RNGManager.__getstate__(),
    }
    write_checkpoint(path, config, state)


def resume_run(path: Path, config: Mapping[str, Any], plugins: Sequence[Any]) -> RunProgress | None:
    """Load a checkpoint into freshly built plugins and the random generators; None when there is none.

    :param path: the run's :func:`~gpm_gainlora_experiments.common.checkpoints.checkpoint_path`.
    :param config: the run's configuration, which the checkpoint must have been made with.
    :param plugins: the run's method plugins, freshly built, in the order they were saved.
    :raises ValueError: for an unreadable checkpoint or one of another configuration (naming the
        fields that differ); rerunning with ``force`` starts afresh.
    """
    state = read_checkpoint(path, config)
    if state is None:
        return None
    if len(state["plugins"]) != len(plugins):
        # e.g. a GainLoRA checkpoint of the two-plugin API, before GainLoRAPlugin held its base method
        raise ValueError(
            f"{path} holds the states of {len(state['plugins'])} plugins, this run builds {len(plugins)}: "
            "it was written by another version of the method; pass --force to start afresh"
        )
    for plugin, plugin_state in zip(plugins, state["plugins"]):
        plugin.load_state_dict(plugin_state)
    RNGManager.__setstate__(state["rng"])
    return RunProgress(**state["progress"])
