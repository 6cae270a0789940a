"""Sharded evaluation and the instruction runner on 2 ranks, launched by tests/test_distributed_lm.py.

``main(out_dir)`` runs in each process and writes ``out_dir/rank{r}.pt`` with what the test checks:

* ``scores``: ``strategy.eval`` of a tiny LLaMA whose ``generate`` is replaced by a rule on the
  reference (answers ending in an even digit are right), so the exact single-process score of every
  test experience is known without generating; the test sets have an odd number of examples,
  where a padded ``DistributedSampler`` would count one twice;
* ``scored``: the references this rank scored;
* ``record``: the record ``run_lm`` returns for a 2-task SeqLoRA run (rank 0 writes the file).
"""

from __future__ import annotations

import torch

from avalanche_gainlora.data import decode_references
from avalanche_gainlora.distributed import DistributedHelper, setup_distributed, shutdown_distributed
from gpm_gainlora_experiments.lm import runner as lm_runner
from gpm_gainlora_experiments.lm.instruction import InstructionTask
from gpm_gainlora_experiments.lm.runner import LMSettings, run_lm
from tests.lm_fixtures import char_tokenizer, lm_benchmark, lm_evaluator, lm_strategy, lm_tasks, tiny_llama

NUM_TASKS = 2
TEST_SIZE = 5  # odd: 3 examples on rank 0, 2 on rank 1


def rule_answer(reference: str) -> str:
    """The fake model's answer: right when the reference ends in an even digit."""
    return reference if int(reference[-1]) % 2 == 0 else "wrong"


def main(out_dir: str) -> None:
    world = setup_distributed(seed=0, cpu=True)
    model = tiny_llama()
    strategy = lm_strategy(model, evaluator=lm_evaluator())
    scored: list[str] = []

    def generate(inputs) -> list[str]:
        references = decode_references(strategy.mb_y)
        scored.extend(references)
        return [rule_answer(reference) for reference in references]

    strategy.generate = generate
    benchmark = lm_benchmark(model, lm_tasks(NUM_TASKS, TEST_SIZE))
    results = strategy.eval(benchmark.test_stream)
    scores = {key: value for key, value in results.items() if key.startswith("ExactMatch")}

    lm_runner.process_commit = lambda *args: "test-commit"  # no git in the worker
    tasks = [InstructionTask(f"task{t}", "superni", examples[:4], examples) for t, examples in enumerate(lm_tasks(NUM_TASKS, 5))]
    record = run_lm(
        "seqlora",
        0,
        out_dir,
        tasks=tasks,
        model_name="tiny-llama",
        settings=LMSettings(batch_size=4, eval_batch_size=2, rank=2, alpha=4.0, max_prompt_tokens=40,
                            max_answer_tokens=6, max_new_tokens=3),
        model_factory=lambda: (tiny_llama(), char_tokenizer()),
        progress=False,
    )
    torch.save(
        {"rank": DistributedHelper.rank, "world": world, "scores": scores, "scored": scored, "record": record},
        f"{out_dir}/rank{DistributedHelper.rank}.pt",
    )
    shutdown_distributed()
