"""A killed image run resumes after its last finished experience and writes the record of an
uninterrupted run, accuracies bitwise (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.checkpoints import checkpoint_path
from experiments.runner import resume_strategy

ROOT = Path(__file__).resolve().parents[1]
#: record fields that depend on when and how long the run ran, not on what it computed
TIMING = {"wall_time_s", "train_time_s", "peak_memory", "finished_at", "resumed_after_experience"}


def _worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tests.image_resume_worker", *map(str, args)], cwd=ROOT, env=env)


def _record(out: Path, strategy: str) -> dict:
    return json.loads((out / f"{strategy}_seed0.json").read_text())


# GPM keeps bases, EWC importances and old weights, replay a buffer, and all three an SGD
# optimizer: each must come back from the checkpoint for the records to agree.
@pytest.mark.parametrize("strategy", ["gpm", "ewc", "replay"])
def test_a_run_killed_after_an_experience_resumes_to_the_uninterrupted_record(tmp_path, strategy):
    full, killed, pause = tmp_path / "full", tmp_path / "killed", tmp_path / "paused"
    reference = _worker(strategy, full)
    victim = _worker(strategy, killed, pause)
    deadline = time.monotonic() + 300
    while not pause.exists():
        assert victim.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 5 minutes"
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert reference.wait() == 0
    assert not (killed / f"{strategy}_seed0.json").exists()
    assert checkpoint_path(killed, strategy, 0).exists()

    assert _worker(strategy, killed).wait() == 0  # the same command again: resumes after experience 1
    resumed, uninterrupted = _record(killed, strategy), _record(full, strategy)
    assert resumed["resumed_after_experience"] == 1 and uninterrupted["resumed_after_experience"] is None
    assert {k: v for k, v in resumed.items() if k not in TIMING} == {
        k: v for k, v in uninterrupted.items() if k not in TIMING
    }
    assert not checkpoint_path(killed, strategy, 0).exists()  # removed once the record is written


def test_a_truncated_checkpoint_or_one_of_another_run_is_refused(tmp_path):
    path = tmp_path / "checkpoints" / "gpm_seed0.pt"
    path.parent.mkdir()
    path.write_bytes(b"\x80\x04truncated")
    with pytest.raises(ValueError, match=r"gpm_seed0.pt is not a readable checkpoint .*delete it or pass --force"):
        resume_strategy(path, {"seed": 0}, strategy=None)
    from experiments.checkpoints import write_checkpoint

    write_checkpoint(path, {"seed": 0, "hyperparams": {"lr": 0.1}}, {})
    with pytest.raises(ValueError, match=r"another configuration \(differing: hyperparams.lr\)"):
        resume_strategy(path, {"seed": 0, "hyperparams": {"lr": 0.01}}, strategy=None)
