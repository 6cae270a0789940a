"""The LoRA continual-learning methods of the instruction-tuning runs, by name.

Every method is a list of Avalanche plugins acting on one
:class:`~avalanche_gainlora.branches.LoraBranches` of the model:

- ``seqlora``: one LoRA branch trained on every task in turn (the forgetting baseline);
- ``olora``: a branch per task, O-LoRA's orthogonality penalty on the new ``A_t``;
- ``inflora``: a branch per task, ``A_t`` designed outside the old input subspaces and frozen;
- ``gainlora_olora`` / ``gainlora_inflora``: GainLoRA's gates on top of O-LoRA / InfLoRA, one
  :class:`~avalanche_gainlora.plugins.GainLoRAPlugin` that runs its base method's plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from avalanche.training.plugins import SupervisedPlugin

from avalanche_gpm.settings import ThresholdSpec
from avalanche_gainlora.bases import OFFICIAL_SCHEDULE_TASKS, BasisRule, check_basis_rule, official_threshold
from avalanche_gainlora.branches import LoraBranches
from avalanche_gainlora.plugins import GainLoRAPlugin, InfLoRAPlugin, OLoRAPlugin, SeqLoRAPlugin

#: Gate MLP width of the paper: 100 for T5 (encoder-decoder), 50 for LLaMA (decoder-only).
GATE_HIDDEN_ENCODER_DECODER = 100
GATE_HIDDEN_DECODER_ONLY = 50


@dataclass(frozen=True)
class MethodOptions:
    """Options of the methods; each method reads only its own (see :attr:`MethodSpec.options`).

    :param lambda1: weight of O-LoRA's orthogonality penalty (0.5 in the official scripts).
    :param threshold: energy threshold of InfLoRA's input bases and GainLoRA's gate-input bases;
        ``None`` is the official schedule ``0.995 + 0.005 (t - 1) / T``
        (:func:`~avalanche_gainlora.bases.official_threshold`) with ``T = schedule_tasks``.
    :param schedule_tasks: ``T`` of the official schedule: the benchmark's 15 tasks, as in the
        official scripts, however many tasks run.
    :param basis_rule: energy rule of those bases, ``"official"`` (squared covariance eigenvalues,
        the methods' code) or ``"gpm"`` (see :mod:`avalanche_gainlora.bases`).
    :param gate_hidden: width of GainLoRA's gate MLP; ``None`` is the paper's value for the
        model (100 encoder-decoder, 50 decoder-only).
    :param inflora_max_samples: samples of each task used for InfLoRA's input statistics (all when None).
    :param gate_batch_size: batch size of GainLoRA's passes that pool a task's prompts.
    """

    lambda1: float = 0.5
    threshold: float | None = None
    schedule_tasks: int = OFFICIAL_SCHEDULE_TASKS
    basis_rule: BasisRule = "official"
    gate_hidden: int | None = None
    inflora_max_samples: int | None = None
    gate_batch_size: int = 32

    def __post_init__(self) -> None:
        check_basis_rule(self.basis_rule)


PluginBuilder = Callable[[LoraBranches, MethodOptions, ThresholdSpec, int], list[SupervisedPlugin]]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    :param description: one line for help texts.
    :param build: ``build(branches, options, threshold, gate_hidden)`` -> the plugin list.
    :param options: the fields of :class:`MethodOptions` the method reads.
    :param base: for a GainLoRA method, the registered method its gates sit on (the one the
        paper's claim compares it with); None for ungated methods.
    """

    description: str
    build: PluginBuilder
    options: tuple[str, ...]
    base: str | None = None

    @property
    def gated(self) -> bool:
        """Whether it is a GainLoRA method (it has gates, hence a gate matrix)."""
        return self.base is not None


def _olora(branches: LoraBranches, options: MethodOptions) -> OLoRAPlugin:
    return OLoRAPlugin(branches, lambda1=options.lambda1)


def _inflora(branches: LoraBranches, options: MethodOptions, threshold: ThresholdSpec) -> InfLoRAPlugin:
    return InfLoRAPlugin(
        branches, threshold=threshold, max_samples=options.inflora_max_samples, rule=options.basis_rule
    )


def _gates(
    base: OLoRAPlugin | InfLoRAPlugin, options: MethodOptions, threshold: ThresholdSpec, hidden: int
) -> GainLoRAPlugin:
    return GainLoRAPlugin(
        base, hidden=hidden, threshold=threshold, batch_size=options.gate_batch_size, rule=options.basis_rule
    )


_BASIS_OPTIONS = ("threshold", "schedule_tasks", "basis_rule")
_GATE_OPTIONS = (*_BASIS_OPTIONS, "gate_hidden", "gate_batch_size")

METHODS: dict[str, MethodSpec] = {
    "seqlora": MethodSpec(
        "one LoRA branch trained on every task in turn (baseline)",
        lambda b, o, t, h: [SeqLoRAPlugin(b)],
        (),
    ),
    "olora": MethodSpec(
        "O-LoRA: a branch per task, orthogonality penalty lambda1 * sum |A_i A_t^T|",
        lambda b, o, t, h: [_olora(b, o)],
        ("lambda1",),
    ),
    "inflora": MethodSpec(
        "InfLoRA: a branch per task, A_t designed outside old input subspaces and frozen",
        lambda b, o, t, h: [_inflora(b, o, t)],
        (*_BASIS_OPTIONS, "inflora_max_samples"),
    ),
    "gainlora_olora": MethodSpec(
        "GainLoRA gates on top of O-LoRA",
        lambda b, o, t, h: [_gates(_olora(b, o), o, t, h)],
        ("lambda1", *_GATE_OPTIONS),
        base="olora",
    ),
    "gainlora_inflora": MethodSpec(
        "GainLoRA gates on top of InfLoRA",
        lambda b, o, t, h: [_gates(_inflora(b, o, t), o, t, h)],
        ("inflora_max_samples", *_GATE_OPTIONS),
        base="inflora",
    ),
}


def get_method(name: str) -> MethodSpec:
    """The method registered under ``name``.

    :raises ValueError: for an unknown name, listing the valid ones.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def is_encoder_decoder(model: Any) -> bool:
    """Whether a Hugging Face model is an encoder-decoder (T5) rather than decoder-only."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def default_gate_hidden(encoder_decoder: bool) -> int:
    """The paper's gate width: 100 for encoder-decoder models (T5), 50 for decoder-only ones (LLaMA)."""
    return GATE_HIDDEN_ENCODER_DECODER if encoder_decoder else GATE_HIDDEN_DECODER_ONLY


def resolved_options(name: str, options: MethodOptions, *, encoder_decoder: bool) -> dict[str, Any]:
    """The options method ``name`` runs with, defaults resolved, as stored in a run's record.

    Only the method's own options are included, so changing one method's option does not change
    the recorded configuration of the others.

    :param name: a registered method.
    :param options: the options of the sweep.
    :param encoder_decoder: the model's architecture (decides the default gate width).
    """
    hidden = options.gate_hidden if options.gate_hidden is not None else default_gate_hidden(encoder_decoder)
    values = {
        "lambda1": options.lambda1,
        "threshold": "official" if options.threshold is None else options.threshold,
        "schedule_tasks": options.schedule_tasks if options.threshold is None else None,
        "basis_rule": options.basis_rule,
        "gate_hidden": hidden,
        "inflora_max_samples": options.inflora_max_samples,
        "gate_batch_size": options.gate_batch_size,
    }
    return {key: values[key] for key in get_method(name).options}


def build_plugins(name: str, branches: LoraBranches, *, options: MethodOptions | None = None) -> list[SupervisedPlugin]:
    """The plugins of method ``name`` acting on ``branches``, in the order the strategy needs them.

    :param name: a registered method (see :data:`METHODS`).
    :param branches: the model's LoRA branches (no branch yet).
    :param options: the methods' options (default :class:`MethodOptions`).
    :raises ValueError: for an unknown method name, listing the valid ones.
    """
    spec = get_method(name)
    options = options or MethodOptions()
    if options.threshold is None:
        threshold: ThresholdSpec = official_threshold(options.schedule_tasks)
    else:
        threshold = options.threshold
    hidden = options.gate_hidden
    if hidden is None:
        hidden = default_gate_hidden(is_encoder_decoder(branches.model))
    return spec.build(branches, options, threshold, hidden)


def gate_plugin(plugins: Sequence[SupervisedPlugin]) -> GainLoRAPlugin | None:
    """The GainLoRA plugin of a method's plugin list, or None for ungated methods."""
    return next((plugin for plugin in plugins if isinstance(plugin, GainLoRAPlugin)), None)


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """Method names from ``"a,b"`` (or a list), validated.

    :raises ValueError: for an unknown name (listing the valid ones) or an empty list.
    """
    names = [part.strip() for part in (text.split(",") if isinstance(text, str) else text) if part.strip()]
    if not names:
        raise ValueError(f"no method given; choose from {', '.join(METHODS)}")
    for name in names:
        get_method(name)
    return names
