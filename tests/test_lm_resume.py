"""A killed instruction run resumes after its last finished task and writes the record of an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpm_gainlora_experiments.common.checkpoints import checkpoint_path
from tests.helpers import kill_once_paused, without

ROOT = Path(__file__).resolve().parents[1]
#: record fields that depend on when and how long the run ran, not on what it computed
TIMING = {"wall_time_s", "train_time_s", "eval_time_s", "task_times_s", "peak_memory", "finished_at", "resumed_after_task"}


def _worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tests.lm_resume_worker", *map(str, args)], cwd=ROOT, env=env)


def _record(out: Path, method: str) -> dict:
    return json.loads((out / f"{method}_seed0.json").read_text())


@pytest.mark.parametrize("method", ["gainlora_inflora", "seqlora"])
def test_a_run_killed_after_a_task_resumes_to_the_uninterrupted_record(tmp_path, method):
    full, killed, pause = tmp_path / "full", tmp_path / "killed", tmp_path / "paused"
    reference = _worker(method, full)
    kill_once_paused(_worker(method, killed, pause), pause)
    assert reference.wait() == 0
    assert not (killed / f"{method}_seed0.json").exists()
    assert torch.load(checkpoint_path(killed, method, 0), weights_only=False)["progress"]["losses"]

    assert _worker(method, killed).wait() == 0  # the same command again: resumes after task 1
    resumed, uninterrupted = _record(killed, method), _record(full, method)
    assert resumed["resumed_after_task"] == 1 and uninterrupted["resumed_after_task"] is None
    assert without(resumed, TIMING) == without(uninterrupted, TIMING)
    assert not checkpoint_path(killed, method, 0).exists()  # removed once the record is written


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    from gpm_gainlora_experiments.lm.checkpoints import resume_run

    path = tmp_path / "c.pt"
    torch.save({"config": {"lr": 1e-3, "seed": 0}, "progress": {}, "plugins": [], "rng": {}}, path)
    with pytest.raises(ValueError, match=r"another configuration \(differing: lr\)"):
        resume_run(path, {"lr": 3e-3, "seed": 0}, [])
    path.write_bytes(b"truncated")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        resume_run(path, {"lr": 3e-3, "seed": 0}, [])
