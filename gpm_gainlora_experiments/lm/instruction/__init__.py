"""Instruction-tuning data: SuperNI and Long Sequence task orders of the GainLoRA benchmark.

:mod:`~gpm_gainlora_experiments.lm.instruction.tasks` loads an order (:func:`load_tasks`) into
:class:`InstructionTask` objects; :mod:`~gpm_gainlora_experiments.lm.instruction.orders` holds the benchmarks and
the preset orders 1-4, :mod:`~gpm_gainlora_experiments.lm.instruction.superni` and
:mod:`~gpm_gainlora_experiments.lm.instruction.long_sequence` the tasks and prompt of each benchmark,
:mod:`~gpm_gainlora_experiments.lm.instruction.files` the JSON reading and :mod:`~gpm_gainlora_experiments.lm.instruction.sampling`
the seeded caps and test carve-out.
"""

from gpm_gainlora_experiments.lm.instruction.orders import BENCHMARKS, ORDERS, get_benchmark, resolve_order
from gpm_gainlora_experiments.lm.instruction.spec import InstructionBenchmark
from gpm_gainlora_experiments.lm.instruction.tasks import InstructionTask, load_tasks

__all__ = [
    "BENCHMARKS",
    "ORDERS",
    "InstructionBenchmark",
    "InstructionTask",
    "get_benchmark",
    "load_tasks",
    "resolve_order",
]
