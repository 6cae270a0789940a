"""Which parts of a model GPM protects, freezes, or leaves alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from avalanche.models import MultiHeadClassifier
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from avalanche_gpm.capture import PROTECTABLE_TYPES

NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass
class LayerSelection:
    """The result of :func:`select_layers`.

    :ivar protected: layers whose gradients are projected, by name, in model order.
    :ivar norms: normalisation layers whose affine parameters stop learning after the first task.
    :ivar excluded: names of modules left out on purpose (task heads and user exclusions).
    :ivar unprotected: trainable parameters outside all of the above: they learn freely and can
        change old tasks' outputs.
    :ivar running_stats: normalisation layers that track running statistics, which drift on new
        tasks whatever the gradients do.
    """

    protected: dict[str, nn.Module]
    norms: dict[str, nn.Module] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    unprotected: list[str] = field(default_factory=list)
    running_stats: list[str] = field(default_factory=list)


def _inside(name: str, roots: Sequence[str]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def _check_protectable(name: str, module: nn.Module) -> None:
    if not isinstance(module, PROTECTABLE_TYPES):
        raise ValueError(
            f"GPM cannot protect module {name!r} of type {type(module).__name__}: only nn.Linear and "
            "nn.Conv2d layers are supported; remove it from `modules`"
        )
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise ValueError(
            f"GPM cannot protect grouped convolution {name!r} (groups={module.groups}): its weight does "
            f"not act on whole im2col patches; pass exclude=[{name!r}] to leave it unprotected, or list "
            "the layers to protect in `modules`"
        )


def select_layers(
    model: nn.Module,
    modules: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> LayerSelection:
    """Find the layers of ``model`` that GPM protects.

    :param model: the network.
    :param modules: names (as in ``model.named_modules()``) of the layers to protect; by default
        every ``nn.Linear`` and ``nn.Conv2d`` outside the excluded modules.
    :param exclude: modules (with everything inside them) that GPM leaves alone, e.g. task heads.
        ``MultiHeadClassifier`` modules are always excluded: each task has its own head.
    """
    named = dict(model.named_modules())
    unknown = [name for name in [*(modules or ()), *exclude] if name not in named]
    if unknown:
        raise ValueError(f"GPM: model has no module named {unknown}; available modules: {[n for n in named if n]}")

    excluded = list(exclude) + [name for name, m in named.items() if isinstance(m, MultiHeadClassifier)]
    if modules is not None:
        for name in modules:
            _check_protectable(name, named[name])
        protected = {name: named[name] for name in named if name in modules}
    else:
        protected = {
            name: m for name, m in named.items() if isinstance(m, PROTECTABLE_TYPES) and not _inside(name, excluded)
        }
        for name, module in protected.items():
            _check_protectable(name, module)
    if not protected:
        raise ValueError(
            f"GPM found nothing to protect in {type(model).__name__}: it needs nn.Linear or nn.Conv2d "
            "layers outside the task heads; check `modules` and `exclude`"
        )

    all_norms = {name: m for name, m in named.items() if isinstance(m, NORM_TYPES) and not _inside(name, excluded)}
    norms = {name: m for name, m in all_norms.items() if any(True for _ in m.parameters(False))}
    # Statistics drift whether or not the layer has affine parameters.
    running_stats = [name for name, m in all_norms.items() if getattr(m, "track_running_stats", False)]
    covered = [*protected, *norms, *excluded]
    unprotected = [
        name for name, p in model.named_parameters() if p.requires_grad and not _inside(name.rpartition(".")[0], covered)
    ]
    return LayerSelection(protected, norms, excluded, unprotected, running_stats)
