"""The Gradient Projection Memory itself: per-layer bases and the gradient projection.

No Avalanche here: :class:`GradientProjectionMemory` is driven by plain PyTorch code (the plugin
in :mod:`avalanche_gpm.plugin` is one such driver).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avalanche_gpm.projection import (
    ProjectionForm,
    SubspaceProjector,
    available_forms,
    cheapest_form,
    projection_flops,
)
from avalanche_gpm.step_recorder import StepRecord
from avalanche_gpm.subspace import (
    FIRST_TASK_RULES,
    DecompositionError,
    EnergyRule,
    FirstTaskRule,
    basis_strengths,
    check_energy_rule,
    grow_basis,
    scaled_importance,
)


@dataclass(frozen=True)
class LayerMemoryUsage:
    """How much of one layer's input space is protected."""

    basis_size: int
    input_dim: int

    @property
    def fraction(self) -> float:
        return self.basis_size / self.input_dim


def projection_dtype(layer: nn.Module) -> torch.dtype:
    """The precision a layer's gradient is projected in: at least float32, since in bfloat16 or
    float16 ``I - M M^T`` is no projection and leaks the protected component at every step."""
    return torch.promote_types(layer.weight.dtype, torch.float32)


def gradient_matrix(layer: nn.Module) -> Tensor:
    """The layer's gradient as an ``(out, input_dim)`` matrix (bias gradient as the last column).

    A parameter without a gradient (a loss term that touched only the weight) counts as zeros.
    """
    return _gradient_matrix(layer.weight, layer.bias)


# The two below take the parameters, not the layer: they run for every protected layer at every
# step, where each module attribute lookup costs about a microsecond.
def _gradient_matrix(weight: nn.Parameter, bias: nn.Parameter | None) -> Tensor:
    grad = torch.zeros_like(weight) if weight.grad is None else weight.grad
    grad = grad.reshape(weight.shape[0], -1)
    if bias is None:
        return grad
    bias_grad = torch.zeros_like(bias) if bias.grad is None else bias.grad
    return torch.cat([grad, bias_grad.unsqueeze(1)], dim=1)


def _set_gradient_matrix(weight: nn.Parameter, bias: nn.Parameter | None, matrix: Tensor) -> None:
    """Write an ``(out, input_dim)`` matrix into the parameters' ``.grad`` fields (created if missing)."""
    if bias is None:
        parts = ((weight, matrix.reshape(weight.shape)),)
    else:
        parts = ((weight, matrix[:, :-1].reshape(weight.shape)), (bias, matrix[:, -1]))
    for param, grad in parts:
        if param.grad is None:
            param.grad = _in_dtype(grad, param.dtype).contiguous()
        else:
            param.grad.copy_(grad)


def _in_dtype(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    # Comparing first skips a dispatch per call in the common case (already in that dtype).
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


#: The fixed cost of taking a linear layer's call over on the input side, in floating-point
#: operations: measured on one CPU thread, the replaced forward and its Python autograd function
#: take about 40 us, the time of some 2 MFLOP of matrix products there. On the PMNIST MLP at batch 10
#: this keeps fc2 (100 x 100) on the gradient path, where projecting saves under 2 MFLOP.
TAKEOVER_COST_FLOPS = 2e6


def check_memory_options(
    first_task_rule: str, sgp_alpha: float | None, energy: str = "gram", projection_form: str | None = None
) -> None:
    """Fail early on options :class:`GradientProjectionMemory` cannot use."""
    forms = available_forms(sgp_alpha is not None)
    if projection_form is not None and projection_form not in forms:
        method = "SGP" if sgp_alpha is not None else "GPM"
        raise ValueError(
            f"{method}'s projection_form must be None (the cheapest per layer) or one of {forms}, got {projection_form!r}"
        )
    if first_task_rule not in FIRST_TASK_RULES:
        raise ValueError(f"first_task_rule must be one of {FIRST_TASK_RULES}, got {first_task_rule!r}")
    check_energy_rule(energy)
    if sgp_alpha is not None and not sgp_alpha > 0:
        raise ValueError(f"sgp_alpha must be a positive number (the SGP paper uses 10), got {sgp_alpha!r}")
    if sgp_alpha is not None and energy != "gram":
        raise ValueError("SGP's importances are defined on GPM's energies: use energy='gram' with sgp_alpha")


class GradientProjectionMemory:
    """Orthonormal bases of the input spaces of protected layers, grown task by task.

    :param input_dims: input dimension (bias included) of every protected layer, by name.
    :param first_task_rule: ``"paper"`` or ``"official"`` rank rule for the first task, see
        :func:`avalanche_gpm.subspace.first_task_rank`.
    :param projection_form: force one projection form for every layer (default: cheapest).
    :param sgp_alpha: ``None`` for GPM's orthogonal projection; a number for SGP's scaled
        projection (Saha & Roy, AAAI 2023) with that importance coefficient (paper: 10).
    :param energy: ``"gram"`` (GPM's energies, the default) or ``"covariance"`` (the squared
        eigenvalues the InfLoRA / GainLoRA code uses), see :mod:`avalanche_gpm.subspace`.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        first_task_rule: FirstTaskRule = "paper",
        projection_form: ProjectionForm | None = None,
        sgp_alpha: float | None = None,
        energy: EnergyRule = "gram",
    ):
        check_memory_options(first_task_rule, sgp_alpha, energy, projection_form)
        self.energy: EnergyRule = energy
        self.input_dims = dict(input_dims)
        self.first_task_rule: FirstTaskRule = first_task_rule
        self.projection_form = projection_form
        self.sgp_alpha = sgp_alpha
        self.bases: dict[str, Tensor | None] = {name: None for name in self.input_dims}
        # SGP: importance in [0, 1] of every basis direction (unused by plain GPM)
        self.importances: dict[str, Tensor | None] = {name: None for name in self.input_dims}
        self._projectors: dict[str, SubspaceProjector] = {}
        # takeover decisions by (layer, rows, out_dim, fixed cost), with the basis they were made for
        self._takeovers: dict[tuple, tuple[Tensor, bool]] = {}
        #: how each layer's gradient was projected in the last step: "gradient" or "inputs"
        self.last_paths: dict[str, str] = {}

    @property
    def layer_names(self) -> list[str]:
        return list(self.input_dims)

    def update(self, grams: Mapping[str, Tensor], thresholds: Mapping[str, float]) -> None:
        """Grow every layer's basis from the Gram matrix of its inputs on a finished task.

        All or nothing: the bases change only once every layer's update succeeded, so a failure
        leaves the memory as it was before the task.

        :param grams: ``R R^T`` of each layer's representation matrix, by layer name.
        :param thresholds: energy threshold of each layer for this task.
        :raises ValueError: for a layer without a Gram matrix, or whose inputs were NaN or infinite
            (named), or whose decomposition failed.
        """
        bases, importances = dict(self.bases), dict(self.importances)
        for name in self.layer_names:
            if name not in grams:
                raise ValueError(f"no representation was captured for protected layer {name!r}")
            gram, old_basis = grams[name].double().cpu(), self.bases[name]
            try:
                update = grow_basis(old_basis, gram, thresholds[name], self.first_task_rule, self.energy)
            except DecompositionError as error:
                raise ValueError(
                    f"cannot grow the basis of layer {name!r}: {error}; the memory is unchanged. Check the "
                    "inputs this layer receives (NaN/inf usually come from a diverged model or unnormalised data)"
                ) from error
            if self.sgp_alpha is not None:
                importances[name] = self._grow_importance(name, old_basis, gram, update.added_energies)
            bases[name] = update.basis
        self.bases, self.importances = bases, importances
        self._projectors.clear()
        self._takeovers.clear()

    def _grow_importance(self, name: str, old_basis: Tensor | None, gram: Tensor, added_energies: Tensor) -> Tensor:
        """SGP: importance of the old directions on the new task, accumulated, then the new ones'."""
        old_strengths = gram.new_zeros(0) if old_basis is None else basis_strengths(old_basis, gram)
        importance = scaled_importance(torch.cat([old_strengths, added_energies.sqrt()]), self.sgp_alpha)
        previous = self.importances[name]
        if previous is not None:
            kept = previous.numel()
            importance[:kept] = (importance[:kept] + previous).clamp(0.0, 1.0)
        return importance

    def basis_sizes(self) -> dict[str, int]:
        """Number of stored directions of every layer."""
        return {name: usage.basis_size for name, usage in self.usage().items()}

    def usage(self) -> dict[str, LayerMemoryUsage]:
        """Basis size and protected fraction of every layer's input space."""
        return {
            name: LayerMemoryUsage(0 if basis is None else basis.shape[1], self.input_dims[name])
            for name, basis in self.bases.items()
        }

    def _projector(self, name: str, layer: nn.Module) -> SubspaceProjector:
        if name not in self._projectors:
            to_layer = {"device": layer.weight.device, "dtype": projection_dtype(layer)}
            scales = self.importances[name]
            self._projectors[name] = SubspaceProjector(
                self.bases[name].to(**to_layer),
                layer.weight.shape[0],
                self.projection_form,
                None if scales is None else scales.to(**to_layer),
            )
        return self._projectors[name]

    def projects_inputs(self, name: str, rows: int, out_dim: int) -> bool:
        """Whether a call of layer ``name`` on ``rows`` input rows is cheaper projected on the input side.

        Every projection form costs in proportion to the number of rows it projects, so projecting
        the call's ``rows`` inputs instead of the ``out_dim``-row gradient saves
        ``(out_dim - rows) / out_dim`` of the gradient's projection. Taking a call over has a fixed
        cost of its own (a Python forward and autograd function per call), so small savings are not
        worth it: see :data:`TAKEOVER_COST_FLOPS`.
        """
        basis = self.bases[name]
        # Asked at every call of every linear layer: decided once per basis and step shape.
        key = (name, rows, out_dim, TAKEOVER_COST_FLOPS)
        known = self._takeovers.get(key)
        if known is not None and known[0] is basis:
            return known[1]
        decision = self._saves_enough(name, rows, out_dim)
        self._takeovers[key] = (basis, decision)
        return decision

    def _saves_enough(self, name: str, rows: int, out_dim: int) -> bool:
        basis = self.bases[name]
        if basis is None or basis.shape[1] == 0 or rows >= out_dim:
            return False
        in_dim, rank = basis.shape
        # Priced with the form the layer's projector will use for the gradient.
        scaled = self.importances[name] is not None
        form = self.projection_form or cheapest_form(out_dim, in_dim, rank, available_forms(scaled))
        per_row = projection_flops(form, 1, in_dim, rank)
        return (out_dim - rows) * per_row > TAKEOVER_COST_FLOPS

    @torch.no_grad()
    def project_gradients(self, layers: Mapping[str, nn.Module], steps: Mapping[str, StepRecord] | None = None) -> None:
        """Remove the protected component from the gradient of every layer, in place.

        :param layers: the protected layers by name.
        :param steps: the calls of linear layers whose weight gradients a
            :class:`~avalanche_gpm.step_recorder.StepRecorder` took over in this step; their part of
            the gradient is ``delta^T (X P)``, computed here from the projected inputs, and what
            autograd left in ``.grad`` (other calls, other loss terms) is projected as a gradient.
        """
        for name, layer in layers.items():
            basis = self.bases[name]
            if basis is None or basis.shape[1] == 0:
                continue
            projector = self._projector(name, layer)
            dtype = projector.dtype
            weight, bias = layer.weight, layer.bias
            left_by_autograd = weight.grad is not None or (bias is not None and bias.grad is not None)
            projected = projector(_in_dtype(_gradient_matrix(weight, bias), dtype)) if left_by_autograd else None
            taken = steps.get(name) if steps else None
            pairs = None if taken is None else taken.pairs()
            if pairs is not None:
                delta, inputs = pairs
                own = _in_dtype(delta, dtype).T @ projector(_in_dtype(inputs, dtype))
                projected = own if projected is None else projected.add_(own)
            if projected is not None:
                _set_gradient_matrix(weight, bias, projected)
                self.last_paths[name] = "gradient" if pairs is None else "inputs"

    def state_dict(self) -> dict:
        return {
            "bases": dict(self.bases),
            "importances": dict(self.importances),
            "first_task_rule": self.first_task_rule,
            "sgp_alpha": self.sgp_alpha,
            "energy": self.energy,
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
        energy = state.get("energy", "gram")  # states saved before the energy rule existed used GPM's
        if energy != self.energy:
            raise ValueError(
                f"the saved bases were grown with the {energy!r} energy rule but this memory uses {self.energy!r}; "
                "build the plugin with the rule the state was saved with"
            )
        self.bases = {name: None if basis is None else basis.clone() for name, basis in bases.items()}
        self.importances = {name: None if imp is None else imp.clone() for name, imp in state["importances"].items()}
        self.first_task_rule = state["first_task_rule"]
        self._projectors.clear()
        self._takeovers.clear()
