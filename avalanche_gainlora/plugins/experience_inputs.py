"""Model inputs of the current training experience, for the plugins' extra passes over its data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from avalanche_gainlora.distributed import shard_positions

#: Keyword arguments of a training forward pass (see :class:`~avalanche_gainlora.strategy.LanguageModelStrategy`).
MODEL_INPUT_KEYS: tuple[str, ...] = ("input_ids", "attention_mask", "labels")


def experience_model_inputs(
    strategy: Any, *, batch_size: int, max_samples: int | None = None, shard: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Training inputs of ``strategy.experience`` as model keyword arguments, on the strategy's device.

    :param strategy: an Avalanche strategy whose mini-batches are ``(inputs: dict, ..., task_labels)``.
    :param batch_size: samples per forward pass (1 keeps padding out of token statistics).
    :param max_samples: stop after this many samples (all when ``None``).
    :param shard: yield only this rank's share of those samples, positions ``rank, rank + world_size, ...``
        of them (all of them when not distributed); the ranks' shares make up the samples of one process.
    """
    dataset = strategy.experience.dataset.eval()
    if len(dataset) == 0:
        raise ValueError(f"experience {strategy.experience.current_experience} has no training samples")
    collate_fn = dataset.collate_fn
    if shard:
        dataset = Subset(dataset, shard_positions(min(len(dataset), max_samples or len(dataset))))
        max_samples = None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    seen = 0
    for batch in loader:
        inputs = batch[0]
        yield {key: inputs[key].to(strategy.device) for key in MODEL_INPUT_KEYS if key in inputs}
        seen += len(inputs["input_ids"])
        if max_samples is not None and seen >= max_samples:
            return
