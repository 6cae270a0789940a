"""The comparative runner's ``--distributed`` flag: a 2-process torchrun launch on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpm_gainlora_experiments.image.hyperparams import Hyperparams
from gpm_gainlora_experiments.image.runner import _check_distributed
from tests.helpers import free_port
from tests.image_fixtures import write_cifar10_pickles

ROOT = Path(__file__).parent.parent


def run_on_two_processes(*arguments: str) -> None:
    """``python -m gpm_gainlora_experiments.image.run --distributed ARGUMENTS`` under a 2-process torchrun launch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}", "-m", "gpm_gainlora_experiments.image.run", "--distributed", *arguments,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def test_runner_trains_gpm_on_two_processes(tmp_path):
    run_on_two_processes(
        "--benchmark", "permuted_digits", "--strategies", "gpm", "--tasks", "2", "--epochs", "1", "--out", str(tmp_path)
    )
    record = json.loads((tmp_path / "gpm_seed0.json").read_text())
    assert record["config"]["world_size"] == 2
    matrix = record["accuracy_matrix"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    assert min(matrix[0][0], matrix[1][1]) > 0.25  # both tasks learned (10 classes: chance is 0.1)
    assert (tmp_path / "summary.md").exists()


def test_runner_keeps_the_validation_schedule_in_step_on_two_processes(tmp_path):
    # Split CIFAR-10's preset decays the lr on validation loss and restores the best weights: every
    # rank must take the same decisions (the runner's DDP checks stop the run if the weights drift
    # apart), and the validation pass must reach the multi-head AlexNet's heads through DDP.
    write_cifar10_pickles(tmp_path / "data", per_file=60)  # 3 validation images per task: BatchNorm needs 2
    out = tmp_path / "out"
    run_on_two_processes(
        "--benchmark", "split_cifar10", "--data-root", str(tmp_path / "data"), "--strategies", "gpm",
        "--tasks", "2", "--epochs", "2", "--out", str(out),
    )  # fmt: skip
    config = json.loads((out / "gpm_seed0.json").read_text())["config"]
    assert config["world_size"] == 2 and config["hyperparams"]["lr_schedule"]["patience"] == 6


@pytest.mark.parametrize(
    ("strategy", "batch", "message"), [("agem", 10, "cannot run on several"), ("gpm", 9, "does not split")]
)
def test_distributed_runs_refuse_what_they_cannot_do(strategy, batch, message):
    with pytest.raises(ValueError, match=message):
        _check_distributed(strategy, Hyperparams(lr=0.1, batch_size=batch, epochs=1), world_size=2)
