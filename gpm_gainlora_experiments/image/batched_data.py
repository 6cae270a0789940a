"""Mini-batches gathered from tensors by index, equal to what Avalanche's loaders collate sample by sample.

Avalanche builds every mini-batch by calling ``dataset[i]`` for each sample (a chain of
``AvalancheDataset``, ``_FlatDataWithTransform`` and leaf ``__getitem__`` calls) and collating the
results, which costs more than the whole training step of a small MLP. When a dataset is backed by
tensors and applies no transform, the same batch is one tensor gather. :func:`tensor_source` proves
that from the dataset's structure and returns a :class:`TensorSource` that gathers batches; it
raises :class:`NotBatchable` (naming the reason) for anything it cannot prove, so callers can fall
back to Avalanche's loader. :class:`BatchedLoader` replaces the iteration of an Avalanche
``MultiDatasetDataLoader`` (the train and eval loaders of every ``SupervisedTemplate``), drawing
the same random numbers in the same order, so training is bitwise identical.

It reads avalanche-lib internals (``_flat_data``, ``_datasets``, ``_indices``, transform groups,
data attributes) and is only trusted on :data:`TESTED_AVALANCHE`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import avalanche
import numpy as np
import torch
from avalanche.benchmarks.utils.classification_dataset import _TensorClassificationDataset
from avalanche.benchmarks.utils.data import AvalancheDataset, _FlatDataWithTransform
from avalanche.benchmarks.utils.data_attribute import DataAttribute
from avalanche.benchmarks.utils.data_loader import (
    GroupBalancedDataLoader,
    MultiDatasetDataLoader,
    MultiDatasetSampler,
    SingleDatasetDataLoader,
    TaskBalancedDataLoader,
)
from avalanche.benchmarks.utils.flat_data import ConstantSequence, FlatData
from avalanche.benchmarks.utils.transforms import TupleTransform
from torch import Tensor
from torch.utils.data import TensorDataset, default_collate

#: The avalanche-lib version whose internals this module reads; on any other it falls back.
TESTED_AVALANCHE = "0.6.0"
#: Loaders whose iteration :class:`BatchedLoader` reproduces (subclasses may iterate differently).
_LOADER_TYPES = (MultiDatasetDataLoader, SingleDatasetDataLoader, GroupBalancedDataLoader, TaskBalancedDataLoader)
#: Loader arguments that change how batches are made or delivered; any of them set means fall back.
_UNSUPPORTED_LOADER_ARGS = ("sampler", "batch_sampler", "worker_init_fn", "ffcv_args")


class NotBatchable(Exception):
    """Why a dataset or loader cannot be served by index gathers (Avalanche's loader is used instead)."""


@runtime_checkable
class BatchGatherable(Protocol):
    """A leaf dataset that can return many samples at once.

    ``gather_batch(rows)`` must equal ``default_collate([self[i] for i in rows])`` field by field.
    """

    def gather_batch(self, rows: Tensor) -> list[Tensor]: ...


@dataclass(frozen=True)
class TensorSource:
    """Every sample of a dataset as tensor rows: the leaf fields, then the data attributes Avalanche appends.

    :param gatherers: one function per leaf dataset, gathering its fields for a tensor of its rows.
    :param leaves: the gatherer of each position of the dataset.
    :param rows: the leaf row of each position.
    :param attributes: per position, the value of each data attribute used in ``__getitem__`` (the
        task label of a task-aware dataset), in the order Avalanche appends them.
    """

    gatherers: tuple[Callable[[Tensor], list[Tensor]], ...]
    leaves: Tensor
    rows: Tensor
    attributes: tuple[Tensor, ...]

    def gather(self, positions: Tensor) -> list[Tensor]:
        """The collated mini-batch of the samples at ``positions``."""
        rows = self.rows[positions]
        fields = self.gatherers[0](rows) if len(self.gatherers) == 1 else self._gather_mixed(self.leaves[positions], rows)
        return [*fields, *(values[positions] for values in self.attributes)]

    def _gather_mixed(self, leaves: Tensor, rows: Tensor) -> list[Tensor]:
        # A batch drawn from several leaves (a joint dataset): each leaf's part, put back in place.
        fields: list[Tensor] = []
        for leaf in leaves.unique().tolist():
            where = (leaves == leaf).nonzero().squeeze(1)
            parts = self.gatherers[leaf](rows[where])
            if not fields:
                fields = [part.new_empty((len(rows), *part.shape[1:])) for part in parts]
            for field, part in zip(fields, parts):
                field[where] = part
        return fields

    def __len__(self) -> int:
        return len(self.rows)


def tensor_source(datasets: Sequence[AvalancheDataset]) -> TensorSource:
    """The samples of the concatenation of ``datasets`` as one :class:`TensorSource`.

    :param datasets: Avalanche datasets (the groups of a loader), backed by one or several leaf
        datasets whose samples have the same field types and shapes.
    :raises NotBatchable: when equality with Avalanche's per-sample path cannot be proven.
    """
    if avalanche.__version__ != TESTED_AVALANCHE:
        raise NotBatchable(f"avalanche-lib {avalanche.__version__} (the batched path is tested on {TESTED_AVALANCHE})")
    resolved = [_resolve_dataset(dataset) for dataset in datasets]
    if len({len(attributes) for _, _, attributes in resolved}) > 1:
        raise NotBatchable("the loader's groups have different data attributes")
    leaves: dict[int, tuple[int, Any]] = {}  # distinct leaf datasets by identity: (index, leaf)
    leaf_of_positions, rows = [], []
    for pieces, positions, _ in resolved:
        leaf_of = torch.empty(positions, dtype=torch.int64)
        leaf_rows = torch.empty(positions, dtype=torch.int64)
        for leaf, where, leaf_row in pieces:
            leaf_of[where] = leaves.setdefault(id(leaf), (len(leaves), leaf))[0]
            leaf_rows[where] = leaf_row
        leaf_of_positions.append(leaf_of)
        rows.append(leaf_rows)
    if any(hasattr(leaf, "ffcv_info") for _, leaf in leaves.values()):
        raise NotBatchable("the dataset is prepared for FFCV loading")
    gatherers = tuple(_leaf_gatherer(leaf) for _, leaf in leaves.values())
    _check_same_fields(gatherers)
    return TensorSource(
        gatherers=gatherers,
        leaves=torch.cat(leaf_of_positions),
        rows=torch.cat(rows),
        attributes=tuple(torch.cat(values) for values in zip(*(attributes for _, _, attributes in resolved))),
    )


def _check_same_fields(gatherers: Sequence[Callable[[Tensor], list[Tensor]]]) -> None:
    """Samples of different leaves must collate into the same dtypes and shapes (no promotion)."""
    first = torch.zeros(1, dtype=torch.int64)
    kinds = {tuple((part.dtype, part.shape[1:], part.device) for part in gather(first)) for gather in gatherers}
    if len(kinds) > 1:
        raise NotBatchable("the leaf datasets' samples differ in dtype, shape or device")


def _resolve_dataset(dataset: AvalancheDataset) -> tuple[list[tuple[Any, Tensor, Tensor]], int, tuple[Tensor, ...]]:
    """The ``(leaf, where, rows)`` pieces behind ``dataset``, its length, and the appended attribute values."""
    if not isinstance(dataset, AvalancheDataset) or type(dataset).__getitem__ is not AvalancheDataset.__getitem__:
        raise NotBatchable(f"{type(dataset).__name__} is not a plain AvalancheDataset")
    if dataset.collate_fn is not default_collate:
        raise NotBatchable(f"custom collate function {dataset.collate_fn!r}")
    flat = dataset._flat_data
    group = flat._transform_groups.current_group if isinstance(flat, _FlatDataWithTransform) else None
    _check_identity_transforms(flat, group)
    positions = torch.arange(len(dataset))
    attributes = tuple(
        _attribute_values(attribute, positions) for attribute in dataset._data_attributes.values()
        if attribute.use_in_getitem
    )
    return _resolve(flat, positions), len(dataset), attributes


def _check_identity_transforms(node: Any, group: str | None) -> None:
    """Every transform group on the way to the leaves must be empty for ``group``."""
    if isinstance(node, _FlatDataWithTransform):
        for groups in (node._transform_groups, node._frozen_transform_groups):
            transform = None if groups is None else groups.transform_groups.get(group)
            # Avalanche stores "no transform" for (x, y) as TupleTransform([None, None]).
            if transform is not None and not (
                type(transform) is TupleTransform and all(part is None for part in transform.transforms)
            ):
                raise NotBatchable(f"transform {transform!r} in group {group!r}")
    if isinstance(node, FlatData):
        for child in node._datasets:
            _check_identity_transforms(child, group)


def _resolve(node: Any, idx: Tensor) -> list[tuple[Any, Tensor, Tensor]]:
    """Follow Avalanche's subset/concat indexing down to leaves.

    :return: ``(leaf, where, rows)`` pieces: the positions ``idx[where]`` are the leaf's ``rows``.
    """
    if isinstance(node, DataAttribute):
        return _resolve(node.data, idx)
    if isinstance(node, ConstantSequence) or not isinstance(node, FlatData):
        return [(node, torch.arange(len(idx)), idx)]
    if node._indices is not None:
        idx = torch.as_tensor(np.asarray(node._indices, dtype=np.int64))[idx]
    if len(node._datasets) == 1:
        return _resolve(node._datasets[0], idx)
    ends = torch.as_tensor(node._cumulative_sizes)
    which = torch.searchsorted(ends, idx, right=True)
    pieces = []
    for child in which.unique().tolist():
        where = (which == child).nonzero().squeeze(1)
        start = int(ends[child - 1]) if child else 0
        pieces += [(leaf, where[sub], rows) for leaf, sub, rows in _resolve(node._datasets[child], idx[where] - start)]
    return pieces


def _leaf_gatherer(leaf: Any) -> Callable[[Tensor], list[Tensor]]:
    """A function gathering ``leaf``'s fields; the type checks prove equality with collation."""
    if isinstance(leaf, BatchGatherable):
        return leaf.gather_batch
    if type(leaf) is TensorDataset:
        return _TensorFields(leaf.tensors).gather
    if type(leaf) is _TensorClassificationDataset:
        # Its __getitem__ turns the label into a Python number, which collation makes int64/float64.
        label = leaf.tensors[1]
        if label.dtype == torch.bool or label.is_complex():
            raise NotBatchable(f"labels of dtype {label.dtype}")
        label = label.double() if label.is_floating_point() else label.long()
        return _TensorFields((leaf.tensors[0], label, *leaf.tensors[2:])).gather
    raise NotBatchable(f"leaf dataset {type(leaf).__name__} is neither a TensorDataset nor BatchGatherable")


@dataclass(frozen=True)
class _TensorFields:
    tensors: tuple[Tensor, ...]

    def gather(self, rows: Tensor) -> list[Tensor]:
        # index_select: the values of ``tensor[rows]``, ~1.3x faster on CPU for 10-256 rows
        return [tensor.index_select(0, rows) for tensor in self.tensors]


def _attribute_values(attribute: DataAttribute, positions: Tensor) -> Tensor:
    """The collated values of a data attribute (Python ints become int64, 0-d tensors keep their dtype)."""
    values = torch.empty(len(positions), dtype=torch.int64)
    dtypes = set()
    for leaf, where, rows in _resolve(attribute, positions):
        if isinstance(leaf, ConstantSequence):
            piece = torch.as_tensor(leaf._constant_value).expand(len(rows))
        elif isinstance(leaf, Tensor):
            piece = leaf[rows]
        elif isinstance(leaf, Sequence) and all(type(value) is int for value in leaf):
            piece = torch.as_tensor(list(leaf), dtype=torch.int64)[rows]
        else:
            raise NotBatchable(f"data attribute {attribute.name!r} stored as {type(leaf).__name__}")
        if piece.dtype in (torch.bool,) or piece.is_floating_point() or piece.is_complex():
            raise NotBatchable(f"data attribute {attribute.name!r} of dtype {piece.dtype}")
        dtypes.add(piece.dtype)
        values = values.to(piece.dtype)
        values[where] = piece
    if len(dtypes) > 1:
        raise NotBatchable(f"data attribute {attribute.name!r} mixes dtypes {sorted(map(str, dtypes))}")
    return values


class BatchedLoader:
    """Iterates an Avalanche ``MultiDatasetDataLoader``'s batches by index gathers.

    Each epoch it builds the loader's samplers exactly as Avalanche does and draws the outer
    PyTorch iterator's base seed, in the same order, so the random number stream and the batches are
    those of Avalanche's loader; only the per-sample fetching and the per-epoch dataset walks go.

    :param loader: the loader the strategy built; :func:`batched_loader` checks it can be replaced.
    :param source: the concatenation of the loader's datasets as tensors.
    """

    def __init__(self, loader: MultiDatasetDataLoader, source: TensorSource):
        self.loader = loader
        self.source = source

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[Tensor]]:
        loader = self.loader
        samplers = loader._create_samplers(
            loader.datasets, loader.batch_sizes, loader.distributed_sampling, loader.loader_kwargs
        )
        batch_sampler = MultiDatasetSampler(
            loader.datasets,
            samplers,
            termination_dataset_idx=loader.termination_dataset,
            oversample_small_datasets=loader.oversample_small_datasets,
            never_ending=loader.never_ending,
        )
        # torch's DataLoader iterator draws this base seed (for workers) even without workers.
        torch.empty((), dtype=torch.int64).random_(generator=loader.loader_kwargs.get("generator"))
        for indices in batch_sampler:
            yield self.source.gather(torch.as_tensor(indices, dtype=torch.int64))


def batched_loader(loader: Any) -> BatchedLoader:
    """A :class:`BatchedLoader` equivalent to ``loader``.

    :param loader: a strategy's ``dataloader`` as Avalanche built it.
    :raises NotBatchable: naming why the batched path would not be provably identical.
    """
    if type(loader) not in _LOADER_TYPES:
        raise NotBatchable(f"loader type {type(loader).__name__}")
    kwargs = loader.loader_kwargs
    if kwargs.get("num_workers", 0) or kwargs.get("pin_memory"):
        raise NotBatchable("worker processes or pinned memory requested")
    if loader.distributed_sampling:
        raise NotBatchable("distributed sampling")
    unsupported = [name for name in _UNSUPPORTED_LOADER_ARGS if kwargs.get(name) is not None]
    if unsupported or loader.ffcv_args.get("device") is not None:
        raise NotBatchable(f"loader arguments {unsupported or ['ffcv_args']}")
    if kwargs.get("collate_fn", default_collate) is not default_collate:
        raise NotBatchable(f"custom collate function {kwargs['collate_fn']!r}")
    return BatchedLoader(loader, tensor_source(loader.datasets))
