"""A 3-task instruction run on a tiny LLaMA, run as a subprocess by tests/test_lm_resume.py.

``python -m tests.lm_resume_worker METHOD OUT_DIR [PAUSE_FILE]``: with ``PAUSE_FILE`` the process
writes that file once the checkpoint after task 1 is saved and then waits to be killed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from avalanche_gainlora.data import InstructionExample
from gpm_gainlora_experiments.lm import runner as lm_runner
from gpm_gainlora_experiments.lm.instruction import InstructionTask
from gpm_gainlora_experiments.lm.methods import MethodOptions
from gpm_gainlora_experiments.lm.runner import LMSettings, run_lm
from tests.lm_fixtures import char_tokenizer, tiny_llama

SETTINGS = LMSettings(
    batch_size=2, eval_batch_size=4, lr=1e-2, rank=2, alpha=4.0, max_prompt_tokens=40, max_answer_tokens=6,
    max_new_tokens=4, methods=MethodOptions(gate_hidden=8),
)  # fmt: skip


def tasks() -> list[InstructionTask]:
    result = []
    for t in range(3):
        letters = "abcdefghijklmnopqrstuvwxyz"[5 * t : 5 * t + 5]
        examples = [InstructionExample(f"{letters * 2} {i} Output: ", f"{t}{letters[i % 5]}") for i in range(6)]
        result.append(InstructionTask(f"task{t}", "superni", examples[:4], examples[4:]))
    return result


def main(method: str, out_dir: str, pause_file: str | None = None) -> None:
    lm_runner.process_commit = lambda *args: "test-commit"
    if pause_file is not None:
        save = lm_runner.save_run_checkpoint

        def save_then_wait(path, config, progress, plugins):
            save(path, config, progress, plugins)
            if progress.tasks_done == 1:
                Path(pause_file).write_text("checkpoint after task 1 saved")
                time.sleep(600)  # the test kills the process here

        lm_runner.save_run_checkpoint = save_then_wait
    run_lm(
        method, 0, out_dir, tasks=tasks(), model_name="tiny-llama", settings=SETTINGS,
        model_factory=lambda: (tiny_llama(), char_tokenizer()), progress=False,
    )  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:])
