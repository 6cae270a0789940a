"""Generation throughput of ``LanguageModelStrategy.generate`` with GainLoRA branches against plain ``model.generate``.

For each model (the tiny LLaMA and SmolLM2-135M-Instruct of :mod:`benchmarks.gainlora_step_cost`)
and each number of branches N (1, 5, 15), three sides generate answers to the same batch of 8
random prompts (16 to 32 token ids, left padded as the instruction collator pads generation
prompts) with the strategy's settings, greedy decoding of 16 new tokens:

* plain: the base model without branches, ``model.generate``;
* branches: a copy of it with N branches and gates set up as in training (as in
  :mod:`benchmarks.gainlora_step_cost`) and the router attached, ``model.generate``;
* ours: ``LanguageModelStrategy.generate`` on that same model, as in evaluation.

Ours / plain is the figure of the target. The branches side splits it in two: branches / plain is
the cost of the model itself (the router pooling the prompt and running N gates once per call,
every adapted layer adding N gated branches at every decoding step), ours / branches the
strategy's own (moving the prompts, switching eval mode, its forward pre-hook, cutting off the
prompts and decoding the answers to strings). The branches side runs with that pre-hook too, since
the strategy registers it on the model (one ``isinstance`` test per forward).

Every call generates exactly 16 tokens per prompt (``min_new_tokens`` equals ``max_new_tokens`` in
both models' generation config), so that an end-of-sequence token chosen early on one side cannot
make the sides do different work; tokens/s counts those generated tokens. The sides alternate in
short blocks and the median over blocks is reported, so that load on the machine affects all alike.

    python -m benchmarks.generation_throughput [--models tiny_llama,smollm2-135m-instruct] [--branches 1,5,15]
        [--rounds R] [--steps S] [--device cuda|cpu] [--out results/benchmarks]
"""

from __future__ import annotations

import copy
import statistics
import warnings
from collections.abc import Callable

import torch
from avalanche.training.plugins import EvaluationPlugin
from tokenizers import Tokenizer, models
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from avalanche_gainlora.strategy import LanguageModelStrategy
from benchmarks.gainlora_step_cost import (
    SMOLLM2,
    TINY,
    ModelCase,
    environment,
    gainlora_model,
    load_or_skip,
    parse_args,
    time_calls,
    tiny_llama,
    write_results,
)
from gpm_gainlora_experiments.lm.models import load_model_and_tokenizer

#: The issue's target: tokens/s of the strategy over tokens/s of plain ``model.generate``.
TARGET = 0.9
BATCH, MIN_PROMPT, MAX_PROMPT, NEW_TOKENS = 8, 16, 32, 16
CASES = (ModelCase(TINY, rounds=10, steps=3), ModelCase(SMOLLM2, rounds=3, steps=1))


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer for the tiny LLaMA's 128 ids: pad 0, eos 1, unk 2, then ``t3`` ... ``t127``."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"t{index}": index for index in range(3, 128)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def load(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The fp32 base model ``name`` on the CPU, and its tokenizer.

    :param name: :data:`TINY` or :data:`SMOLLM2`.
    :raises Exception: whatever loading SmolLM2 raises (package missing, file missing, ...).
    """
    return (tiny_llama(), tiny_tokenizer()) if name == TINY else load_model_and_tokenizer(name)


def prompt_batch(vocab_size: int, pad_token_id: int, seed: int, device: torch.device) -> dict[str, Tensor]:
    """:data:`BATCH` random prompts of :data:`MIN_PROMPT` to :data:`MAX_PROMPT` tokens, left padded.

    :param vocab_size: number of token ids of the model (special ids 0-2 are left out).
    :param pad_token_id: id that fills the padding.
    :param seed: seed of the prompts.
    :param device: where the tensors go.
    :return: the generation inputs of a mini-batch, ``gen_input_ids`` and ``gen_attention_mask``.
    """
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.full((BATCH, MAX_PROMPT), pad_token_id)
    attention_mask = torch.zeros(BATCH, MAX_PROMPT, dtype=torch.long)
    lengths = torch.randint(MIN_PROMPT, MAX_PROMPT + 1, (BATCH,), generator=generator)
    for row, length in enumerate(lengths.tolist()):
        input_ids[row, MAX_PROMPT - length :] = torch.randint(3, vocab_size, (length,), generator=generator)
        attention_mask[row, MAX_PROMPT - length :] = 1
    return {"gen_input_ids": input_ids.to(device), "gen_attention_mask": attention_mask.to(device)}


def evaluation_strategy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: torch.device
) -> LanguageModelStrategy:
    """A strategy that generates :data:`NEW_TOKENS` tokens per answer and logs nothing.

    :param model: the model with its branches and router.
    :param tokenizer: its tokenizer.
    :param device: where the model is.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin(loggers=[])
    return LanguageModelStrategy(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters()),
        tokenizer=tokenizer,
        eval_mb_size=BATCH,
        device=device,
        evaluator=evaluator,
        max_new_tokens=NEW_TOKENS,
    )


def measure(
    name: str,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    branches: int,
    *,
    rounds: int,
    steps: int,
    device: torch.device,
) -> dict:
    """Median tokens/s of the plain model, the branched model and the strategy over alternating blocks.

    :param name: model name in the row.
    :param base: the pristine base model (copied for each side).
    :param tokenizer: its tokenizer.
    :param branches: number of GainLoRA branches.
    :param rounds: alternating blocks of each side.
    :param steps: ``generate`` calls per block.
    :param device: where every side runs.
    """
    plain = copy.deepcopy(base).to(device).eval()
    branched = copy.deepcopy(base).to(device)
    gainlora_model(branched, branches, device)
    strategy = evaluation_strategy(branched, tokenizer, device)
    branched.eval()
    inputs = prompt_batch(base.config.vocab_size, tokenizer.pad_token_id, seed=branches, device=device)
    settings = {  # what LanguageModelStrategy.generate passes
        "do_sample": False,
        "num_beams": 1,
        "max_new_tokens": NEW_TOKENS,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    prompts = {"input_ids": inputs["gen_input_ids"], "attention_mask": inputs["gen_attention_mask"]}
    sides: dict[str, Callable[[], object]] = {
        "plain": lambda: plain.generate(**prompts, **settings),
        "branches": lambda: branched.generate(**prompts, **settings),
        "ours": lambda: strategy.generate(inputs),
    }
    for call in sides.values():  # warm-up
        time_calls(call, 1, device)
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(rounds):
        for side, call in sides.items():
            seconds[side].append(time_calls(call, steps, device))
    tokens_per_s = {side: BATCH * NEW_TOKENS / statistics.median(times) for side, times in seconds.items()}
    return {
        "model": name,
        "branches": branches,
        "batch": BATCH,
        "new_tokens": NEW_TOKENS,
        "plain_tokens_per_s": tokens_per_s["plain"],
        "branches_tokens_per_s": tokens_per_s["branches"],
        "ours_tokens_per_s": tokens_per_s["ours"],
        "ratio": tokens_per_s["ours"] / tokens_per_s["plain"],
        "branches_ratio": tokens_per_s["branches"] / tokens_per_s["plain"],
        "target": TARGET,
    }


def markdown(rows: list[dict], skipped: dict[str, str]) -> str:
    """The rows as a markdown table (misses of the target marked), then the skipped models.

    :param rows: the rows of :func:`measure`.
    :param skipped: model name -> why it was skipped.
    """
    lines = [
        "| model | branches | plain (tokens/s) | branches (tokens/s) | ours (tokens/s) | branches / plain "
        "| ours / plain | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        mark = "" if row["ratio"] >= row["target"] else " (missed)"
        lines.append(
            f"| {row['model']} | {row['branches']} | {row['plain_tokens_per_s']:.1f} "
            f"| {row['branches_tokens_per_s']:.1f} | {row['ours_tokens_per_s']:.1f} | {row['branches_ratio']:.2f} "
            f"| {row['ratio']:.2f}{mark} | >= {row['target']:.2f} |"
        )
    lines += [f"\nSkipped {name}: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (see the module docstring).

    :param argv: command-line arguments (``sys.argv`` when ``None``).
    """
    args = parse_args(argv, __doc__.split("\n\n")[0], "generation_throughput", CASES)
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    for case in CASES:
        if case.name not in args.models:
            continue
        loaded = load_or_skip(case.name, load, skipped)
        if loaded is None:
            continue
        base, tokenizer = loaded
        base.generation_config.min_new_tokens = NEW_TOKENS
        rounds, steps = args.rounds or case.rounds, args.steps or case.steps
        rows += [
            measure(case.name, base, tokenizer, n, rounds=rounds, steps=steps, device=args.device)
            for n in args.branches
        ]
    write_results(args.out, "generation_throughput", environment(args.device), rows, skipped, markdown(rows, skipped))


if __name__ == "__main__":
    main()
