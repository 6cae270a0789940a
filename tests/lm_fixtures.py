"""Tiny randomly initialised language models, a character tokenizer, and tiny instruction tasks and
strategies built on them, all in code (no download)."""

from __future__ import annotations

import string
import warnings

import torch
from avalanche.evaluation.metrics import loss_metrics
from avalanche.training.plugins import EvaluationPlugin
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from avalanche_gainlora.data import InstructionExample, instruction_benchmark
from avalanche_gainlora.generation_metrics import generation_metrics
from avalanche_gainlora.strategy import LanguageModelStrategy

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]


def char_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    """One token per printable ASCII character; pad id 0, eos id 1, unk id 2."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for char in string.printable:
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side=padding_side,
    )


def tiny_llama(vocab_size: int = 128, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer LLaMA with hidden size 32 (q_proj/v_proj adaptable)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(vocab_size: int = 128, seed: int = 0) -> GPT2LMHeadModel:
    """A 2-layer GPT-2 with n_embd 32: its fused ``c_attn`` is a transformers ``Conv1D``."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256, pad_token_id=0, eos_token_id=1)
    return GPT2LMHeadModel(config).eval()


def tiny_t5(vocab_size: int = 128, seed: int = 0) -> T5ForConditionalGeneration:
    """A T5 with 2 encoder and 2 decoder layers, d_model 32 (q/v adaptable)."""
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config).eval()


def lm_tasks(num_tasks: int, size: int) -> list[list[InstructionExample]]:
    """Task ``t`` has prompts of length growing with ``t`` and answers starting with ``a{t}``."""
    return [
        [InstructionExample(f"{'x' * (2 + 4 * t)} {t}.{i} Output: ", f"a{t}{i}") for i in range(size)]
        for t in range(num_tasks)
    ]


def lm_benchmark(model, tasks):
    return instruction_benchmark(
        tasks,
        tasks,
        char_tokenizer(),
        is_encoder_decoder=model.config.is_encoder_decoder,
        max_prompt_tokens=48,
        max_answer_tokens=8,
    )


def lm_evaluator() -> EvaluationPlugin:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(loss_metrics(experience=True), *generation_metrics(), loggers=[])


def lm_strategy(model, *, lr=1e-3, **kwargs) -> LanguageModelStrategy:
    kwargs.setdefault("evaluator", lm_evaluator())
    return LanguageModelStrategy(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=lr),
        tokenizer=char_tokenizer(),
        train_mb_size=kwargs.pop("train_mb_size", 4),
        eval_mb_size=8,
        max_new_tokens=kwargs.pop("max_new_tokens", 5),
        **kwargs,
    )


def score_matrix(evaluator: EvaluationPlugin, metric: str, num_tasks: int) -> list[list[float]]:
    """``matrix[l][j]``: score on test experience ``j`` after training experience ``l``."""
    metrics = evaluator.get_all_metrics()
    columns = [metrics[f"{metric}_Exp/eval_phase/test_stream/Task{j:03d}/Exp{j:03d}"][1] for j in range(num_tasks)]
    return [list(row) for row in zip(*columns)]
