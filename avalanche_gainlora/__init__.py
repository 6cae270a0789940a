"""GainLoRA (gated integration of LoRA branches) with its base methods O-LoRA and InfLoRA for Avalanche.

Layout: :mod:`~avalanche_gainlora.branches` injects one peft LoRA branch per task, summed with
per-sample weights; :mod:`~avalanche_gainlora.gates` and :mod:`~avalanche_gainlora.routing` are
GainLoRA's gates; :mod:`~avalanche_gainlora.inflora`, :mod:`~avalanche_gainlora.olora`,
:mod:`~avalanche_gainlora.gate_memory` and :mod:`~avalanche_gainlora.bases` the methods' math (the
subspace bases come from :mod:`avalanche_gpm.subspace`); :mod:`~avalanche_gainlora.plugins` the
Avalanche plugins, one per method (GainLoRA's runs its base method's, e.g.
``GainLoRAPlugin(InfLoRAPlugin(branches))``); :mod:`~avalanche_gainlora.strategy` trains and
evaluates language models in Avalanche, with the instruction data of :mod:`~avalanche_gainlora.data`.
"""

from importlib.metadata import PackageNotFoundError, version

from avalanche_gainlora.branches import LoraBranches
from avalanche_gainlora.data import InstructionExample, instruction_benchmark
from avalanche_gainlora.generation_metrics import generation_metrics
from avalanche_gainlora.plugins import GainLoRAPlugin, InfLoRAPlugin, OLoRAPlugin, SeqLoRAPlugin
from avalanche_gainlora.strategy import LanguageModelStrategy

try:
    __version__ = version("avalanche-gpm-gainlora")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = [
    "GainLoRAPlugin",
    "InfLoRAPlugin",
    "InstructionExample",
    "LanguageModelStrategy",
    "LoraBranches",
    "OLoRAPlugin",
    "SeqLoRAPlugin",
    "__version__",
    "generation_metrics",
    "instruction_benchmark",
]
