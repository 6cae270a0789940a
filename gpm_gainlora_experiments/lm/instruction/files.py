"""Reading one split file (``train.json`` / ``test.json``) of a CL_Benchmark task.

Layout, shared by both benchmarks: ``{"Definition": [str], "Instances": [{"input": str,
"output": str | [str, ...]}, ...], ...}``. Quirks of the stored copies that this module absorbs:

- ``Definition`` is a list; its first element is the instruction. Long Sequence ``copa`` has an
  empty list (its inputs carry the instruction), read as the empty string.
- ``output`` is a string (Long Sequence, SuperNI classification tasks) or a list of acceptable
  references (the other SuperNI tasks; quoref and glucose have several for some instances). The
  first reference is the answer a model is trained on; a prediction is scored against all of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple


class TaskFile(NamedTuple):
    """The content of one split file.

    :param definition: the task's instruction.
    :param instances: ``(input, references)`` pairs in file order; the first reference is the answer.
    """

    definition: str
    instances: list[tuple[str, tuple[str, ...]]]


def _definition(value: object, path: Path) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value[0] if value else ""
    raise ValueError(f"{path}: 'Definition' must be a string or a list of strings, got {value!r}")


def _references(value: object, path: Path, index: int) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(
        f"{path}: instance {index} 'output' must be a string or a non-empty list of strings, got {value!r}"
    )


def read_task_file(path: Path) -> TaskFile:
    """Read one split file.

    :param path: a ``train.json`` or ``test.json`` of a task.
    :return: the definition and the ``(input, references)`` pairs, texts unchanged (no stripping).
    :raises ValueError: when the file does not follow the layout above.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a JSON task file ({error}); restore it from the benchmark's copy") from None
    if not isinstance(data, dict) or "Definition" not in data or not isinstance(data.get("Instances"), list):
        raise ValueError(f"{path}: expected a JSON object with 'Definition' and an 'Instances' list")
    instances = []
    for index, instance in enumerate(data["Instances"]):
        if not isinstance(instance, dict) or not isinstance(instance.get("input"), str) or "output" not in instance:
            raise ValueError(f"{path}: instance {index} needs a string 'input' and an 'output'")
        instances.append((instance["input"], _references(instance["output"], path, index)))
    return TaskFile(_definition(data["Definition"], path), instances)
