"""Instruction data as Avalanche experiences for language models.

Every dataset built here collates a list of examples into one mini-batch
``(inputs, targets, task_labels)``, so Avalanche's ``mb_x`` is ``inputs``, ``mb_y`` is
``targets`` and ``mb_task_id`` is ``task_labels``:

- ``inputs`` (:class:`BatchInputs`, a ``dict`` of tensors):

  - training keys (:data:`TRAINING_KEYS`), exactly what a Hugging Face model takes:
    ``input_ids``, ``attention_mask`` and ``labels``. Decoder-only: prompt + answer + eos,
    right padded, ``labels`` aligned with ``input_ids`` and ``-100`` on prompt and padding
    (the model shifts them itself). Encoder-decoder: ``input_ids`` is the prompt, ``labels``
    the answer + eos padded with ``-100``.
  - generation keys (:data:`GENERATION_KEYS`): ``gen_input_ids`` and ``gen_attention_mask``,
    the prompt alone, left padded for decoder-only models (generation continues at the right
    end), right padded for encoder-decoder models.

- ``targets``: the reference strings encoded by :func:`encode_references` (read them back with
  :func:`decode_references`): each example's answer, followed by its alternatives if it has any
  (joined by :func:`~avalanche_gainlora.scoring.join_answers`).
- ``task_labels``: one task label per example.

Padding is per mini-batch, and a mini-batch is collated from individual examples, so
Avalanche's replay loaders (which merge example indices of the current data and the memory
before collating) produce ordinary mini-batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from avalanche.benchmarks.scenarios import CLScenario, benchmark_from_datasets, with_task_labels
from avalanche.benchmarks.utils import AvalancheDataset, DataAttribute
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from avalanche_gainlora.scoring import join_answers

IGNORE_INDEX = -100
"""Label value that Hugging Face losses skip."""

TRAINING_KEYS = ("input_ids", "attention_mask", "labels")
"""Keys of :class:`BatchInputs` that the model's forward takes."""

GENERATION_KEYS = ("gen_input_ids", "gen_attention_mask")
"""Keys of :class:`BatchInputs` that hold the prompts for generation."""


@dataclass(frozen=True)
class InstructionExample:
    """One instruction-tuning example.

    :param prompt: the full prompt text the model sees (already formatted with the task definition).
    :param answer: the reference output the model should generate.
    :param alternatives: further acceptable outputs (SuperNI instances with several references):
        not trained on, but a prediction gets its best score over the answer and these.
    """

    prompt: str
    answer: str
    alternatives: tuple[str, ...] = ()

    @property
    def reference(self) -> str:
        """The string scored against: the answer and its alternatives."""
        return join_answers((self.answer, *self.alternatives))


class BatchInputs(dict):
    """The model inputs of one mini-batch: a ``dict`` from names to tensors.

    It moves with ``to(device)`` like a tensor, so Avalanche code written for tensor inputs
    (EWC's importance pass calls ``batch[0].to(device)``) accepts it.
    """

    def to(self, device: torch.device | str, non_blocking: bool = False) -> BatchInputs:
        """Copy with every tensor value moved to ``device``; other values are kept as they are.

        :param device: the target device.
        :param non_blocking: passed on to :meth:`torch.Tensor.to`.
        :return: a new :class:`BatchInputs`.
        """
        return BatchInputs(
            {
                key: value.to(device, non_blocking=non_blocking) if isinstance(value, Tensor) else value
                for key, value in self.items()
            }
        )


def encode_references(answers: Sequence[str]) -> Tensor:
    """Reference answers as a ``uint8`` tensor of UTF-8 bytes, one zero-padded row per answer.

    A tensor, unlike a list of strings, travels unchanged through everything Avalanche does
    with ``mb_y``: replay buffers, ``.to(device)``, ``len(mb_y)`` in the loss metrics.

    :param answers: the reference answers.
    :return: a tensor of shape ``(len(answers), longest answer in bytes)``.
    """
    encoded = [answer.encode("utf-8") for answer in answers]
    return _pad([list(row) for row in encoded], 0).to(torch.uint8)


def decode_references(targets: Tensor) -> list[str]:
    """The answers encoded by :func:`encode_references` (trailing NUL characters are lost).

    :param targets: the tensor made by :func:`encode_references`.
    :return: the reference answers, in batch order.
    """
    return [row.numpy().tobytes().rstrip(b"\0").decode("utf-8") for row in targets.cpu()]


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise a ``ValueError`` if the tokenizer cannot pad or end answers.

    :param tokenizer: the tokenizer to check.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-sequence token: set `tokenizer.eos_token`")
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "the tokenizer has no pad token, needed to batch examples: "
            "set `tokenizer.pad_token = tokenizer.eos_token` before building datasets or strategies"
        )


@dataclass(frozen=True)
class InstructionCollator:
    """``collate_fn`` of :func:`instruction_dataset`: pads examples into one mini-batch.

    Labels and attention masks come from sequence lengths, not from token ids, so a pad
    token equal to the eos token (GPT-2, LLaMA) still trains the model to stop.

    :param pad_token_id: id that fills ``input_ids`` and ``gen_input_ids``.
    :param is_encoder_decoder: layout of the training inputs (see the module docstring).
    """

    pad_token_id: int
    is_encoder_decoder: bool

    def __call__(self, items: Sequence[Sequence]) -> tuple[BatchInputs, Tensor, Tensor]:
        """Collate dataset items ``(prompt_ids, answer_ids, answer, ..., task_label)``.

        :param items: items of datasets built by :func:`instruction_dataset`.
        :return: ``(inputs, targets, task_labels)`` as described in the module docstring.
        """
        prompts = [list(item[0]) for item in items]
        answers = [list(item[1]) for item in items]
        if self.is_encoder_decoder:
            inputs, labels = prompts, answers
        else:
            inputs = [prompt + answer for prompt, answer in zip(prompts, answers)]
            labels = [[IGNORE_INDEX] * len(prompt) + answer for prompt, answer in zip(prompts, answers)]
        left = not self.is_encoder_decoder
        batch = BatchInputs(
            input_ids=_pad(inputs, self.pad_token_id),
            attention_mask=_mask(inputs),
            labels=_pad(labels, IGNORE_INDEX),
            gen_input_ids=_pad(prompts, self.pad_token_id, left=left),
            gen_attention_mask=_mask(prompts, left=left),
        )
        references = encode_references([item[2] for item in items])
        return batch, references, torch.tensor([item[-1] for item in items])


def instruction_dataset(
    examples: Sequence[InstructionExample],
    tokenizer: PreTrainedTokenizerBase,
    *,
    task_label: int,
    is_encoder_decoder: bool,
    max_prompt_tokens: int,
    max_answer_tokens: int,
) -> AvalancheDataset:
    """Tokenise the examples of one task, once, into an Avalanche dataset.

    A prompt longer than ``max_prompt_tokens`` (special tokens included) loses tokens at its
    beginning: the end holds the input and the ``Output:`` cue the answer follows. An answer
    longer than ``max_answer_tokens`` (eos included) loses its end; this shortens only the
    training labels, the reference strings used for scoring stay complete.

    :param examples: the task's examples.
    :param tokenizer: a tokenizer with pad and eos tokens.
    :param task_label: task label of every example (``targets_task_labels``).
    :param is_encoder_decoder: ``model.config.is_encoder_decoder`` of the model to train.
    :param max_prompt_tokens: token budget of a prompt.
    :param max_answer_tokens: token budget of an answer, eos included.
    :return: a dataset whose ``collate_fn`` builds the mini-batches described in the module docstring.
    """
    if not examples:
        raise ValueError(f"task {task_label} has no examples: give every task at least one InstructionExample")
    check_tokenizer(tokenizer)
    if max_answer_tokens < 2:
        raise ValueError(
            f"max_answer_tokens={max_answer_tokens} leaves no room for an answer token and eos: use at least 2"
        )
    prompts = tokenizer([example.prompt for example in examples], return_special_tokens_mask=True)
    answers = tokenizer([example.answer for example in examples], add_special_tokens=False)["input_ids"]
    items = [
        (
            _keep_end(prompt_ids, special_mask, max_prompt_tokens),
            tuple(answer_ids[: max_answer_tokens - 1]) + (tokenizer.eos_token_id,),
            example.reference,
        )
        for prompt_ids, special_mask, answer_ids, example in zip(
            prompts["input_ids"], prompts["special_tokens_mask"], answers, examples
        )
    ]
    task_labels = DataAttribute([task_label] * len(items), name="targets_task_labels", use_in_getitem=True)
    return AvalancheDataset(
        [items],
        data_attributes=[task_labels],
        collate_fn=InstructionCollator(tokenizer.pad_token_id, is_encoder_decoder),
    )


def instruction_benchmark(
    train_tasks: Sequence[Sequence[InstructionExample]],
    test_tasks: Sequence[Sequence[InstructionExample]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    is_encoder_decoder: bool,
    max_prompt_tokens: int,
    max_answer_tokens: int,
) -> CLScenario:
    """A benchmark with one experience per task and task label ``i`` for task ``i``.

    :param train_tasks: training examples of each task, in task order.
    :param test_tasks: test examples of each task, in the same order.
    :param tokenizer: a tokenizer with pad and eos tokens.
    :param is_encoder_decoder: ``model.config.is_encoder_decoder`` of the model to train.
    :param max_prompt_tokens: token budget of a prompt (see :func:`instruction_dataset`).
    :param max_answer_tokens: token budget of an answer, eos included.
    :return: a task-aware scenario with ``train_stream`` and ``test_stream``.
    """
    if not train_tasks or len(train_tasks) != len(test_tasks):
        raise ValueError(
            f"got {len(train_tasks)} training and {len(test_tasks)} test tasks: "
            "give the same, non-zero number of both, in the same task order"
        )

    def datasets(tasks: Sequence[Sequence[InstructionExample]]) -> list[AvalancheDataset]:
        return [
            instruction_dataset(
                examples,
                tokenizer,
                task_label=label,
                is_encoder_decoder=is_encoder_decoder,
                max_prompt_tokens=max_prompt_tokens,
                max_answer_tokens=max_answer_tokens,
            )
            for label, examples in enumerate(tasks)
        ]

    return with_task_labels(benchmark_from_datasets(train=datasets(train_tasks), test=datasets(test_tasks)))


def _keep_end(ids: list[int], special_mask: list[int], max_tokens: int) -> tuple[int, ...]:
    """Drop text tokens from the start of ``ids`` until it fits, keeping special tokens at both ends."""
    leading = _count_leading(special_mask)
    trailing = _count_leading(special_mask[leading:][::-1])
    budget = max_tokens - leading - trailing
    if budget < 1:
        raise ValueError(
            f"max_prompt_tokens={max_tokens} leaves no room for prompt text next to the tokenizer's "
            f"{leading + trailing} special tokens: raise max_prompt_tokens"
        )
    text = ids[leading : len(ids) - trailing]
    return tuple(ids[:leading] + text[-budget:] + ids[len(ids) - trailing :])


def _count_leading(flags: Sequence[int]) -> int:
    """Number of leading ones in ``flags``."""
    count = 0
    while count < len(flags) and flags[count]:
        count += 1
    return count


def _pad(rows: Sequence[Sequence[int]], value: int, *, left: bool = False) -> Tensor:
    """Rows of different lengths as one ``long`` tensor, filled with ``value``."""
    width = max((len(row) for row in rows), default=0)
    padded = torch.full((len(rows), width), value, dtype=torch.long)
    for index, row in enumerate(rows):
        start = width - len(row) if left else 0
        padded[index, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
    return padded


def _mask(rows: Sequence[Sequence[int]], *, left: bool = False) -> Tensor:
    """Attention mask of :func:`_pad` applied to ``rows``: 1 on tokens, 0 on padding."""
    return _pad([[1] * len(row) for row in rows], 0, left=left)
