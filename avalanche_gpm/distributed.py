"""Running GPM strategies under torch DDP with Avalanche 0.6.0's ``DistributedHelper``.

Avalanche 0.6.0 has the pieces but does not put them together:

* it never wraps the model in ``DistributedDataParallel``: without :func:`wrap_for_ddp` every
  rank silently trains its own copy;
* it shards the *training* data with a ``DistributedSampler`` only when the experience has task
  labels (``hasattr(experience, "task_labels")``); otherwise every rank trains on all the data.
  :func:`wrap_for_ddp` adds a check that raises instead (:func:`check_train_sharding`);
* it shards evaluation but does not reduce metrics: each rank reports its own shard. Use
  :func:`distributed_accuracy` (or :func:`all_reduce_sum` on your own counts) for global numbers.

:class:`~avalanche_gpm.plugin.GPMPlugin` itself is distributed-safe: its memory is identical on
every rank. Launch one process per device, e.g. ``torchrun --nproc_per_node=2 train.py``::

    DistributedHelper.init_distributed(seed, backend="gloo", use_cuda=False)  # every rank
    strategy = wrap_for_ddp(GPM(model=model, optimizer=SGD(model.parameters(), lr=0.1), ...),
                            experiences=benchmark.train_stream)  # task heads created before wrapping
    for experience in benchmark.train_stream:  # experiences must carry task labels
        strategy.train(experience)
        accuracy = distributed_accuracy(strategy.model, test_set, batch_size=64)
    shutdown_distributed(strategy)

Use the per-rank minibatch ``train_mb_size = global batch / world_size``. Data sets whose length
is not a multiple of the world size are padded by ``DistributedSampler`` (a few samples are seen
twice per epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import torch
from avalanche.benchmarks.scenarios import CLExperience
from avalanche.distributed import DistributedHelper
from avalanche.models.dynamic_modules import DynamicModule, avalanche_model_adaptation
from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins import SupervisedPlugin
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

__all__ = [
    "DistributedHelper",
    "DistributedChecks",
    "all_reduce_sum",
    "check_ranks_agree",
    "check_train_sharding",
    "distributed_accuracy",
    "distributed_accuracy_row",
    "main_process_result",
    "shard_count",
    "shutdown_distributed",
    "sum_grams_over_ranks",
    "unwrap_from_ddp",
    "update_on_main_process",
    "wrap_for_ddp",
]

T = TypeVar("T")


def shard_count(num_items: int, available: int, rank: int, world_size: int) -> int:
    """How many of the first ``min(num_items, available)`` positions ``i`` have ``i % world_size == rank``."""
    return len(range(rank, min(num_items, available), world_size))


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over all ranks (a copy; ``tensor`` itself when not distributed).

    Runs on the CPU with gloo and on the process's device with NCCL, and returns the result on
    ``tensor``'s device. Every rank must call it with a tensor of the same shape and dtype.
    """
    if not DistributedHelper.is_distributed:
        return tensor
    device = tensor.device
    comm_device = DistributedHelper.make_device() if DistributedHelper.forced_cuda_comm else device
    reduced = tensor.detach().clone().to(comm_device)
    torch.distributed.all_reduce(reduced, op=torch.distributed.ReduceOp.SUM)
    return reduced.to(device)


def sum_grams_over_ranks(grams: Mapping[str, Tensor] | None, dims: Mapping[str, int]) -> dict[str, Tensor]:
    """Sum every ``d x d`` Gram matrix over ranks (float64, CPU).

    :param grams: this rank's Gram matrices by name; ``None`` or missing names where its shard was empty.
    :param dims: the size ``d`` of every name, in the same order on every rank.
    """
    grams = grams or {}
    summed = {}
    for name, dim in dims.items():
        local = grams.get(name)
        local = torch.zeros(dim, dim, dtype=torch.float64) if local is None else local.detach().double().cpu()
        summed[name] = all_reduce_sum(local)
    return summed


class _MainProcessFailure:
    """What rank 0 broadcasts instead of a result when its computation raised."""

    def __init__(self, error: BaseException):
        self.description = f"{type(error).__name__}: {error}"


def main_process_result(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, broadcast to every rank; just ``compute()`` when not distributed.

    When ``compute()`` raises on rank 0, rank 0 re-raises and every other rank raises a
    ``RuntimeError`` quoting it, instead of waiting forever for a result that never comes.
    """
    if not DistributedHelper.is_distributed:
        return compute()
    if DistributedHelper.is_main_process:
        try:
            result = compute()
        except Exception as error:
            DistributedHelper.broadcast_object(_MainProcessFailure(error))
            raise
        return DistributedHelper.broadcast_object(result)
    result = DistributedHelper.broadcast_object(None)
    if isinstance(result, _MainProcessFailure):
        raise RuntimeError(f"rank 0 failed, so this rank stops too: {result.description}")
    return result


def update_on_main_process(memory: Any, update: Callable[[], None]) -> None:
    """Run ``update()`` (which changes ``memory``) on rank 0 and give every rank rank 0's ``memory`` state.

    A failure on rank 0 stops every rank (see :func:`main_process_result`).

    :param memory: an object with ``state_dict()`` and ``load_state_dict(state)``.
    """

    def updated_state():
        update()
        return memory.state_dict()

    state = main_process_result(updated_state)
    if DistributedHelper.is_distributed and not DistributedHelper.is_main_process:
        memory.load_state_dict(state)


def check_train_sharding(experience) -> None:
    """Raise unless Avalanche 0.6.0 will shard this experience's training data over the ranks.

    ``SupervisedTemplate.make_train_dataloader`` uses a ``DistributedSampler`` only for
    experiences with a ``task_labels`` attribute; other experiences are fed whole to every rank,
    which silently multiplies the data by the world size. No-op when not distributed.
    """
    if DistributedHelper.is_distributed and not hasattr(experience, "task_labels"):
        raise ValueError(
            f"experience {getattr(experience, 'current_experience', '?')} has no task labels: Avalanche 0.6.0 "
            "shards training data over ranks only for experiences with task labels, so every rank would "
            "train on all of it. Build the benchmark with task labels (e.g. all 0) for distributed runs."
        )


def check_ranks_agree(model: nn.Module) -> None:
    """Raise on every rank unless all ranks hold the same weights. No-op when not distributed.

    DDP keeps the ranks identical only while every change to the weights goes through averaged
    gradients; a plugin that decides something per rank (restoring weights, stopping early,
    updating a buffer from its own samples) makes them drift apart silently. The check compares
    each parameter's sum with rank 0's: cheap, and exact for the usual case of a rank-local change.

    :raises RuntimeError: on every rank when some rank differs; a differing rank names its first
        differing parameter.
    """
    if not DistributedHelper.is_distributed:
        return
    named = list(DistributedHelper.unwrap_model(model).named_parameters())
    sums = torch.stack([param.detach().double().sum().cpu() for _, param in named])
    reference = DistributedHelper.broadcast_object(sums)
    differing = [name for (name, _), same in zip(named, (sums == reference).tolist()) if not same]
    # Every rank learns how many ranks differ, so all of them raise and none waits for the others.
    ranks_off = int(all_reduce_sum(torch.tensor([float(bool(differing))], dtype=torch.float64)).item())
    if ranks_off:
        where = f"this rank differs first in {differing[0]!r}" if differing else "this rank agrees with rank 0"
        raise RuntimeError(
            f"the weights differ between ranks ({ranks_off} of {DistributedHelper.world_size} away from rank 0's; "
            f"{where}): something changed them outside DDP's averaged gradients, e.g. a plugin that "
            "restores, stops or updates per rank; make it take the same decision on every rank"
        )


class DistributedChecks(SupervisedPlugin, supports_distributed=True):
    """Fails a distributed training run on experiences Avalanche would not shard (before training
    them) and when the ranks' weights drifted apart (after each experience, see
    :func:`check_ranks_agree`). Listed last, so it checks what the other plugins left."""

    def before_training_exp(self, strategy, **kwargs):
        check_train_sharding(strategy.experience)

    def after_training_exp(self, strategy, **kwargs):
        check_ranks_agree(strategy.model)


def wrap_for_ddp(strategy, experiences: Iterable[CLExperience] | None = None):
    """Wrap ``strategy.model`` in ``DistributedDataParallel`` (Avalanche 0.6.0 never does it).

    Call after :meth:`DistributedHelper.init_distributed` and after building the strategy; the
    optimizer keeps working since DDP shares the model's parameters. Also appends
    :class:`DistributedChecks` to the strategy's plugins. When not distributed the strategy is
    returned unchanged (no wrapper, no extra plugin), so the same script runs in one process.

    DDP broadcasts rank 0's parameters on wrapping, so the ranks start identical. It synchronises
    only the parameters that exist at that moment: a model that grows (Avalanche's dynamic modules,
    e.g. the task heads of ``MultiHeadClassifier``) is first adapted to every experience it will
    see, so all its heads exist, start identical and are trained in sync.

    :param experiences: the experiences the run trains on (e.g. ``benchmark.train_stream``);
        required for a model with dynamic modules.
    :return: ``strategy``, for chaining.
    :raises ValueError: for a model with dynamic modules and no ``experiences``.
    """
    if not DistributedHelper.is_distributed:
        return strategy
    model = DistributedHelper.unwrap_model(strategy.model)
    if experiences is None and any(isinstance(m, DynamicModule) for m in model.modules()):
        raise ValueError(
            f"{type(model).__name__} grows during training (dynamic modules such as task heads), and DDP "
            "synchronises only the parameters that exist when it wraps the model: pass "
            "wrap_for_ddp(strategy, experiences=benchmark.train_stream) to create them all first"
        )
    for experience in experiences or ():
        avalanche_model_adaptation(model, experience)
    strategy.model = DistributedHelper.wrap_model(model.to(strategy.device))
    if not any(isinstance(p, DistributedChecks) for p in strategy.plugins):
        strategy.plugins.append(DistributedChecks())
    return strategy


def unwrap_from_ddp(strategy):
    """Put the bare model back into ``strategy.model`` (e.g. before saving or shutting down)."""
    strategy.model = DistributedHelper.unwrap_model(strategy.model)
    return strategy


def shutdown_distributed(strategy=None) -> None:
    """Barrier, drop the DDP wrapper, destroy the process group (avoids crashes at exit)."""
    if not DistributedHelper.is_distributed:
        return
    DistributedHelper.barrier()
    if strategy is not None:
        unwrap_from_ddp(strategy)
    torch.distributed.destroy_process_group()


@torch.no_grad()
def distributed_accuracy(
    model: nn.Module,
    dataset,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> float:
    """Accuracy of ``model`` on the whole ``dataset``, computed jointly by all ranks.

    Rank ``r`` evaluates samples ``r, r + world_size, ...`` (no padding, unlike
    ``DistributedSampler``), then ``(correct, count)`` are summed over ranks, so every rank gets
    the accuracy a single process gets on the full data set. Uses the unwrapped model (no DDP
    collectives in the forward pass). Not distributed: a plain evaluation.

    :param dataset: an Avalanche dataset (items ``(x, y, task_label, ...)``).
    :param device: where the inputs go; default the device of the model's parameters.
    """
    rank, world = DistributedHelper.rank, DistributedHelper.world_size
    bare = DistributedHelper.unwrap_model(model)
    device = next(bare.parameters()).device if device is None else device
    shard = Subset(dataset, range(rank, len(dataset), world))
    loader = DataLoader(shard, batch_size=batch_size, collate_fn=getattr(dataset, "collate_fn", None))
    was_training = bare.training
    bare.eval()
    counts = torch.zeros(2, dtype=torch.float64)
    try:
        for x, y, t, *_ in loader:
            out = avalanche_forward(bare, x.to(device), t.to(device))
            counts[0] += (out.argmax(dim=1).cpu() == y).sum().item()
            counts[1] += y.numel()
    finally:
        bare.train(was_training)
    correct, count = all_reduce_sum(counts).tolist()
    if count == 0:
        raise ValueError("distributed_accuracy: empty data set")
    return correct / count


def distributed_accuracy_row(model: nn.Module, experiences: Iterable, **kwargs) -> list[float]:
    """:func:`distributed_accuracy` of every experience of a (test) stream, in stream order."""
    return [distributed_accuracy(model, exp.dataset.eval(), **kwargs) for exp in experiences]

