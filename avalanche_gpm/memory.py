"""The Gradient Projection Memory itself: per-layer bases and the gradient projection.

No Avalanche here: :class:`GradientProjectionMemory` is driven by plain PyTorch code (the plugin
in :mod:`avalanche_gpm.plugin` is one such driver).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avalanche_gpm.projection import ProjectionForm, SubspaceProjector, projection_flops
from avalanche_gpm.step_recorder import StepRecord
from avalanche_gpm.subspace import FIRST_TASK_RULES, FirstTaskRule, basis_strengths, grow_basis, scaled_importance


@dataclass(frozen=True)
class LayerMemoryUsage:
    """How much of one layer's input space is protected."""

    basis_size: int
    input_dim: int

    @property
    def fraction(self) -> float:
        return self.basis_size / self.input_dim


def gradient_matrix(layer: nn.Module) -> Tensor:
    """The layer's gradient as an ``(out, input_dim)`` matrix (bias gradient as the last column)."""
    grad = layer.weight.grad.reshape(layer.weight.shape[0], -1)
    if layer.bias is None:
        return grad
    return torch.cat([grad, layer.bias.grad.unsqueeze(1)], dim=1)


def set_gradient_matrix(layer: nn.Module, matrix: Tensor) -> None:
    """Write an ``(out, input_dim)`` matrix back into the layer's ``.grad`` fields."""
    weight_columns = layer.weight[0].numel()
    layer.weight.grad.copy_(matrix[:, :weight_columns].reshape(layer.weight.shape))
    if layer.bias is not None:
        layer.bias.grad.copy_(matrix[:, weight_columns])


def check_memory_options(first_task_rule: str, sgp_alpha: float | None) -> None:
    """Fail early on options :class:`GradientProjectionMemory` cannot use."""
    if first_task_rule not in FIRST_TASK_RULES:
        raise ValueError(f"first_task_rule must be one of {FIRST_TASK_RULES}, got {first_task_rule!r}")
    if sgp_alpha is not None and not sgp_alpha > 0:
        raise ValueError(f"sgp_alpha must be a positive number (the SGP paper uses 10), got {sgp_alpha!r}")


class GradientProjectionMemory:
    """Orthonormal bases of the input spaces of protected layers, grown task by task.

    :param input_dims: input dimension (bias included) of every protected layer, by name.
    :param first_task_rule: ``"paper"`` or ``"official"`` rank rule for the first task, see
        :func:`avalanche_gpm.subspace.first_task_rank`.
    :param projection_form: force one projection form for every layer (default: cheapest).
    :param sgp_alpha: ``None`` for GPM's orthogonal projection; a number for SGP's scaled
        projection (Saha & Roy, AAAI 2023) with that importance coefficient (paper: 10).
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        first_task_rule: FirstTaskRule = "paper",
        projection_form: ProjectionForm | None = None,
        sgp_alpha: float | None = None,
    ):
        check_memory_options(first_task_rule, sgp_alpha)
        self.input_dims = dict(input_dims)
        self.first_task_rule: FirstTaskRule = first_task_rule
        self.projection_form = projection_form
        self.sgp_alpha = sgp_alpha
        self.bases: dict[str, Tensor | None] = {name: None for name in self.input_dims}
        # SGP: importance in [0, 1] of every basis direction (unused by plain GPM)
        self.importances: dict[str, Tensor | None] = {name: None for name in self.input_dims}
        self._projectors: dict[str, SubspaceProjector] = {}
        #: how each layer's gradient was projected in the last step: "gradient" or "inputs"
        self.last_paths: dict[str, str] = {}

    @property
    def layer_names(self) -> list[str]:
        return list(self.input_dims)

    @property
    def is_empty(self) -> bool:
        """True before the first update: nothing is protected yet."""
        return all(basis is None for basis in self.bases.values())

    def update(self, grams: Mapping[str, Tensor], thresholds: Mapping[str, float]) -> None:
        """Grow every layer's basis from the Gram matrix of its inputs on a finished task.

        :param grams: ``R R^T`` of each layer's representation matrix, by layer name.
        :param thresholds: energy threshold of each layer for this task.
        """
        for name in self.layer_names:
            if name not in grams:
                raise ValueError(f"no representation was captured for protected layer {name!r}")
            gram, old_basis = grams[name].double().cpu(), self.bases[name]
            update = grow_basis(old_basis, gram, thresholds[name], self.first_task_rule)
            if self.sgp_alpha is not None:
                self.importances[name] = self._grow_importance(name, old_basis, gram, update.added_energies)
            self.bases[name] = update.basis
        self._projectors.clear()

    def _grow_importance(self, name: str, old_basis: Tensor | None, gram: Tensor, added_energies: Tensor) -> Tensor:
        """SGP: importance of the old directions on the new task, accumulated, then the new ones'."""
        old_strengths = gram.new_zeros(0) if old_basis is None else basis_strengths(old_basis, gram)
        importance = scaled_importance(torch.cat([old_strengths, added_energies.sqrt()]), self.sgp_alpha)
        previous = self.importances[name]
        if previous is not None:
            kept = previous.numel()
            importance[:kept] = (importance[:kept] + previous).clamp(0.0, 1.0)
        return importance

    def usage(self) -> dict[str, LayerMemoryUsage]:
        """Basis size and protected fraction of every layer's input space."""
        return {
            name: LayerMemoryUsage(0 if basis is None else basis.shape[1], self.input_dims[name])
            for name, basis in self.bases.items()
        }

    def _projector(self, name: str, layer: nn.Module) -> SubspaceProjector:
        if name not in self._projectors:
            to_layer = {"device": layer.weight.device, "dtype": layer.weight.dtype}
            scales = self.importances[name]
            self._projectors[name] = SubspaceProjector(
                self.bases[name].to(**to_layer),
                layer.weight.shape[0],
                self.projection_form,
                None if scales is None else scales.to(**to_layer),
            )
        return self._projectors[name]

    @torch.no_grad()
    def project_gradients(self, layers: Mapping[str, nn.Module], steps: Mapping[str, StepRecord] | None = None) -> None:
        """Remove the protected component from the gradient of every layer, in place.

        :param layers: the protected layers by name.
        :param steps: what linear layers saw in this step (see :mod:`avalanche_gpm.step_recorder`);
            where projecting the inputs is cheaper than projecting the gradient, and the gradient is
            exactly ``delta^T X`` (no other loss term touched the weights), the inputs are projected.
        """
        for name, layer in layers.items():
            basis = self.bases[name]
            if basis is None or basis.shape[1] == 0 or layer.weight.grad is None:
                continue
            projector, grad = self._projector(name, layer), gradient_matrix(layer)
            step = (steps or {}).get(name)
            if step is not None and step.complete and self._inputs_are_cheaper(projector, grad.shape, step.rows):
                delta, inputs = torch.cat(step.output_grads), torch.cat(step.inputs)
                if _is_exactly(grad, delta.T @ inputs):
                    set_gradient_matrix(layer, delta.T @ projector(inputs))
                    self.last_paths[name] = "inputs"
                    continue
            set_gradient_matrix(layer, projector(grad))
            self.last_paths[name] = "gradient"

    @staticmethod
    def _inputs_are_cheaper(projector: SubspaceProjector, grad_shape: torch.Size, rows: int) -> bool:
        out_dim, in_dim = grad_shape
        rank = projector.rank
        by_gradient = projection_flops(projector.form, out_dim, in_dim, rank)
        # projecting the rows, plus two products delta^T X (the check and the projected gradient)
        by_inputs = projection_flops(projector.form, rows, in_dim, rank) + 4 * rows * out_dim * in_dim
        return by_inputs < by_gradient

    def state_dict(self) -> dict:
        return {
            "bases": dict(self.bases),
            "importances": dict(self.importances),
            "first_task_rule": self.first_task_rule,
            "sgp_alpha": self.sgp_alpha,
        }

    def load_state_dict(self, state: Mapping) -> None:
        bases = state["bases"]
        if set(bases) != set(self.input_dims):
            raise ValueError(
                f"GPM state holds layers {sorted(bases)} but this memory protects {sorted(self.input_dims)}; "
                "load it into a plugin built for the same model and module selection"
            )
        for name, basis in bases.items():
            if basis is not None and basis.shape[0] != self.input_dims[name]:
                raise ValueError(
                    f"GPM basis of layer {name!r} has dimension {basis.shape[0]}, "
                    f"the layer's input has {self.input_dims[name]}"
                )
        if state["sgp_alpha"] != self.sgp_alpha:
            raise ValueError(
                f"GPM state was saved with sgp_alpha={state['sgp_alpha']} but this memory uses {self.sgp_alpha}"
            )
        self.bases = {name: None if basis is None else basis.clone() for name, basis in bases.items()}
        self.importances = {name: None if imp is None else imp.clone() for name, imp in state["importances"].items()}
        self.first_task_rule = state["first_task_rule"]
        self._projectors.clear()


def _is_exactly(grad: Tensor, direct: Tensor) -> bool:
    """Whether ``grad`` is ``direct`` up to float round-off (and holds no other loss terms)."""
    return bool((grad - direct).abs().max() <= 1e-5 * grad.abs().max() + 1e-12)
