"""GainLoRA(InfLoRA) + LanguageModelStrategy under DDP: 2 CPU ranks (gloo).

The test spawns 2 processes with the environment ``torchrun --nproc_per_node=2`` gives its
workers (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), so the
worker joins the group exactly as in a real launch: ``setup_distributed(cpu=True)``, i.e.
accelerate's ``PartialState``, gloo. (``accelerate.debug_launcher`` is not used: it creates the
group on a ``FileStore`` whose file torch deletes when the group is destroyed, and then fails
deleting it itself.) The worker (tests/distributed_gainlora_worker.py) trains a tiny LLaMA on
3 tiny experiences, 2 epochs, 2 samples per rank and step, with per-rank random streams after
the model is built. ~25-40 s (most of it importing torch and transformers in the new processes).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

pytest.importorskip("accelerate")

from tests import distributed_gainlora_worker as worker  # noqa: E402
from tests.helpers import launch_ranks  # noqa: E402

WORLD_SIZE = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("gainlora_ddp")
    launch_ranks(worker.main, out, WORLD_SIZE)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


def _assert_equal_nested(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal_nested(a[key], b[key], (*where, key))
    else:
        assert a == b, where


def test_two_ranks_trained_under_ddp_and_unwrapped_afterwards(ranks):
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world"] == 2 for r in ranks)
    assert all(r["wrappers"] == ["DistributedDataParallel"] for r in ranks)
    assert all(r["after_eval"] == "LlamaForCausalLM" for r in ranks)


def test_designed_a_and_gate_keys_identical_before_ddp_syncs(ranks):
    # Recorded after InfLoRA and GainLoRA's before_training_exp, before the DDP wrapper broadcasts:
    # the ranks use different random streams, so equality comes from the plugins themselves.
    r0, r1 = ranks
    for task, (a, b) in enumerate(zip(r0["start"], r1["start"])):
        _assert_equal_nested(a, b, (task,))
        downs = [p for name, p in a.items() if f"lora_A.branch_{task:03d}." in name]
        keys = [name for name in a if name.startswith("gainlora_gates") and name.endswith("key")]
        assert downs and all(d.abs().sum() > 0 for d in downs)
        assert len(keys) == task + 1, keys


def test_parameters_and_bases_identical_after_each_experience(ranks):
    r0, r1 = ranks
    assert len(r0["end"]) == worker.NUM_TASKS
    for task, (a, b) in enumerate(zip(r0["end"], r1["end"])):
        _assert_equal_nested(a, b, (task,))
        assert any(name.startswith("gainlora_gates") for name in a["params"])
        for basis in [*a["inflora"]["bases"].values(), *a["gates"]["bases"].values()]:
            assert basis is not None and basis.shape[1] > 0
    # the weights did move during training (not just equal because nothing trained)
    assert any(not torch.equal(r0["start"][-1][n], p) for n, p in r0["end"][-1]["params"].items())


def test_each_training_sample_seen_by_exactly_one_rank_per_epoch(ranks):
    r0, r1 = ranks
    assert len(r0["seen"]) == len(r1["seen"]) == worker.NUM_TASKS * worker.EPOCHS
    for index, (seen0, seen1) in enumerate(zip(r0["seen"], r1["seen"])):
        samples = r0["experience_samples"][index // worker.EPOCHS]
        assert len(set(samples)) == worker.TASK_SIZE
        assert len(seen0) == len(seen1) == worker.TASK_SIZE // 2
        assert Counter(seen0 + seen1) == Counter(samples), index
