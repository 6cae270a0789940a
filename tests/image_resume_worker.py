"""A 3-experience image run (permuted digits), run as a subprocess by tests/test_image_resume.py.

``python -m tests.image_resume_worker STRATEGY OUT_DIR [PAUSE_FILE]``: with ``PAUSE_FILE`` the
process writes that file once the checkpoint after experience 1 is saved and then waits to be killed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from gpm_gainlora_experiments.image import runner


def main(strategy: str, out_dir: str, pause_file: str | None = None) -> None:
    runner.process_commit = lambda *args: "test-commit"
    if pause_file is not None:
        save = runner.save_strategy_checkpoint

        def save_then_wait(path, config, done, strategy, shared):
            save(path, config, done, strategy, shared)
            if len(done.matrix) == 1:
                Path(pause_file).write_text("checkpoint after experience 1 saved")
                time.sleep(600)  # the test kills the process here

        runner.save_strategy_checkpoint = save_then_wait
    runner.run("permuted_digits", strategy, 0, out_dir, num_tasks=3, progress=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
