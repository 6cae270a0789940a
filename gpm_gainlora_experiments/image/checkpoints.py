"""Per-experience checkpoints of image runs: a killed run resumes after its last finished experience.

After every experience the runner saves the whole Avalanche strategy (model, optimizer, plugins
with their memories, importances or replay buffers, the clock), the random generators of torch,
numpy and random, and the accuracy rows so far. The strategy is pickled with dill, as Avalanche's
own checkpoints are, with optimizers pickled by class name (:mod:`avalanche_gpm.checkpoint`).

The data set tensors are not written: strategies hold them through their datasets (a replay
buffer is a subset of every past experience, 160 MB per Permuted MNIST task), and the rerun
rebuilds the same benchmark from the same seed anyway. Their storages are pickled as references
to their place in the benchmark (:func:`data_tensors`) and looked up in the rebuilt benchmark on
loading; every other storage is written once however many views share it. A checkpoint holds
only what training changed (about 1 MB for GPM or replay on PMNIST).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import dill
import torch
from avalanche.benchmarks.scenarios import CLScenario
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor

from avalanche_gpm.checkpoint import register_optimizer_pickling
from gpm_gainlora_experiments.common.checkpoints import read_checkpoint, write_checkpoint

#: Strategy attributes that hold the last experience's data and batches, not state.
_TRANSIENT_ATTRIBUTES = ("experience", "adapted_dataset", "dataloader", "mbatch", "mb_output", "loss")


@dataclasses.dataclass
class RunProgress:
    """What a run has produced so far: one accuracy row per finished experience, and its time.

    :param matrix: the accuracy rows so far.
    :param train_s: seconds spent in ``strategy.train``.
    :param wall_s: seconds of the whole loop (training, evaluation, checkpoints).
    """

    matrix: list[list[float]] = dataclasses.field(default_factory=list)
    train_s: float = 0.0
    wall_s: float = 0.0


def data_tensors(benchmark: CLScenario) -> list[Tensor]:
    """Every tensor reachable from the datasets of the benchmark's streams, in a fixed traversal order.

    Two builds of a benchmark with the same seed give the same list position by position, which
    is what lets a checkpoint refer to a tensor by its position. Take it right after building:
    Avalanche attaches more tensors to its datasets as they are used.
    """
    found: list[Tensor] = []
    seen: set[int] = set()
    pending: list[Any] = [exp.dataset for stream in benchmark.streams.values() for exp in stream][::-1]
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Tensor):
            found.append(item)
            continue
        if isinstance(item, (list, tuple)):
            children = list(item)
        elif isinstance(item, dict):
            children = list(item.values())
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            children = list(vars(item).values())
        else:
            continue
        pending.extend(reversed(children))
    return found


class _Pickler(dill.Pickler):
    """Pickles tensor storages by reference, as ``torch.save`` does: the benchmark's as
    ``("shared", position, dtype)``, every other one once, as ``("local", key, dtype)``, into
    :attr:`local`. Without it each view pickles its whole storage again (Avalanche's replay
    buffer keeps 1000 index views of one 54000-long tensor: 430 MB)."""

    def __init__(self, file: BinaryIO, shared: Sequence[Tensor]):
        super().__init__(file)
        self._shared = {tensor.untyped_storage().data_ptr(): position for position, tensor in enumerate(shared)}
        #: the storages that are not the benchmark's, by key
        self.local: dict[int, torch.UntypedStorage] = {}

    def persistent_id(self, obj: Any) -> tuple | None:
        if not isinstance(obj, torch.TypedStorage):
            return None
        pointer = obj.data_ptr()
        if pointer in self._shared:
            return ("shared", self._shared[pointer], obj.dtype)
        self.local.setdefault(pointer, obj.untyped())
        return ("local", pointer, obj.dtype)


class _Unpickler(dill.Unpickler):
    def __init__(self, file: BinaryIO, shared: Sequence[Tensor], local: dict[int, torch.UntypedStorage]):
        super().__init__(file)
        self._shared, self._local = shared, local

    def persistent_load(self, pid: tuple) -> torch.TypedStorage:
        kind, key, dtype = pid
        if kind == "shared":
            if key >= len(self._shared):
                raise ValueError(f"the checkpoint refers to data tensor {key}, which the rebuilt benchmark lacks")
            storage = self._shared[key].untyped_storage()
        else:
            storage = self._local[key]
        return torch.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)


def _dump(state: Any, file: BinaryIO, shared: Sequence[Tensor]) -> None:
    """The local storages first (``torch.save`` of byte tensors, length-prefixed), then the state
    that refers to them."""
    body = io.BytesIO()
    pickler = _Pickler(body, shared)
    with _typed_storages_allowed():
        pickler.dump(state)
    storages = io.BytesIO()
    as_bytes = {key: torch.empty(0, dtype=torch.uint8).set_(storage) for key, storage in pickler.local.items()}
    torch.save(as_bytes, storages)
    file.write(len(storages.getbuffer()).to_bytes(8, "little"))
    file.write(storages.getbuffer())
    file.write(body.getbuffer())


def _load(file: BinaryIO, shared: Sequence[Tensor]) -> Any:
    size = int.from_bytes(file.read(8), "little")
    local = {key: data.untyped_storage() for key, data in torch.load(io.BytesIO(file.read(size))).items()}
    with _typed_storages_allowed():
        return _Unpickler(file, shared, local).load()


@contextlib.contextmanager
def _typed_storages_allowed() -> Iterator[None]:
    # Plain pickling of a tensor goes through TypedStorage, which torch marks deprecated for users.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        yield


@contextlib.contextmanager
def _without_loggers(strategy: SupervisedTemplate) -> Iterator[None]:
    """Loggers hold open files and writers: they belong to the process, not to the run's state
    (a resumed run gets its own, see :func:`resume_strategy`)."""
    loggers, strategy.evaluator.loggers = strategy.evaluator.loggers, []
    try:
        yield
    finally:
        strategy.evaluator.loggers = loggers


def save_strategy_checkpoint(
    path: Path, config: dict[str, Any], done: RunProgress, strategy: SupervisedTemplate, shared: Sequence[Tensor]
) -> None:
    """Checkpoint after a finished experience (see the module docstring).

    :param shared: :func:`data_tensors` of the run's benchmark *as built*, before training (tensors
        Avalanche creates later, e.g. cached indices, must not shift the positions); they are
        written as references.
    """
    register_optimizer_pickling()
    saved = copy.copy(strategy)
    for attribute in _TRANSIENT_ATTRIBUTES:  # the last experience's data: rebuilt by the next train()
        setattr(saved, attribute, None)
    state = {"strategy": saved, "rng": RNGManager.__getstate__(), "progress": dataclasses.asdict(done)}
    with _without_loggers(strategy):
        write_checkpoint(path, config, state, dump=lambda obj, file: _dump(obj, file, shared))


def resume_strategy(
    path: Path, config: dict[str, Any], strategy: SupervisedTemplate, shared: Sequence[Tensor]
) -> RunProgress | None:
    """Load a checkpoint into a freshly built strategy and the random generators; None when there is none.

    :param shared: :func:`data_tensors` of the rebuilt benchmark (same seed, before training).
    :raises ValueError: for an unreadable checkpoint or one of another configuration.
    """
    state = read_checkpoint(path, config, load=lambda file: _load(file, shared))
    if state is None:
        return None
    loggers = strategy.evaluator.loggers
    strategy.__dict__.update(state["strategy"].__dict__)  # as avalanche.checkpointing does
    strategy.evaluator.loggers = loggers  # this process's log files, opened to be added to
    RNGManager.__setstate__(state["rng"])
    return RunProgress(**state["progress"])
