"""Instruction-tuning data: SuperNI and Long Sequence task orders of the GainLoRA benchmark.

:mod:`~experiments.instruction.tasks` loads an order (:func:`load_tasks`) into
:class:`InstructionTask` objects; :mod:`~experiments.instruction.orders` holds the benchmarks and
the preset orders 1-4, :mod:`~experiments.instruction.superni` and
:mod:`~experiments.instruction.long_sequence` the tasks and prompt of each benchmark,
:mod:`~experiments.instruction.files` the JSON reading and :mod:`~experiments.instruction.sampling`
the seeded caps and test carve-out.
"""

from experiments.instruction.orders import BENCHMARKS, ORDERS, get_benchmark, resolve_order
from experiments.instruction.spec import InstructionBenchmark
from experiments.instruction.tasks import InstructionTask, load_tasks

__all__ = [
    "BENCHMARKS",
    "ORDERS",
    "InstructionBenchmark",
    "InstructionTask",
    "get_benchmark",
    "load_tasks",
    "resolve_order",
]
