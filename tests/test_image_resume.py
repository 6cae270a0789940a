"""A killed image run resumes after its last finished experience and writes the record of an
uninterrupted run, accuracies bitwise (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from avalanche.training import Naive
from torch import nn

from gpm_gainlora_experiments.common.checkpoints import checkpoint_path
from gpm_gainlora_experiments.image import runner
from gpm_gainlora_experiments.image.checkpoints import RunProgress, data_tensors, resume_strategy, save_strategy_checkpoint
from tests.helpers import gaussian_tasks, kill_once_paused, quiet_evaluator, without

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
    kill_once_paused(_worker(strategy, killed, pause), pause)
    assert reference.wait() == 0
    assert not (killed / f"{strategy}_seed0.json").exists()
    assert checkpoint_path(killed, strategy, 0).exists()

    assert _worker(strategy, killed).wait() == 0  # the same command again: resumes after experience 1
    resumed, uninterrupted = _record(killed, strategy), _record(full, strategy)
    assert resumed["resumed_after_experience"] == 1 and uninterrupted["resumed_after_experience"] is None
    assert without(resumed, TIMING) == without(uninterrupted, TIMING)
    assert not checkpoint_path(killed, strategy, 0).exists()  # removed once the record is written


def test_a_truncated_checkpoint_or_one_of_another_run_is_refused(tmp_path):
    benchmark = gaussian_tasks(1, (2,))
    shared = data_tensors(benchmark)
    model = nn.Linear(2, 3)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), evaluator=quiet_evaluator())
    path = tmp_path / "checkpoints" / "gpm_seed0.pt"
    save_strategy_checkpoint(path, {"seed": 0, "hyperparams": {"lr": 0.1}}, RunProgress(), strategy, shared)
    with pytest.raises(ValueError, match=r"another configuration \(differing: hyperparams.lr\)"):
        resume_strategy(path, {"seed": 0, "hyperparams": {"lr": 0.01}}, strategy, shared)
    path.write_bytes(path.read_bytes()[:200])  # a write cut short
    with pytest.raises(ValueError, match=r"gpm_seed0.pt is not a readable checkpoint .*delete it or pass --force"):
        resume_strategy(path, {"seed": 0, "hyperparams": {"lr": 0.1}}, strategy, shared)


def test_checkpoints_refer_to_the_benchmark_data_instead_of_copying_it(tmp_path, monkeypatch):
    # A replay buffer is a subset of every past experience's dataset: pickled as it is, each
    # checkpoint would hold all the data seen so far. Each checkpoint is also written once more
    # without the references: the difference must be at least the training features (the buffer
    # refers to them; the shared tensors also hold the test split).
    referenced, copied, data_bytes = [], [], []
    save = runner.save_strategy_checkpoint

    def save_and_measure(path, config, done, strategy, shared):
        save(path, config, done, strategy, shared)
        referenced.append(path.stat().st_size)
        copy_path = path.with_name("copy.pt")
        save(copy_path, config, done, strategy, ())
        copied.append(copy_path.stat().st_size)
        data_bytes.append(sum(t.numel() * t.element_size() for t in shared))

    monkeypatch.setattr(runner, "save_strategy_checkpoint", save_and_measure)
    monkeypatch.setattr(runner, "process_commit", lambda *args: "test-commit")
    runner.run("permuted_digits", "replay", 0, tmp_path, num_tasks=2, progress=False)
    assert len(referenced) == 2 and data_bytes[0] > 400_000  # the digits, stored once
    for with_references, with_copies in zip(referenced, copied):
        assert with_copies - with_references > 0.6 * data_bytes[0], (referenced, copied, data_bytes)
