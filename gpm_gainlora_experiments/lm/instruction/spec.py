"""What distinguishes one instruction benchmark from another: its folder, tasks and prompt."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class InstructionBenchmark:
    """One benchmark of ``CL_Benchmark/``.

    :param name: the name users pass (``"superni"``, ``"long_sequence"``).
    :param folder: its folder under ``<data_root>/CL_Benchmark/``.
    :param task_folders: task name -> the task's folder under :attr:`folder`.
    :param template: the prompt, a :meth:`str.format` template with ``{definition}`` and ``{input}``.
    """

    name: str
    folder: str
    task_folders: Mapping[str, str]
    template: str

    def prompt(self, definition: str, text: str) -> str:
        """The prompt of one instance.

        :param definition: the task's instruction.
        :param text: the instance's ``input``.
        :return: the formatted prompt, ending where the model's answer starts.
        """
        return self.template.format(definition=definition, input=text)
