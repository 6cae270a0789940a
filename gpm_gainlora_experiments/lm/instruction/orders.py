"""The benchmarks by name and the task orders of the GainLoRA paper (orders 1-4)."""

from __future__ import annotations

from collections.abc import Sequence

from gpm_gainlora_experiments.lm.instruction.long_sequence import LONG_SEQUENCE
from gpm_gainlora_experiments.lm.instruction.spec import InstructionBenchmark
from gpm_gainlora_experiments.lm.instruction.superni import SUPERNI

BENCHMARKS: dict[str, InstructionBenchmark] = {b.name: b for b in (SUPERNI, LONG_SEQUENCE)}

#: Preset number -> (benchmark name, task names in training order).
ORDERS: dict[int, tuple[str, tuple[str, ...]]] = {
    1: ("superni", (
        "samsum", "sst2", "xsum", "outcome_extraction", "quoref", "evalution_relation", "multi_woz",
        "personachat", "commonsenseqa", "diplomacy", "glucose", "reddit_tifu", "sciq", "sentiment140",
        "emotion",
    )),
    2: ("superni", (
        "glucose", "commonsenseqa", "diplomacy", "multi_woz", "samsum", "sentiment140", "sciq", "sst2",
        "evalution_relation", "personachat", "outcome_extraction", "reddit_tifu", "quoref", "xsum",
        "emotion",
    )),
    3: ("long_sequence", (
        "yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia", "agnews",
        "yahoo", "multirc", "boolq", "wic",
    )),
    4: ("long_sequence", (
        "mnli", "cb", "wic", "copa", "qqp", "boolq", "rte", "imdb", "yelp", "amazon", "sst2",
        "dbpedia", "agnews", "multirc", "yahoo",
    )),
}  # fmt: skip


def get_benchmark(name: str) -> InstructionBenchmark:
    """The benchmark registered under ``name``.

    :param name: ``"superni"`` or ``"long_sequence"``.
    :return: its :class:`InstructionBenchmark`.
    :raises ValueError: for an unknown name, listing the valid ones.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown instruction benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def resolve_order(benchmark: str, order: int | Sequence[str]) -> tuple[str, ...]:
    """The task names of a preset order or a validated custom order.

    :param benchmark: ``"superni"`` or ``"long_sequence"``.
    :param order: a preset number (1, 2: SuperNI; 3, 4: Long Sequence) or task names in training order.
    :return: the task names in training order.
    :raises ValueError: for a preset of another benchmark, an unknown preset, an unknown or
        repeated task name, or an empty order.
    """
    spec = get_benchmark(benchmark)
    if isinstance(order, int):
        if order not in ORDERS:
            raise ValueError(f"unknown task order {order}; presets are {sorted(ORDERS)}, or pass task names")
        owner, names = ORDERS[order]
        if owner != benchmark:
            raise ValueError(f"order {order} is a {owner} order, not a {benchmark} one")
        return names
    # A lone string is a Sequence[str] too; iterating it would yield single characters.
    if isinstance(order, str):
        raise ValueError(f"order must be a preset number or a list of task names, got the string {order!r}")
    names = tuple(order)
    if not names:
        raise ValueError("order is empty: pass at least one task name")
    unknown = [n for n in names if n not in spec.task_folders]
    if unknown:
        raise ValueError(f"unknown {benchmark} task(s) {unknown}; valid names are {sorted(spec.task_folders)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"task(s) {repeated} appear more than once in the order; list each task once")
    return names
