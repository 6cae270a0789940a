"""GainLoRA(InfLoRA) on a tiny LLaMA on every rank, launched by tests/test_distributed_gainlora.py.

``main(out_dir)`` runs in each process of ``accelerate.debug_launcher`` (gloo, CPU) and writes
``out_dir/rank{r}.pt`` with what the test checks.
"""

from __future__ import annotations

import os

import torch
from avalanche.training.plugins import SupervisedPlugin

from avalanche_gainlora.branches import LoraBranches
from avalanche_gainlora.distributed import (
    DistributedHelper,
    DistributedLoRAPlugin,
    setup_distributed,
    shutdown_distributed,
)
from avalanche_gainlora.plugins import GainLoRAPlugin, InfLoRAPlugin
from tests.lm_fixtures import lm_benchmark, lm_evaluator, lm_strategy, lm_tasks, tiny_llama

NUM_TASKS = 3
TASK_SIZE = 8  # a multiple of the world size: no DistributedSampler padding
EPOCHS = 2
PER_RANK_BATCH = 2


def _sample_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(input_ids, attention_mask)]


def _parameters(strategy) -> dict[str, torch.Tensor]:
    model = DistributedHelper.unwrap_model(strategy.model)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


class Recorder(SupervisedPlugin, supports_distributed=True):
    """Parameters after the method plugin's ``before_training_exp`` (before DDP syncs anything),
    parameters and memories after each experience, the samples seen per epoch, the wrapper type."""

    def __init__(self, gainlora: GainLoRAPlugin):
        super().__init__()
        self.gainlora = gainlora
        self.start: list[dict] = []
        self.end: list[dict] = []
        self.experience_samples: list[list[tuple[int, ...]]] = []
        self.seen: list[list[tuple[int, ...]]] = []  # one list per (experience, epoch)
        self.wrappers: set[str] = set()

    def before_training_exp(self, strategy, **kwargs):
        self.start.append(_parameters(strategy))
        dataset = strategy.experience.dataset.eval()
        inputs = dataset.collate_fn([dataset[i] for i in range(len(dataset))])[0]
        self.experience_samples.append(_sample_keys(inputs["input_ids"], inputs["attention_mask"]))

    def before_training_epoch(self, strategy, **kwargs):
        self.seen.append([])

    def before_forward(self, strategy, **kwargs):
        self.wrappers.add(type(strategy.model).__name__)
        self.seen[-1].extend(_sample_keys(strategy.mb_x["input_ids"], strategy.mb_x["attention_mask"]))

    def after_training_exp(self, strategy, **kwargs):
        self.end.append(
            {
                "params": _parameters(strategy),
                "inflora": self.gainlora.base.memory.state_dict(),
                "gates": self.gainlora.memory.state_dict(),
            }
        )


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    world = setup_distributed(seed=0, cpu=True)
    rank = DistributedHelper.rank
    assert world == 2 == torch.distributed.get_world_size(), world

    model = tiny_llama()
    benchmark = lm_benchmark(model, lm_tasks(NUM_TASKS, TASK_SIZE))
    # Different random streams per rank from here on: peft's initial A and the first gate differ
    # between ranks unless the plugins make them identical.
    torch.manual_seed(1000 + rank)
    branches = LoraBranches(model, rank=2, alpha=4)
    gainlora = GainLoRAPlugin(InfLoRAPlugin(branches, threshold=0.99), hidden=8, threshold=0.99)
    recorder = Recorder(gainlora)
    strategy = lm_strategy(
        model,
        lr=1e-2,
        plugins=[gainlora, recorder, DistributedLoRAPlugin()],
        evaluator=lm_evaluator(),
        train_mb_size=PER_RANK_BATCH,
        train_epochs=EPOCHS,
        max_new_tokens=3,
    )
    for experience in benchmark.train_stream:
        strategy.train(experience)
    strategy.eval(benchmark.test_stream[-1:])  # on the bare model, sharded, no collectives
    after_eval = type(strategy.model).__name__
    torch.save(
        {
            "rank": rank,
            "world": world,
            "start": recorder.start,
            "end": recorder.end,
            "experience_samples": recorder.experience_samples,
            "seen": recorder.seen,
            "wrappers": sorted(recorder.wrappers),
            "after_eval": after_eval,
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    shutdown_distributed(strategy)
