"""GPM under torch DDP: 2 CPU ranks (gloo) launched with torchrun, against a 1-process run.

Both runs execute tests/distributed_gpm_worker.py (3 Gaussian experiences with task labels, tiny
MLP, global batch 16: 8 per rank under DDP) and are started together; ~40-60 s on 2 busy cores,
almost all of it importing Avalanche.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.helpers import free_port

WORKER = Path(__file__).with_name("distributed_gpm_worker.py")
ROOT = WORKER.parent.parent
#: Learned entries of the accuracy matrix may differ between 1 and 2 ranks: DistributedSampler
#: orders the samples differently from the single-process loader, so the trajectories differ.
ACCURACY_TOLERANCE = 0.05
NUM_EXPERIENCES = 3



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    two, one = tmp_path_factory.mktemp("two_ranks"), tmp_path_factory.mktemp("one_process")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # the single-process run must not think it is distributed
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                "--master_addr=127.0.0.1", f"--master_port={free_port()}"]  # sets RANK, LOCAL_RANK, WORLD_SIZE
    procs = [
        subprocess.Popen([*torchrun, str(WORKER), str(two)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen([sys.executable, str(WORKER), str(one)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    ]
    for proc in procs:
        try:
            output, _ = proc.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        assert proc.returncode == 0, output[-4000:]
    load = lambda path: torch.load(path, weights_only=False)  # noqa: E731
    return [load(two / "rank0.pt"), load(two / "rank1.pt")], load(one / "rank0.pt")


def test_two_ranks_under_ddp(runs):
    ranks, single = runs
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world"] == 2 and r["is_ddp"] == "DistributedDataParallel" for r in ranks)
    assert single["world"] == 1 and single["is_ddp"] == "Sequential"


def test_parameters_and_bases_identical_on_both_ranks(runs):
    (r0, r1), single = runs
    for exp, (a, b) in enumerate(zip(r0["after"], r1["after"])):
        for name in a["params"]:
            assert torch.equal(a["params"][name], b["params"][name]), (exp, name)
        bases0, bases1 = a["gpm"]["memory"]["bases"], b["gpm"]["memory"]["bases"]
        # layer names of the unwrapped model, as in one process (no "module." prefix)
        assert list(bases0) == list(single["after"][exp]["gpm"]["memory"]["bases"]) == ["0", "2"]
        for name in bases0:
            assert bases0[name].shape[1] > 0
            assert torch.equal(bases0[name], bases1[name]), (exp, name)
        assert a["gpm"]["usage_history"] == b["gpm"]["usage_history"]


def test_basis_sizes_close_to_single_process(runs):
    # The ranks' Gram matrices sum to the single-process one on the same samples; only the
    # weights they are captured with differ slightly.
    (r0, _), single = runs
    for a, s in zip(r0["after"], single["after"]):
        for name, basis in a["gpm"]["memory"]["bases"].items():
            assert abs(basis.shape[1] - s["gpm"]["memory"]["bases"][name].shape[1]) <= 2


def test_every_training_sample_seen_by_exactly_one_rank_per_epoch(runs):
    (r0, r1), single = runs
    assert len(r0["seen"]) == len(r1["seen"]) == NUM_EXPERIENCES * 2  # 2 epochs per experience
    for seen0, seen1, seen_single in zip(r0["seen"], r1["seen"], single["seen"]):
        assert len(seen0) == len(seen1) == len(seen_single) // 2
        assert sorted(seen0 + seen1) == sorted(seen_single) == list(range(len(seen_single)))


def test_reduced_accuracy_equals_single_process_evaluation(runs):
    for result in runs[0]:
        for after in result["after"]:
            assert after["acc_reduced"] == after["acc_local"]


def test_accuracy_matrix_matches_single_process(runs):
    (r0, r1), single = runs
    for i in range(NUM_EXPERIENCES):
        assert r0["after"][i]["acc_reduced"] == r1["after"][i]["acc_reduced"]
        # learned experiences only (j <= i): unseen ones are at chance level, and differ
        for j in range(i + 1):
            two, one = r0["after"][i]["acc_reduced"][j], single["after"][i]["acc_reduced"][j]
            assert abs(two - one) <= ACCURACY_TOLERANCE, (i, j, two, one)
            assert one >= 0.9  # the tasks are learned and kept, so the comparison means something


def test_experiences_without_task_labels_are_refused(runs):
    for result in runs[0]:
        assert "no task labels" in result["no_task_labels_error"]
    assert runs[1]["no_task_labels_error"] is None  # no-op in one process


def test_weights_that_drift_apart_stop_every_rank(runs):
    # Training itself passed the check after every experience (DistributedChecks); then rank 1 moved.
    (r0, r1), single = runs
    assert "1 of 2 away from rank 0's; this rank agrees with rank 0" in r0["drift_error"]
    assert "this rank differs first in '2.bias'" in r1["drift_error"]
    assert single["drift_error"] is None  # no-op in one process


def test_a_growing_model_needs_its_experiences_before_wrapping(runs):
    (r0, r1), single = runs
    for result in (r0, r1):
        assert "pass wrap_for_ddp(strategy, experiences=benchmark.train_stream)" in result["growing_model_error"]
    assert single["growing_model_error"] is None  # no-op in one process



def test_a_memory_update_failing_on_rank_0_stops_every_rank(runs):
    (r0, r1), single = runs
    assert r0["update_error"].startswith("ValueError: cannot grow the basis of layer '0'")
    assert r1["update_error"].startswith("RuntimeError: rank 0 failed, so this rank stops too: ValueError: cannot grow")
    assert single["update_error"].startswith("ValueError: cannot grow the basis of layer '0'")
