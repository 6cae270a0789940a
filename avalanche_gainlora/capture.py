"""Gram matrices of what the adapted layers receive, token by token."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from avalanche_gpm.capture import GramRecorder


def _token_rows(_layer: nn.Module, inputs: Tensor) -> Tensor:
    # A LoRA branch sees the layer input itself; the base layer's bias is not part of it.
    return inputs.reshape(-1, inputs.shape[-1])


def layer_input_grams(
    model: nn.Module, layers: Mapping[str, nn.Module], inputs: Iterable[dict[str, Any]]
) -> dict[str, Tensor]:
    """``R R^T`` of every layer's input tokens over some forward passes (float64, by layer name).

    :param model: the model to run.
    :param layers: the layers whose inputs are recorded.
    :param inputs: keyword arguments of each forward pass. Every token of every pass is recorded,
        so pass unpadded samples (batches of one) to keep padding out of the statistics.
    """
    recorder = GramRecorder(layers, dict.fromkeys(layers, sys.maxsize), vectors=_token_rows)
    with torch.no_grad(), recorder.recording():
        for kwargs in inputs:
            model(**kwargs)
    missing = sorted(set(layers) - set(recorder.grams))
    if missing:
        raise ValueError(f"no input reached layers {missing[:3]}... (empty experience?)")
    return recorder.grams
