"""One LoRA branch per task, injected with peft, summed with per-sample weights.

For every adapted linear map the output is ``W0 x + sum_i w_i(x) * B_i A_i x * (alpha / r)``.
peft creates and stores the branches (``lora_A`` / ``lora_B`` modules keyed by adapter name);
:class:`GatedLoraLinear` replaces only peft's forward so that each branch is scaled by a weight
per sample, which GainLoRA's gates provide. Without gates every weight is 1 (the plain sum of
O-LoRA, InfLoRA and SeqLoRA).

Branches are addressed by index. Their adapter names are only dictionary keys, never matched by
substring, so branch 1 can never be confused with branch 10.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import Linear as PeftLoraLinear
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from avalanche_gainlora.parameter_cache import ParameterCache

#: Layer types that can carry gated branches (GPT-2 family models use transformers' ``Conv1D``).
ADAPTABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)


def branch_name(index: int) -> str:
    """peft adapter name of branch ``index`` (a dictionary key only)."""
    return f"branch_{index:03d}"


class BranchWeights:
    """Per-sample weights of the branches, shared by every adapted layer of one model.

    ``values`` is ``None`` (every branch weighs 1) or a ``(batch, k)`` tensor set before the model's
    forward pass, e.g. by :class:`~avalanche_gainlora.routing.GateRouter`; branches beyond the
    first ``k`` weigh 0.
    """

    def __init__(self) -> None:
        self.values: Tensor | None = None


def _side_by_side(frozen_cache: ParameterCache, weights: list[Tensor], dim: int) -> Tensor:
    """``torch.cat(weights, dim)`` where the leading weights that need no gradient are put side by
    side once and kept in ``frozen_cache``.

    In training only the newest branch changes: concatenating every branch at every step would
    copy the frozen ones again and, in the backward pass, split the gradient into one slice per
    branch; here the step concatenates two pieces, whatever the number of branches.
    """
    needs_grad = torch.is_grad_enabled()
    split = next((i for i, w in enumerate(weights) if needs_grad and w.requires_grad), len(weights))
    frozen = [frozen_cache.get(weights[:split], lambda: torch.cat(weights[:split], dim))] if split else []
    pieces = frozen + list(weights[split:])
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim)


def _forget_branches(layer: GatedLoraLinear, _incompatible_keys: Any) -> None:
    """After ``load_state_dict`` (``assign=True`` replaces parameters): look the branches up again."""
    layer._branches_key = None


class GatedLoraLinear(PeftLoraLinear):
    """peft's LoRA linear layer whose branches are added with per-sample weights.

    All branches run as two matrix products over the concatenated ``A`` and ``B`` matrices, so
    the cost grows with the total rank, not with a Python loop over branches. The concatenation
    of the frozen branches is kept while they do not change, so neither a decoding step nor a
    training step of the newest branch copies every branch again. Dropout is the one of the
    newest branch, applied once to the input shared by all branches.
    """

    branch_names: Sequence[str] = ()
    branch_weights: BranchWeights | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._branches_key: tuple[int, int] | None = None
        self._branches: tuple[list[str], list[Tensor], list[Tensor]] = ([], [], [])
        self._down = ParameterCache()
        self._up = ParameterCache()
        self._ranks = ParameterCache()
        self._scalings = ParameterCache()
        self._scales = ParameterCache()
        self.register_load_state_dict_post_hook(_forget_branches)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        result = self.base_layer(x, *args, **kwargs)
        names, downs, ups = self._active_branches()
        if self.disable_adapters or not names:
            return result
        if self.merged:
            raise RuntimeError(
                "gated LoRA branches cannot be merged into the base weights (their weights depend on the "
                "input); call unmerge_adapter() first"
            )
        down = _side_by_side(self._down, downs, dim=0)
        up = _side_by_side(self._up, ups, dim=1)
        hidden = self.lora_dropout[names[-1]](x.to(down.dtype)) @ down.T
        hidden = hidden * self._hidden_scales(names, hidden)
        return (result + hidden @ up.T).to(result.dtype)

    def _active_branches(self) -> tuple[list[str], list[Tensor], list[Tensor]]:
        """Names and ``A`` / ``B`` weights of the branches this layer carries, in branch order."""
        key = (len(self.branch_names), len(self.lora_A))  # both only grow, one branch at a time
        if key != self._branches_key:
            names = [name for name in self.branch_names if name in self.lora_A]
            self._branches = (
                names,
                [self.lora_A[name].weight for name in names],
                [self.lora_B[name].weight for name in names],
            )
            self._branches_key = key
        return self._branches

    def _rank_scaling(self, names: list[str], hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Each branch's rank and ``alpha / r``, as tensors on ``hidden``'s device."""
        # Built from configuration, not parameters: the context alone says when to rebuild.
        context = (len(names), hidden.device, hidden.dtype)
        ranks = self._ranks.get(
            [], lambda: torch.tensor([self.r[name] for name in names], device=hidden.device), context
        )
        scaling = self._scalings.get(
            [],
            lambda: torch.tensor([self.scaling[name] for name in names], dtype=hidden.dtype, device=hidden.device),
            context,
        )
        return ranks, scaling

    def _hidden_scales(self, names: list[str], hidden: Tensor) -> Tensor:
        """``alpha / r`` of each branch times its per-sample weight, repeated over the branch's rank.

        Kept while the weights stay the same tensor: every decoding step of one ``generate`` call.
        """
        weights = None if self.branch_weights is None else self.branch_weights.values
        context = (len(names), hidden.shape[0], hidden.dim(), hidden.dtype, hidden.device)
        return self._scales.get(
            [] if weights is None else [weights], lambda: self._build_scales(names, hidden, weights), context
        )

    def _build_scales(self, names: list[str], hidden: Tensor, weights: Tensor | None) -> Tensor:
        ranks, scaling = self._rank_scaling(names, hidden)
        if weights is None:
            return torch.repeat_interleave(scaling, ranks)
        if weights.shape[1] > len(names):
            raise RuntimeError(f"got weights for {weights.shape[1]} branches but the layer has {len(names)}")
        # A branch added before its gate (e.g. while InfLoRA designs it) weighs 0 until the gate exists.
        weights = F.pad(weights, (0, len(names) - weights.shape[1]))
        batch = hidden.shape[0]
        if batch != weights.shape[0]:
            if batch % weights.shape[0]:
                raise RuntimeError(
                    f"branch weights were computed for a batch of {weights.shape[0]} but the layer sees {batch} rows"
                )
            # generate() expands each prompt into beams / return sequences with repeat_interleave.
            weights = weights.repeat_interleave(batch // weights.shape[0], dim=0)
        scales = torch.repeat_interleave(weights.to(device=hidden.device, dtype=hidden.dtype) * scaling, ranks, dim=1)
        return scales.view(batch, *([1] * (hidden.dim() - 2)), scales.shape[1])


class LoraBranches:
    """The LoRA branches of one model: injection (through peft), trainability and state.

    :param model: a Hugging Face (or any) model; branches are injected in place.
    :param target_modules: names (peft suffix matching), or one regular expression over qualified
        names, of the layers to adapt; ``None`` uses peft's default for the model type (q and v
        projections for T5 and LLaMA, GPT-2's fused q/k/v ``c_attn``).
    :param rank: rank ``r`` of every branch.
    :param alpha: LoRA ``alpha``; branches are scaled by ``alpha / r``.
    :param dropout: dropout on the branches' input.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        target_modules: Sequence[str] | str | None = None,
        rank: int = 4,
        alpha: float = 32.0,
        dropout: float = 0.0,
    ):
        if not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
        self.model = model
        if target_modules is None:
            target_modules = _default_targets(model)
        # A string is peft's regular expression over module names; list() would split it into letters.
        self.target_modules = target_modules if isinstance(target_modules, str) else list(target_modules)
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.names: list[str] = []
        self.weights = BranchWeights()
        self._check_targets()

    @property
    def num_branches(self) -> int:
        return len(self.names)

    def config(self) -> LoraConfig:
        """The peft configuration of one branch."""
        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias="none",
        )
        config._register_custom_module({layer_type: GatedLoraLinear for layer_type in ADAPTABLE_TYPES})
        return config

    def add_branch(self) -> int:
        """Inject a new branch (``A`` peft-initialised, ``B = 0``), make it the only trainable one.

        :return: the index of the new branch.
        """
        name = branch_name(self.num_branches)
        with warnings.catch_warnings():
            # peft warns that the model already has adapters: one per task is the point here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(self.config(), self.model, adapter_name=name)
        self.names.append(name)
        for layer in self.layers().values():
            layer.branch_names = self.names  # shared list: later branches appear everywhere at once
            layer.branch_weights = self.weights
        self.freeze_all_but(self.num_branches - 1)
        return self.num_branches - 1

    def layers(self) -> dict[str, GatedLoraLinear]:
        """Adapted layers by qualified name."""
        return {name: module for name, module in self.model.named_modules() if isinstance(module, GatedLoraLinear)}

    def down(self, index: int) -> dict[str, nn.Parameter]:
        """``A`` (``r x in``) of branch ``index`` in every adapted layer."""
        name = self.names[index]
        return {layer_name: layer.lora_A[name].weight for layer_name, layer in self.layers().items()}

    def up(self, index: int) -> dict[str, nn.Parameter]:
        """``B`` (``out x r``) of branch ``index`` in every adapted layer."""
        name = self.names[index]
        return {layer_name: layer.lora_B[name].weight for layer_name, layer in self.layers().items()}

    def parameters(self, index: int) -> list[nn.Parameter]:
        """Every parameter of branch ``index``."""
        return [*self.down(index).values(), *self.up(index).values()]

    def freeze_all_but(self, index: int, *, train_down: bool = True) -> None:
        """Make branch ``index`` the only trainable branch (its ``A`` too unless ``train_down`` is False)."""
        for other in range(self.num_branches):
            for param in self.parameters(other):
                param.requires_grad_(False)
        for param in self.up(index).values():
            param.requires_grad_(True)
        for param in self.down(index).values():
            param.requires_grad_(train_down)

    def settings(self) -> dict[str, Any]:
        """What a saved state must agree with to be loaded: the branches' shape, scaling and places."""
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "target_modules": self.target_modules,
            "layers": sorted(self._targets()),
        }

    def state_dict(self) -> dict:
        """Settings, branch count and every branch tensor (the base model's weights are not included)."""
        return {
            "settings": self.settings(),
            "num_branches": self.num_branches,
            "down": [{k: v.detach().clone() for k, v in self.down(i).items()} for i in range(self.num_branches)],
            "up": [{k: v.detach().clone() for k, v in self.up(i).items()} for i in range(self.num_branches)],
        }

    def load_state_dict(self, state: dict) -> None:
        """Inject the missing branches and copy the saved tensors into them.

        :raises ValueError: when the state was saved with other settings (e.g. another ``alpha``,
            which would silently rescale every branch) or for other layers.
        """
        saved = state.get("settings")  # absent from states saved before settings were recorded
        if saved is not None:
            current = self.settings()
            differing = [name for name in saved if saved[name] != current[name]]
            if differing:
                raise ValueError(
                    "the saved LoRA branches were made with other settings: "
                    + "; ".join(f"{name} {saved[name]!r} saved, {current[name]!r} here" for name in differing)
                    + ": build LoraBranches with the saved settings"
                )
        if state["num_branches"] < self.num_branches:
            raise ValueError(
                f"the saved state has {state['num_branches']} branches but the model already has "
                f"{self.num_branches}; load into a fresh model"
            )
        while self.num_branches < state["num_branches"]:
            self.add_branch()
        with torch.no_grad():
            for index in range(self.num_branches):
                for saved, current in ((state["down"][index], self.down(index)), (state["up"][index], self.up(index))):
                    for layer_name, param in current.items():
                        param.copy_(saved[layer_name])

    def _targets(self) -> dict[str, nn.Module]:
        """The modules ``target_modules`` names, by qualified name."""
        config = self.config()
        return {name: module for name, module in self.model.named_modules() if name and check_target_module_exists(config, name)}

    def _check_targets(self) -> None:
        matched = self._targets()
        if not matched:
            linear = sorted({name.rsplit(".", 1)[-1] for name, m in self.model.named_modules() if isinstance(m, ADAPTABLE_TYPES)})
            raise ValueError(
                f"target modules {self.target_modules} match no layer of {type(self.model).__name__}; "
                f"its linear layers are named {linear}"
            )
        unsupported = {name: type(m).__name__ for name, m in matched.items() if not isinstance(m, ADAPTABLE_TYPES)}
        if unsupported:
            first = next(iter(unsupported.items()))
            raise ValueError(
                f"target modules {self.target_modules} match {len(unsupported)} layers that are not linear, e.g. "
                f"{first[0]!r} ({first[1]}); gated LoRA branches only adapt nn.Linear / Conv1D layers"
            )


def _default_targets(model: nn.Module) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if targets is None:
        raise ValueError(
            f"no default LoRA target modules for model type {model_type!r}; pass target_modules=[...] "
            "with the names of the linear layers to adapt"
        )
    return list(targets)
