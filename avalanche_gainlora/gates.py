"""GainLoRA's gating modules: one per task, mapping an input's pooled token embedding to a weight in [0, 1].

Gate of task ``i`` on a pooled input embedding ``p0`` (Liang & Li 2025)::

    p1 = silu(G1 p0),  p2 = silu(G2 p1),  a_i = f(4 cos(p2, k_i)),  f(b) = |2 sigmoid(b) - 1|

so ``a_i = 0`` exactly when ``p2`` is orthogonal to the key ``k_i``.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avalanche_gainlora.parameter_cache import ParameterCache

#: Sharpness of the gate: the cosine is multiplied by 4 before ``f``.
COSINE_SCALE = 4.0


def key_norm(dim: int) -> float:
    """The official key's norm: that of a ``uniform(-1, 1)`` vector of size ``dim``, ``sqrt(dim / 3)``."""
    return (dim / 3) ** 0.5


def gate_activation(logit: Tensor) -> Tensor:
    """``f(b) = |2 sigmoid(b) - 1|``: 0 at ``b = 0``, towards 1 for large ``|b|``."""
    return (2 * torch.sigmoid(logit) - 1).abs()


def masked_mean(embeddings: Tensor, mask: Tensor) -> Tensor:
    """Mean over the tokens where ``mask`` is 1 (``(B, L, d)``, ``(B, L)`` -> ``(B, d)``).

    The official code divides by the padded length, which makes a gate depend on how much padding
    its batch happens to have; dividing by the number of real tokens does not.
    """
    mask = mask.to(embeddings.dtype).unsqueeze(-1)
    return (embeddings * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class GateActivations(NamedTuple):
    """Inputs of the three gating layers and the gate value, for one batch."""

    pooled: Tensor  # p0, input of G1
    hidden: Tensor  # p1, input of G2
    projected: Tensor  # p2, compared with the key
    value: Tensor  # a, one per sample


class TaskGate(nn.Module):
    """The gating module of one task.

    :param dim: size of the token embeddings.
    :param hidden: width of the gate's MLP (100 for T5 in the paper, 50 for LLaMA).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.down = nn.Linear(dim, hidden, bias=False)  # G1
        self.up = nn.Linear(hidden, dim, bias=False)  # G2
        # uniform(-1, 1): later keys are rescaled to its expected norm, key_norm(dim), as in the official code
        self.key = nn.Parameter(torch.empty(dim).uniform_(-1.0, 1.0))

    def activations(self, pooled: Tensor) -> GateActivations:
        hidden = F.silu(self.down(pooled))
        projected = F.silu(self.up(hidden))
        cosine = F.cosine_similarity(projected, self.key.expand_as(projected), dim=-1)
        return GateActivations(pooled, hidden, projected, gate_activation(COSINE_SCALE * cosine))

    def forward(self, pooled: Tensor) -> Tensor:
        """Gate value per sample, ``(B, d)`` -> ``(B,)``."""
        return self.activations(pooled).value

    def successor(self, key: Tensor) -> "TaskGate":
        """The next task's gate: a copy of this MLP with a new key."""
        gate = copy.deepcopy(self)
        with torch.no_grad():
            gate.key.copy_(key)
        return gate


class GateBank(nn.Module):
    """The gates of all tasks so far; ``forward`` gives every branch's weight per sample.

    :param dim: size of the token embeddings.
    :param hidden: width of each gate's MLP.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dim = dim
        self.hidden = hidden
        self.gates = nn.ModuleList()
        # Frozen gates run as one batched MLP over their stacked weights, stacked once while they do not change.
        self._stacks = (ParameterCache(), ParameterCache(), ParameterCache())

    def __len__(self) -> int:
        return len(self.gates)

    @property
    def current(self) -> TaskGate:
        return self.gates[-1]

    def add(self, gate: TaskGate) -> None:
        """Append a task's gate and freeze all earlier ones."""
        for old in self.gates:
            old.requires_grad_(False)
        self.gates.append(gate.requires_grad_(True))

    def forward(self, pooled: Tensor) -> Tensor:
        """``(B, d)`` pooled embeddings -> ``(B, tasks)`` gate values."""
        gates = list(self.gates)
        trains = torch.is_grad_enabled() and any(p.requires_grad for p in gates[-1].parameters())
        batched = gates[:-1] if trains else gates
        values = [self._batched_values(batched, pooled)] if batched else []
        if trains:  # the gate being trained runs on its own, so that its graph does not hold the others
            values.append(gates[-1](pooled).unsqueeze(1))
        return torch.cat(values, dim=1)

    def _batched_values(self, gates: list[TaskGate], pooled: Tensor) -> Tensor:
        """The values of several gates at once: ``(B, d)`` -> ``(B, len(gates))``."""
        parts = ([g.down.weight for g in gates], [g.up.weight for g in gates], [g.key for g in gates])
        down, up, keys = (cache.get(part, lambda part=part: torch.stack(part)) for cache, part in zip(self._stacks, parts))
        hidden = F.silu(torch.einsum("bd,nhd->bnh", pooled, down))
        projected = F.silu(torch.einsum("bnh,ndh->bnd", hidden, up))
        cosine = F.cosine_similarity(projected, keys.unsqueeze(0).expand_as(projected), dim=-1)
        return gate_activation(COSINE_SCALE * cosine)
