"""The 15 Long Sequence classification tasks of the O-LoRA benchmark and their prompt."""

from __future__ import annotations

from gpm_gainlora_experiments.lm.instruction.spec import InstructionBenchmark

_TASKS = (
    "agnews", "amazon", "boolq", "cb", "copa", "dbpedia", "imdb", "mnli",
    "multirc", "qqp", "rte", "sst2", "wic", "yahoo", "yelp",
)  # fmt: skip

LONG_SEQUENCE = InstructionBenchmark(
    name="long_sequence",
    folder="Long_Sequence",
    task_folders={task: task for task in _TASKS},
    template="{definition}\n{input}\nOutput: ",
)
