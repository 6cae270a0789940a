"""Running :class:`~avalanche_gainlora.strategy.LanguageModelStrategy` with the LoRA plugins under torch DDP.

The LoRA plugins (SeqLoRA, O-LoRA, InfLoRA, GainLoRA) are distributed-safe: every subspace basis,
every designed InfLoRA down-projection ``A_t`` and every GainLoRA gate key is the same on all
ranks. Their statistics passes run on the *unwrapped* model over a shard of the experience
(rank ``r`` takes samples ``r, r + world_size, ...``); the float64 Gram matrices are summed over
ranks, rank 0 designs ``A_t`` / the key or grows the bases, and broadcasts the result (the
memories' ``state_dict``), as :class:`~avalanche_gpm.plugin.GPMPlugin` does.

What a script has to add (Avalanche 0.6.0 never wraps the model in DDP):

* :class:`DistributedLoRAPlugin`, placed **after** the method plugin. The branch and gate of a
  task are created in ``before_training_exp``, so the model is re-wrapped at every task change: a
  DDP wrapper built before a new branch existed does not synchronise it (first step silently
  unsynchronised, then "Expected to have finished reduction"). The plugin wraps the bare model in
  ``before_training_exp`` (DDP broadcasts rank 0's parameters then) and unwraps it in
  ``after_training_exp``, so evaluation, generation and checkpoints see the bare model. It does
  not remake the optimizer: the method plugin already did on the bare model, and DDP shares the
  parameters (remaking it on the wrapper would register every parameter a second time under its
  ``module.``-prefixed name).
* Experiences with task labels (``instruction_benchmark`` gives them): only then does Avalanche
  shard the training data with a ``DistributedSampler``; the plugin raises otherwise.
* ``eval_every=-1`` (the default): periodic evaluation inside training would run on the DDP
  wrapper (which has no ``generate`` and broadcasts buffers at every forward); the plugin raises.

Launch one process per device (``torchrun --nproc_per_node=2 train.py``; note that
``accelerate launch --cpu --num_processes 2`` starts a single process)::

    from avalanche_gainlora.distributed import DistributedLoRAPlugin, setup_distributed, shutdown_distributed

    world_size = setup_distributed(seed=0, cpu=True)  # process group (gloo on CPU), same seed everywhere
    model = ...; branches = LoraBranches(model, rank=8)
    strategy = LanguageModelStrategy(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), tokenizer=tokenizer,
        train_mb_size=global_batch // world_size,
        plugins=[GainLoRAPlugin(InfLoRAPlugin(branches)), DistributedLoRAPlugin()],
    )
    for experience in benchmark.train_stream:
        strategy.train(experience)
        strategy.eval(benchmark.test_stream)  # sharded; each rank's metrics cover its shard only
    shutdown_distributed(strategy)  # barrier, unwrap, destroy the process group (no crash at exit)

Scaling further:

* **FSDP2** (``fully_shard``) is the way to larger models only where the projections still hold.
  Gradients and parameters become DTensors sharded on dim 0 (output rows). Projections in *input*
  space act on each row alone, so InfLoRA (frozen ``A_t``) and the GainLoRA gate matrices
  (``dG (I - M M^T)``) work on the local rows. GainLoRA, however, projects the gate *update*
  after the optimizer step (``after_update`` edits parameters, not gradients): the snapshot and
  the ``copy_`` must act on DTensors, and the key, a vector sharded on its only dimension, is
  projected with ``(I - M M^T) dk``, which mixes all coordinates: it needs the full key (gather,
  project, redistribute). peft also documents FSDP caveats (``use_orig_params``, auto-wrap policy,
  no adapter merging). Not implemented here.
* **DeepSpeed** (ZeRO through accelerate) is unsupported: ``p.grad`` is ``None`` (gradients live in
  the engine's partitioned buffers) and ``engine.step()`` follows backward immediately, so there
  is no place to project gradients or updates.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from avalanche.training.plugins import SupervisedPlugin
from torch import nn

from avalanche_gpm.distributed import (
    DistributedHelper,
    check_train_sharding,
    main_process_result,
    shutdown_distributed,
    sum_grams_over_ranks,
    unwrap_from_ddp,
    update_on_main_process,
)

__all__ = [
    "DistributedHelper",
    "DistributedLoRAPlugin",
    "broadcast_module_",
    "main_process_result",
    "setup_distributed",
    "shard_positions",
    "shutdown_distributed",
    "sum_grams_over_ranks",
    "unwrap_from_ddp",
    "update_on_main_process",
]

def setup_distributed(seed: int = 0, *, cpu: bool = False) -> int:
    """Join the process group of a ``torchrun`` launch and seed every rank alike; returns the world size.

    Uses accelerate's ``PartialState`` (gloo with ``cpu=True``, NCCL on GPUs) when the launcher's
    environment names a world size above 1 and no group exists yet; a group created by the
    launcher (``accelerate.debug_launcher``) or by ``DistributedHelper.init_distributed`` is kept.
    Without a launcher it only seeds, and returns 1.
    """
    if not torch.distributed.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState(cpu=cpu)
    if torch.distributed.is_initialized() and not cpu:
        # Avalanche's helper picks the device of its collectives and of DDP from `use_cuda`, which
        # only its own init_distributed sets: left False, NCCL would be handed CPU tensors.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        DistributedHelper.use_cuda = True
    DistributedHelper.set_random_seeds(seed)
    return DistributedHelper.world_size


def shard_positions(num_items: int) -> range:
    """Positions of a data set of ``num_items`` this rank handles: ``rank, rank + world_size, ...``."""
    return range(DistributedHelper.rank, num_items, DistributedHelper.world_size)


def broadcast_module_(module: nn.Module) -> nn.Module:
    """Give ``module`` rank 0's parameters and buffers, in place (no-op when not distributed)."""
    if DistributedHelper.is_distributed:
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.copy_(DistributedHelper.broadcast(tensor.detach().clone()))
    return module


class DistributedLoRAPlugin(SupervisedPlugin, supports_distributed=True):
    """Wraps the model in DDP for each training experience, after the method plugin changed it.

    Put it after the method plugin (e.g. ``GainLoRAPlugin(InfLoRAPlugin(branches))``). No-op when
    not distributed, so the same script runs in one process.
    """

    def before_training_exp(self, strategy: Any, *args, **kwargs) -> None:
        if not DistributedHelper.is_distributed:
            return
        check_train_sharding(strategy.experience)
        if getattr(strategy, "eval_every", -1) > 0:
            raise ValueError(
                "eval_every > 0 evaluates inside training, on the DDP wrapper (no `generate`, collective "
                "forward passes on unevenly sharded data): use eval_every=-1 and evaluate between experiences"
            )
        # A wrapper built before this experience's branch and gate existed would not sync them.
        strategy.model = DistributedHelper.wrap_model(DistributedHelper.unwrap_model(strategy.model))

    def after_training_exp(self, strategy: Any, *args, **kwargs) -> None:
        if DistributedHelper.is_distributed:
            unwrap_from_ddp(strategy)
