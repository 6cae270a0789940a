"""Language-model evaluation and the instruction runner on 2 CPU ranks (gloo): scores over all ranks.

Launched like tests/test_distributed_gainlora.py (2 spawned processes with torchrun's environment);
the worker is tests/distributed_lm_worker.py. ~10-20 s.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

pytest.importorskip("accelerate")

from tests import distributed_lm_worker as worker  # noqa: E402
from tests.helpers import launch_ranks  # noqa: E402
from tests.lm_fixtures import lm_tasks  # noqa: E402

WORLD_SIZE = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_ddp")
    launch_ranks(worker.main, out, WORLD_SIZE)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


def test_scores_are_over_every_test_example_once(ranks):
    _, (r0, r1) = ranks
    assert (r0["world"], r1["world"]) == (2, 2)
    for task, examples in enumerate(lm_tasks(worker.NUM_TASKS, worker.TEST_SIZE)):
        references = [example.answer for example in examples]
        # the two shards together are the test set, with no example twice
        shards = [[ref for ref in r["scored"] if ref in references] for r in (r0, r1)]
        assert sorted(map(len, shards)) == [2, 3]
        assert Counter(shards[0] + shards[1]) == Counter(references)
        expected = sum(worker.rule_answer(ref) == ref for ref in references) / len(references)
        key = f"ExactMatch_Exp/eval_phase/test_stream/Task{task:03d}/Exp{task:03d}"
        # exact match is reported in percent
        assert r0["scores"][key] == r1["scores"][key] == pytest.approx(100 * expected)


def test_runner_writes_one_record_with_the_world_size(ranks):
    out, (r0, r1) = ranks
    record = json.loads((out / "seqlora_seed0.json").read_text())
    assert record["config"]["world_size"] == 2
    assert record["score_matrices"] == r0["record"]["score_matrices"] == r1["record"]["score_matrices"]
    assert len(record["score_matrix"]) == worker.NUM_TASKS
