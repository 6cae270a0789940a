"""Instruction datasets, LanguageModelStrategy and generation metrics on tiny LLaMA and T5 models."""

import peft
import pytest
import torch
from avalanche.benchmarks.scenarios import benchmark_from_datasets
from avalanche.training.plugins import EWCPlugin, ReplayPlugin, SupervisedPlugin
from tokenizers import processors

from avalanche_gainlora.data import (
    IGNORE_INDEX,
    InstructionExample,
    decode_references,
    encode_references,
    instruction_dataset,
)
from avalanche_gainlora.generation_metrics import generation_metrics
from avalanche_gainlora.scoring import join_answers
from avalanche_gainlora.strategy import LanguageModelStrategy
from tests.lm_fixtures import (
    char_tokenizer,
    lm_benchmark,
    lm_evaluator,
    lm_strategy,
    lm_tasks,
    score_matrix,
    tiny_llama,
    tiny_t5,
)

MODELS = {"llama": tiny_llama, "t5": tiny_t5}


def _collate(dataset):
    return dataset.collate_fn([dataset[i] for i in range(len(dataset))])


def _dataset(examples, tokenizer=None, *, is_encoder_decoder=False, max_prompt_tokens=64, max_answer_tokens=16):
    return instruction_dataset(
        examples,
        tokenizer or char_tokenizer(),
        task_label=2,
        is_encoder_decoder=is_encoder_decoder,
        max_prompt_tokens=max_prompt_tokens,
        max_answer_tokens=max_answer_tokens,
    )


# --- data ---------------------------------------------------------------------------------


def test_decoder_only_batch_masks_prompt_and_padding():
    tokenizer = char_tokenizer()
    examples = [InstructionExample("abc: ", "xy"), InstructionExample("a: ", "longer")]
    inputs, targets, task_labels = _collate(_dataset(examples, tokenizer))

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    short = ids("abc: ") + ids("xy") + [eos]
    long = ids("a: ") + ids("longer") + [eos]
    assert inputs["input_ids"].tolist() == [short + [pad] * (len(long) - len(short)), long]
    assert inputs["attention_mask"].sum(1).tolist() == [len(short), len(long)]
    assert inputs["labels"].tolist() == [
        [IGNORE_INDEX] * 5 + ids("xy") + [eos] + [IGNORE_INDEX] * (len(long) - len(short)),
        [IGNORE_INDEX] * 3 + ids("longer") + [eos],
    ]
    # Generation inputs: prompts only, left padded so that generation continues them.
    assert inputs["gen_input_ids"].tolist() == [ids("abc: "), [pad, pad] + ids("a: ")]
    assert inputs["gen_attention_mask"].tolist() == [[1] * 5, [0, 0, 1, 1, 1]]
    assert decode_references(targets) == ["xy", "longer"]
    assert task_labels.tolist() == [2, 2]


def test_encoder_decoder_batch_separates_prompt_and_answer():
    tokenizer = char_tokenizer()
    examples = [InstructionExample("abc: ", "xy"), InstructionExample("a: ", "longer")]
    inputs, _, _ = _collate(_dataset(examples, tokenizer, is_encoder_decoder=True))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("abc: ", "a: ")]
    assert inputs["input_ids"].tolist() == [prompts[0], prompts[1] + [pad, pad]]
    assert inputs["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    answers = [tokenizer(text, add_special_tokens=False)["input_ids"] + [eos] for text in ("xy", "longer")]
    assert inputs["labels"].tolist() == [answers[0] + [IGNORE_INDEX] * 4, answers[1]]
    assert torch.equal(inputs["gen_input_ids"], inputs["input_ids"])


def test_truncation_keeps_prompt_end_and_special_tokens():
    tokenizer = char_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="</s> $A </s>", special_tokens=[("</s>", tokenizer.eos_token_id)]
    )
    examples = [InstructionExample("0123456789 Output: ", "abcdef")]
    inputs, targets, _ = _collate(_dataset(examples, tokenizer, max_prompt_tokens=10, max_answer_tokens=3))
    prompt = inputs["gen_input_ids"][0].tolist()
    assert prompt[0] == prompt[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(prompt[1:-1]) == "Output: "
    answer = [token for token in inputs["labels"][0].tolist() if token != IGNORE_INDEX]
    assert tokenizer.decode(answer[:-1]) == "ab" and answer[-1] == tokenizer.eos_token_id
    assert decode_references(targets) == ["abcdef"]  # scoring sees the whole reference


def test_alternatives_travel_with_the_answer_but_are_not_trained_on():
    examples = [InstructionExample("q? ", "yes", alternatives=("yeah", "sure"))]
    inputs, targets, _ = _collate(_dataset(examples))
    assert decode_references(targets) == [join_answers(["yes", "yeah", "sure"])]
    plain_inputs, _, _ = _collate(_dataset([InstructionExample("q? ", "yes")]))
    assert torch.equal(inputs["labels"], plain_inputs["labels"])


def test_references_round_trip_unicode():
    answers = ["café ☕", "", "plain"]
    assert decode_references(encode_references(answers)) == answers


def test_benchmark_has_one_task_labelled_experience_per_task():
    benchmark = lm_benchmark(tiny_llama(), lm_tasks(3, 2))
    assert len(benchmark.train_stream) == len(benchmark.test_stream) == 3
    assert [experience.task_labels for experience in benchmark.test_stream] == [[0], [1], [2]]


# --- strategy -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_three_experiences_give_full_score_matrices(name):
    model = MODELS[name]()
    benchmark = lm_benchmark(model, lm_tasks(3, 8))
    strategy = lm_strategy(model)
    for experience in benchmark.train_stream:
        strategy.train(experience)
        strategy.eval(benchmark.test_stream)
    for metric in ("ExactMatch", "RougeL"):
        matrix = score_matrix(strategy.evaluator, metric, 3)
        assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
        assert all(0.0 <= score <= 100.0 for row in matrix for score in row)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_learns_a_fixed_answer_exactly(name):
    model = MODELS[name]()
    examples = [[InstructionExample(f"question {i}? Output: ", "ok!") for i in range(8)]]
    benchmark = lm_benchmark(model, examples)
    strategy = lm_strategy(model, lr=1e-2, train_mb_size=8, train_epochs=40)
    strategy.train(benchmark.train_stream[0])
    results = strategy.eval(benchmark.test_stream)
    assert results["ExactMatch_Exp/eval_phase/test_stream/Task000/Exp000"] == 100.0
    assert results["RougeL_Exp/eval_phase/test_stream/Task000/Exp000"] == pytest.approx(100.0)
    inputs, _, _ = _collate(benchmark.test_stream[0].dataset)
    assert strategy.generate(inputs) == ["ok!"] * 8


@pytest.mark.parametrize("reset", [True, False])
def test_each_experience_starts_a_fresh_optimizer_state_unless_told_not_to(reset):
    model = tiny_llama()
    steps = []

    class AdamStep(SupervisedPlugin):
        def before_update(self, strategy, **kwargs):
            state = strategy.optimizer.state.get(next(iter(model.parameters())), {})
            steps.append(int(state["step"]) if "step" in state else 0)

    benchmark = lm_benchmark(model, lm_tasks(2, 4))
    strategy = lm_strategy(model, evaluator=None, plugins=[AdamStep()], reset_optimizer_state=reset)
    for experience in benchmark.train_stream:
        strategy.train(experience)
    # One step per experience (4 examples, batch 4): Adam's count before each step.
    assert steps == ([0, 0] if reset else [0, 1])


def test_model_gets_training_keywords_only():
    model = tiny_llama()
    calls = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((args, sorted(kwargs))), with_kwargs=True
    )
    strategy = lm_strategy(model, evaluator=None)
    experience = lm_benchmark(model, lm_tasks(1, 4)).train_stream[0]
    strategy.train(experience)
    assert calls == [((), ["attention_mask", "input_ids", "labels"])]
    # Avalanche plugins call model(mb_x); the strategy's hook turns it into the same keywords.
    inputs, _, _ = _collate(experience.dataset)
    model(inputs)
    assert calls[-1] == ((), ["attention_mask", "input_ids", "labels"])


def test_strategies_built_on_one_model_share_one_keyword_hook():
    model = tiny_llama()
    before = len(model._forward_pre_hooks)
    lm_strategy(model, evaluator=None)
    lm_strategy(model, evaluator=None)
    assert len(model._forward_pre_hooks) == before + 1


def test_experiences_without_task_labels_still_collate():
    model = tiny_llama()
    dataset = lm_benchmark(model, lm_tasks(1, 4)).train_stream[0].dataset
    experience = benchmark_from_datasets(train=[dataset]).train_stream[0]
    assert not hasattr(experience, "task_labels")
    lm_strategy(model, evaluator=None).train(experience)


def test_ewc_runs_with_frozen_base_and_lora():
    model = tiny_llama()
    peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), model)
    base = {name: param.detach().clone() for name, param in model.named_parameters() if not param.requires_grad}
    ewc = EWCPlugin(ewc_lambda=10.0)
    benchmark = lm_benchmark(model, lm_tasks(3, 4))
    strategy = lm_strategy(model, plugins=[ewc], evaluator=None)
    for experience in benchmark.train_stream:
        strategy.train(experience)
    importances = ewc.importances[2]
    assert all(importances[name].data.abs().sum() == 0 for name in base)
    assert any(importances[name].data.abs().sum() > 0 for name in importances if "lora_" in name)
    assert all(torch.equal(param, base[name]) for name, param in model.named_parameters() if name in base)


class _BatchRecorder(SupervisedPlugin):
    """Task labels and decoded references of every training mini-batch, per experience."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def before_forward(self, strategy, **kwargs):
        labels = strategy.mb_x["labels"]
        self.batches.append(
            (
                strategy.clock.train_exp_counter,
                strategy.mb_task_id.tolist(),
                decode_references(strategy.mb_y),
                (labels != IGNORE_INDEX).sum(1).tolist(),
            )
        )


def test_replay_mixes_memory_into_training_batches():
    model = tiny_llama()
    recorder = _BatchRecorder()
    benchmark = lm_benchmark(model, lm_tasks(3, 4))
    strategy = lm_strategy(model, plugins=[ReplayPlugin(mem_size=4), recorder], evaluator=lm_evaluator())
    for experience in benchmark.train_stream:
        strategy.train(experience)
    strategy.eval(benchmark.test_stream)
    seen = {exp: set() for exp in range(3)}
    for exp, task_labels, references, answer_tokens in recorder.batches:
        seen[exp].update(task_labels)
        # Every example keeps its own reference and its answer + eos label span, whatever the padding.
        assert all(ref.startswith(f"a{task}") for task, ref in zip(task_labels, references))
        assert answer_tokens == [len(ref) + 1 for ref in references]
    assert seen == {0: {0}, 1: {0, 1}, 2: {0, 1, 2}}


# --- errors -------------------------------------------------------------------------------


def test_tokenizer_without_pad_token_is_rejected():
    tokenizer = char_tokenizer()
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match=r"tokenizer.pad_token = tokenizer.eos_token"):
        _dataset(lm_tasks(1, 2)[0], tokenizer)
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"tokenizer.pad_token = tokenizer.eos_token"):
        LanguageModelStrategy(model=model, optimizer=torch.optim.Adam(model.parameters()), tokenizer=tokenizer)


def test_task_without_examples_is_rejected():
    with pytest.raises(ValueError, match="task 2 has no examples"):
        _dataset([])


def test_empty_experience_is_rejected():
    model = tiny_llama()
    dataset = lm_benchmark(model, lm_tasks(1, 2)).train_stream[0].dataset
    experience = benchmark_from_datasets(train=[dataset.subset([])]).train_stream[0]
    with pytest.raises(ValueError, match="experience 0 has no examples"):
        lm_strategy(model, evaluator=None).train(experience)


def test_generation_metrics_need_a_score():
    with pytest.raises(ValueError, match="nothing to report"):
        generation_metrics(exact_match=False, rouge_l=False)


def test_data_built_for_another_architecture_is_rejected():
    benchmark = lm_benchmark(tiny_t5(), lm_tasks(1, 2))
    with pytest.raises(ValueError, match="is_encoder_decoder=True but the model has is_encoder_decoder=False"):
        lm_strategy(tiny_llama(), evaluator=None).train(benchmark.train_stream[0])


def test_gradients_are_clipped_before_every_step():
    model = tiny_llama()
    norms = []

    class NormAtStep(torch.optim.Adam):
        def step(self, closure=None):
            grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
            return super().step(closure)

    benchmark = lm_benchmark(model, lm_tasks(1, 8))
    for max_norm in (None, 1e-3):
        strategy = LanguageModelStrategy(
            model=model, optimizer=NormAtStep(model.parameters(), lr=1e-3), tokenizer=char_tokenizer(),
            train_mb_size=4, evaluator=None, max_grad_norm=max_norm,
        )  # fmt: skip
        strategy.train(benchmark.train_stream[0])
    unclipped, clipped = norms[:2], norms[2:]
    assert min(unclipped) > 1e-2 and max(clipped) <= 1e-3 * (1 + 1e-4)
    with pytest.raises(ValueError, match="max_grad_norm"):
        lm_strategy(tiny_llama(), max_grad_norm=0.0)


def test_bf16_autocast_trains_and_generates_with_float32_parameters():
    model = tiny_llama()
    dtypes = []
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    benchmark = lm_benchmark(model, lm_tasks(1, 4))
    strategy = lm_strategy(model, evaluator=None, precision="bf16")
    strategy.train(benchmark.train_stream[0])
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the forward ran under autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())
    inputs, _, _ = _collate(benchmark.test_stream[0].dataset)
    assert len(strategy.generate(inputs)) == len(inputs["gen_input_ids"])
    with pytest.raises(ValueError, match="precision must be one of"):
        lm_strategy(tiny_llama(), precision="fp16")
