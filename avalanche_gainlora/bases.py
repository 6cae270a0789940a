"""The energy rule and threshold schedule of InfLoRA's and GainLoRA's bases.

Both methods keep GPM-style bases of old inputs (InfLoRA: of every adapted layer; GainLoRA: of
the gating layers). The official code measures a direction's energy as the squared singular value
of the input covariance, ``lambda_i^2`` (GPM: ``lambda_i``), keeps at least one direction on the
first task, and uses the threshold schedule ``eps_t = 0.995 + 0.005 (t - 1) / 15`` with the
benchmarks' length of 15 tasks however many tasks run. The bases themselves are
:class:`~avalanche_gpm.memory.GradientProjectionMemory` objects: one implementation for every method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from avalanche_gpm.memory import GradientProjectionMemory
from avalanche_gpm.settings import LinearSchedule
from avalanche_gpm.subspace import EnergyRule, FirstTaskRule

BasisRule = Literal["official", "gpm"]

#: ``(energy, first_task_rule)`` of each rule (see :mod:`avalanche_gpm.subspace`):
#: ``official`` is the InfLoRA / GainLoRA code, ``gpm`` the GPM paper's criteria.
BASIS_RULES: dict[str, tuple[EnergyRule, FirstTaskRule]] = {
    "official": ("covariance", "official_min1"),
    "gpm": ("gram", "paper"),
}

#: Number of tasks of the SuperNI and Long Sequence orders, which the official schedule divides by.
OFFICIAL_SCHEDULE_TASKS = 15


def check_basis_rule(rule: str) -> None:
    """Fail early on an unknown basis rule."""
    if rule not in BASIS_RULES:
        raise ValueError(f"basis rule must be one of {tuple(BASIS_RULES)}, got {rule!r}")


def input_memory(input_dims: Mapping[str, int], rule: BasisRule = "official") -> GradientProjectionMemory:
    """Empty bases of some inputs, grown with ``rule``'s energy criteria.

    :param input_dims: size of each input space, by name.
    :param rule: ``"official"`` (the methods' code) or ``"gpm"`` (GPM's criteria).
    """
    check_basis_rule(rule)
    energy, first_task_rule = BASIS_RULES[rule]
    return GradientProjectionMemory(input_dims, first_task_rule=first_task_rule, energy=energy)


def official_threshold(num_tasks: int = OFFICIAL_SCHEDULE_TASKS) -> LinearSchedule:
    """The official schedule ``eps_t = 0.995 + 0.005 (t - 1) / T`` (task ``t`` counted from 1).

    :param num_tasks: ``T``; the official scripts use the benchmark's 15 tasks even when fewer run.
    """
    if num_tasks <= 0:
        raise ValueError(f"num_tasks must be positive, got {num_tasks}")
    return LinearSchedule(0.995, 0.005 / num_tasks)
