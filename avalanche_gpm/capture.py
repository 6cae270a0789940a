"""Turn what a layer receives into the columns of its representation matrix.

A protected layer is an affine map of its *input vectors*: a :class:`~torch.nn.Linear` sees one
vector per sample (per token for sequence inputs), a :class:`~torch.nn.Conv2d` one im2col patch
per output position, flattened in the ``(C_in, kh, kw)`` order of ``weight.view(C_out, -1)``.
A bias is the weight of a constant input 1, so layers with a bias get a row of ones appended:
protecting ``[W b]`` on ``[x; 1]`` keeps ``W x + b`` unchanged, not only ``W x``.

:class:`GramRecorder` accumulates ``R R^T`` of those vectors with forward pre-hooks, batch by
batch, so the representation matrix itself is never stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PROTECTABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


def input_dim(layer: nn.Module) -> int:
    """Dimension of the input vectors of a protected layer (bias input included)."""
    return layer.weight[0].numel() + (layer.bias is not None)


def _same_padding(layer: nn.Conv2d) -> tuple[int, int, int, int]:
    """``F.pad`` amounts (left, right, top, bottom) that ``padding='same'`` applies."""
    pads: list[int] = []
    for kernel, dilation in zip(reversed(layer.kernel_size), reversed(layer.dilation)):
        total = dilation * (kernel - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)  # type: ignore[return-value]


def conv_patches(layer: nn.Conv2d, inputs: Tensor) -> Tensor:
    """im2col patches of ``inputs`` exactly as ``layer`` sees them.

    :param layer: the convolution (any kernel, stride, padding, padding mode and dilation).
    :param inputs: ``(N, C_in, H, W)`` batch.
    :return: ``(N * L, C_in * kh * kw)`` patches, one row per output position, so that
        ``patches @ layer.weight.view(C_out, -1).T`` is the convolution output (without bias).
    """
    if layer.padding == "same":
        inputs, padding = F.pad(inputs, _same_padding(layer), mode="constant"), 0
    elif layer.padding_mode != "zeros":
        # Non-zero padding modes pad explicitly before a padding-free convolution.
        inputs, padding = F.pad(inputs, layer._reversed_padding_repeated_twice, mode=layer.padding_mode), 0
    else:
        padding = 0 if layer.padding == "valid" else layer.padding
    patches = F.unfold(inputs, layer.kernel_size, dilation=layer.dilation, padding=padding, stride=layer.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def input_vectors(layer: nn.Module, inputs: Tensor) -> Tensor:
    """Rows of the representation of ``layer`` for one batch of its inputs: ``(rows, input_dim)``."""
    if isinstance(layer, nn.Conv2d):
        vectors = conv_patches(layer, inputs)
    else:
        vectors = inputs.reshape(-1, inputs.shape[-1])
    if layer.bias is not None:
        vectors = torch.cat([vectors, vectors.new_ones(vectors.shape[0], 1)], dim=1)
    return vectors


class GramRecorder:
    """Accumulates ``R R^T`` of the inputs of several layers over forward passes.

    Each layer records only its first ``num_samples[name]`` samples (batch rows), so one pass
    over a large enough batch serves layers with different sample budgets, as in the paper.

    :param layers: protected layers by name.
    :param num_samples: samples to record per layer name.
    """

    def __init__(
        self,
        layers: Mapping[str, nn.Module],
        num_samples: Mapping[str, int],
        vectors: Callable[[nn.Module, Tensor], Tensor] = input_vectors,
    ):
        self.layers = dict(layers)
        self.vectors = vectors
        self.num_samples = dict(num_samples)
        self.grams: dict[str, Tensor] = {}
        self.seen: dict[str, int] = {name: 0 for name in self.layers}

    @property
    def done(self) -> bool:
        """Whether every layer has recorded all its samples."""
        return all(self.seen[name] >= self.num_samples[name] for name in self.layers)

    def _record(self, name: str, inputs: Tensor) -> None:
        wanted = self.num_samples[name] - self.seen[name]
        if wanted <= 0:
            return
        inputs = inputs[:wanted].detach()
        self.seen[name] += inputs.shape[0]
        vectors = self.vectors(self.layers[name], inputs).double()
        gram = vectors.T @ vectors
        self.grams[name] = self.grams[name] + gram if name in self.grams else gram

    @contextmanager
    def recording(self) -> Iterator["GramRecorder"]:
        """Context in which forward passes through the layers are recorded."""
        handles = [
            layer.register_forward_pre_hook(lambda _, args, name=name: self._record(name, args[0]))
            for name, layer in self.layers.items()
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
