"""GainLoRA's constraints on the gates, as GPM-style memories of the gating layers' inputs.

After each task the inputs of the current gate's three layers on that task (``p0`` for ``G1``,
``p1`` for ``G2``, ``p2`` for the key) extend orthonormal bases. For the next task:

* the new gate copies the previous MLP and its key is the strongest direction of the new task's
  ``p2`` outside the old ``p2`` subspace (the official rule), so ``cos(p2(x_old), k) ~ 0`` and the
  new branch starts switched off for old inputs; the key is rescaled to the official norm
  :func:`~avalanche_gainlora.gates.key_norm` (the cosine ignores it, but it sets how far an
  optimizer step turns the key);
* every change of the new gate's parameters is projected off the old subspaces
  (``dG <- dG (I - M M^T)``, ``dk <- (I - M M^T) dk``), so old inputs keep ``p1``, ``p2`` and a
  zero cosine with the key whatever the optimizer does.

The official code also rescales the gate's rows to their previous norm after the projection; we
do not, because rescaling would change the activations on old inputs that the projection keeps.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from avalanche_gpm.projection import SubspaceProjector
from avalanche_gpm.settings import ThresholdSpec, check_threshold_spec, resolve_thresholds
from avalanche_gpm.subspace import top_residual_directions
from avalanche_gainlora.bases import BasisRule, input_memory
from avalanche_gainlora.gates import TaskGate, key_norm

#: The gate's layers, named after the input each of them sees: G1 (p0), G2 (p1), key (p2).
GATE_LAYERS: tuple[str, ...] = ("down", "up", "key")


def gate_grams(gate: TaskGate, pooled_batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """Gram matrices ``R R^T`` of the inputs of the gate's three layers over some pooled embeddings."""
    grams: dict[str, Tensor] = {}
    with torch.no_grad():
        for pooled in pooled_batches:
            acts = gate.activations(pooled.to(gate.key))
            for layer, inputs in zip(GATE_LAYERS, (acts.pooled, acts.hidden, acts.projected)):
                inputs = inputs.double()
                grams[layer] = grams[layer] + inputs.T @ inputs if layer in grams else inputs.T @ inputs
    if not grams:
        raise ValueError("no inputs to record the gate's representation from (empty experience?)")
    return grams


def _parameter(gate: TaskGate, layer: str) -> Tensor:
    """The parameter of ``layer`` as an ``(out, in)`` matrix whose input space the basis lives in."""
    if layer == "key":
        return gate.key.view(1, -1)
    return getattr(gate, layer).weight


class GateMemory:
    """Bases of old tasks' gate inputs and the constraints they put on a new gate.

    :param dim: size of the token embeddings (input of ``G1``, output of ``G2``).
    :param hidden: width of the gate's MLP.
    :param threshold: energy threshold of the bases: a float, a mapping over ``GATE_LAYERS``, or a
        callable ``task -> threshold`` such as :func:`~avalanche_gainlora.bases.official_threshold`.
    :param rule: energy rule of the bases, ``"official"`` (the GainLoRA code) or ``"gpm"``
        (see :mod:`avalanche_gainlora.bases`).
    """

    def __init__(self, dim: int, hidden: int, threshold: ThresholdSpec = 0.995, rule: BasisRule = "official"):
        check_threshold_spec(threshold)
        self.threshold = threshold
        self.memory = input_memory({"down": dim, "up": hidden, "key": dim}, rule)
        # The bases live on the CPU; the projectors on the gates' device, rebuilt when it changes.
        self._projectors: dict[str, SubspaceProjector] = {}
        self._device = torch.device("cpu")

    @property
    def bases(self) -> dict[str, Tensor | None]:
        return self.memory.bases

    def update(self, grams: dict[str, Tensor], task: int) -> None:
        """Grow every basis with one task's gate-input Gram matrices.

        :param grams: output of :func:`gate_grams` for the gate that was just trained.
        :param task: index (from 0) of that task.
        """
        self.memory.update(grams, resolve_thresholds(self.threshold, task, list(GATE_LAYERS)))
        self._build_projectors()

    def new_key(self, grams: dict[str, Tensor]) -> Tensor:
        """The key of a new gate: the top direction of the new task's ``p2`` outside the stored ``p2`` subspace.

        :param grams: :func:`gate_grams` of the new task's inputs through the gate the new one copies.
        """
        direction = top_residual_directions(grams["key"], self.bases["key"], 1)[:, 0]
        return direction * key_norm(direction.numel())

    def snapshot(self, gate: TaskGate) -> dict[str, Tensor]:
        """Copies of the gate's constrained parameters, taken before an optimizer step."""
        return {layer: _parameter(gate, layer).detach().clone() for layer in self._projectors}

    def project_update(self, gate: TaskGate, before: dict[str, Tensor]) -> None:
        """Replace each parameter change since ``before`` by its projection off the old subspace."""
        if gate.key.device != self._device:
            self._build_projectors(gate.key.device)
        with torch.no_grad():
            for layer, projector in self._projectors.items():
                param = _parameter(gate, layer)
                change = (param - before[layer]).double()
                param.copy_(before[layer] + projector(change).to(param.dtype))

    def state_dict(self) -> dict:
        return self.memory.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state)
        self._build_projectors()

    def _build_projectors(self, device: torch.device | None = None) -> None:
        self._device = self._device if device is None else device
        self._projectors = {
            layer: SubspaceProjector(basis.to(self._device), out_dim=1)
            for layer, basis in self.bases.items()
            if basis is not None and basis.shape[1] > 0
        }
