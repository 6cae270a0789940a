"""GainLoRA, InfLoRA, O-LoRA and SeqLoRA plugins trained through LanguageModelStrategy on tiny models."""

from __future__ import annotations

import random
import string

import pytest
import torch
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EWCPlugin, SupervisedPlugin

from avalanche_gainlora.branches import LoraBranches
from avalanche_gainlora.data import InstructionExample
from avalanche_gainlora.plugins import GainLoRAPlugin, InfLoRAPlugin, OLoRAPlugin, SeqLoRAPlugin
from avalanche_gpm.checkpoint import maybe_load_checkpoint, save_checkpoint
from tests.lm_fixtures import lm_benchmark, lm_evaluator, lm_strategy, lm_tasks, score_matrix, tiny_gpt2, tiny_llama, tiny_t5

MODELS = {"llama": tiny_llama, "t5": tiny_t5, "gpt2": tiny_gpt2}


def _all_inputs(experience) -> dict[str, torch.Tensor]:
    dataset = experience.dataset.eval()
    inputs = dataset.collate_fn([dataset[i] for i in range(len(dataset))])[0]
    return {key: inputs[key] for key in ("input_ids", "attention_mask", "labels")}


class GateProbe(SupervisedPlugin):
    """Records every gate's values on every earlier task's inputs at the start and end of each task."""

    def __init__(self, gainlora: GainLoRAPlugin, stream):
        super().__init__()
        self.gainlora = gainlora
        self.inputs = [_all_inputs(experience) for experience in stream]
        self.start: list[list[torch.Tensor]] = []
        self.end: list[list[torch.Tensor]] = []
        self.logits_start: list[list[torch.Tensor]] = []
        self.logits_end: list[list[torch.Tensor]] = []

    @torch.no_grad()
    def _gates(self, strategy, upto: int) -> list[torch.Tensor]:
        router = self.gainlora.router
        return [self.gainlora.gates(router.pooled(**self.inputs[j])).clone() for j in range(upto + 1)]

    @torch.no_grad()
    def _logits(self, strategy, upto: int) -> list[torch.Tensor]:
        model = strategy.model
        was_training = model.training
        model.eval()
        logits = [model(**self.inputs[j]).logits.clone() for j in range(upto)]
        model.train(was_training)
        return logits

    def before_training_exp(self, strategy, **kwargs):
        task = strategy.experience.current_experience
        self.start.append(self._gates(strategy, task))
        self.logits_start.append(self._logits(strategy, task))

    def after_training_exp(self, strategy, **kwargs):
        task = strategy.experience.current_experience
        self.end.append(self._gates(strategy, task))
        self.logits_end.append(self._logits(strategy, task))


def _distinct_tasks(num_tasks: int, size: int) -> list[list[InstructionExample]]:
    """Tasks whose prompts use disjoint alphabets, so that their pooled embeddings differ."""
    generator = random.Random(0)
    tasks = []
    for task in range(num_tasks):
        alphabet = string.ascii_letters[6 * task : 6 * task + 6]
        prompts = ["".join(generator.choices(alphabet, k=10)) + " Output: " for _ in range(size)]
        tasks.append([InstructionExample(prompt, f"{task}{prompt[0]}") for prompt in prompts])
    return tasks


def _train(strategy, benchmark, *, evaluate: bool = True) -> None:
    for experience in benchmark.train_stream:
        strategy.train(experience)
        if evaluate:
            strategy.eval(benchmark.test_stream)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_gainlora_inflora_keeps_old_inputs_routed_away_from_new_branches(kind):
    RNGManager.set_random_seeds(0)
    model = MODELS[kind]()
    benchmark = lm_benchmark(model, _distinct_tasks(3, size=6))
    branches = LoraBranches(model, rank=2, alpha=4)
    inflora = InfLoRAPlugin(branches, threshold=0.99)
    # GPM's rule keeps the exact span at threshold 1.0 (the official rule drops the last direction)
    gainlora = GainLoRAPlugin(branches, hidden=24, threshold=1.0, rule="gpm")
    probe = GateProbe(gainlora, benchmark.train_stream)
    overlaps = []

    class DesignProbe(SupervisedPlugin):
        """|A_t M| of every layer right after InfLoRA designed A_t from the old bases M."""

        def before_training_exp(self, strategy, **kwargs):
            task = branches.num_branches - 1
            if task > 0:
                downs = branches.down(task)
                overlaps.append(
                    max(float((downs[n].detach().double() @ b).abs().max()) for n, b in inflora.memory.bases.items())
                )

    evaluator = lm_evaluator()
    strategy = lm_strategy(
        model,
        lr=1e-2,
        plugins=[inflora, gainlora, probe, DesignProbe()],
        evaluator=evaluator,
        train_epochs=4,
        max_new_tokens=3,
    )
    _train(strategy, benchmark)

    for task in range(1, 3):
        start, end = probe.start[task], probe.end[task]
        for old in range(task):
            # The new gate starts switched off on old inputs (threshold 1.0: exact subspaces)...
            assert start[old][:, task].abs().max() < 1e-3
            # ...and training the new task moves no gate value on old inputs.
            torch.testing.assert_close(end[old], start[old], atol=1e-4, rtol=0)
            torch.testing.assert_close(probe.logits_end[task][old], probe.logits_start[task][old], atol=1e-3, rtol=0)
        assert (end[task][:, task] - start[task][:, task]).abs().max() > 1e-3  # the new gate did train
    assert len(overlaps) == 2 and max(overlaps) < 1e-6  # InfLoRA: A_t outside the old input subspaces

    for metric in ("ExactMatch", "RougeL"):
        matrix = score_matrix(evaluator, metric, 3)
        assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)


def test_gainlora_olora_penalises_overlap_and_trains_only_the_current_branch_and_gate():
    RNGManager.set_random_seeds(0)
    model = tiny_llama()
    benchmark = lm_benchmark(model, lm_tasks(12, size=2))
    branches = LoraBranches(model, rank=2, alpha=4)
    olora = OLoRAPlugin(branches, lambda1=0.5)
    gainlora = GainLoRAPlugin(branches, hidden=8, threshold=0.99)
    checked = []

    class GradientProbe(SupervisedPlugin):
        def after_backward(self, strategy, **kwargs):
            current = branches.num_branches - 1
            allowed = {id(p) for p in branches.parameters(current)} | {id(p) for p in gainlora.gates.current.parameters()}
            with_grad = {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
            assert with_grad <= allowed
            assert {id(p) for p in branches.up(current).values()} <= with_grad
            checked.append(current)

    strategy = lm_strategy(model, lr=1e-2, plugins=[olora, gainlora, GradientProbe()], train_mb_size=2)
    losses = []

    class PenaltyProbe(SupervisedPlugin):
        def before_backward(self, strategy, **kwargs):
            losses.append((branches.num_branches - 1, float(strategy.loss), float(strategy.mb_output.loss)))

    strategy.plugins.append(PenaltyProbe())
    _train(strategy, benchmark, evaluate=False)
    assert sorted(set(checked)) == list(range(12))
    assert len(gainlora.gates) == branches.num_branches == 12
    # From the second task on the loss carries O-LoRA's penalty on top of the model's loss.
    assert {task for task, _, _ in losses} == set(range(12)), "the probe saw every task"
    assert all(total == pytest.approx(lm) for task, total, lm in losses if task == 0)
    assert all(total > lm for task, total, lm in losses if task > 0)


def test_state_round_trip_reproduces_generations(tmp_path):
    RNGManager.set_random_seeds(0)
    model = tiny_llama()
    benchmark = lm_benchmark(model, lm_tasks(2, size=4))
    branches = LoraBranches(model, rank=2, alpha=4)
    plugins = [InfLoRAPlugin(branches), GainLoRAPlugin(branches, hidden=8)]
    strategy = lm_strategy(model, lr=1e-2, plugins=plugins)
    _train(strategy, benchmark, evaluate=False)
    with torch.no_grad():
        for index in range(2):  # make the branches matter for generation
            for up in branches.up(index).values():
                up.add_(torch.randn_like(up))
    batch = benchmark.test_stream[1].dataset.collate_fn([benchmark.test_stream[1].dataset[i] for i in range(4)])[0]
    expected = strategy.generate(batch)
    torch.save([plugin.state_dict() for plugin in plugins], tmp_path / "plugins.pt")

    fresh = tiny_llama()  # same seed: same base weights, no branches
    fresh_branches = LoraBranches(fresh, rank=2, alpha=4)
    fresh_plugins = [InfLoRAPlugin(fresh_branches), GainLoRAPlugin(fresh_branches, hidden=8)]
    for plugin, state in zip(fresh_plugins, torch.load(tmp_path / "plugins.pt", weights_only=False)):
        plugin.load_state_dict(state)
    restored = lm_strategy(fresh, plugins=fresh_plugins)
    assert restored.generate(batch) == expected
    assert [p.diagnostics for p in fresh_plugins] == [p.diagnostics for p in plugins] and plugins[1].diagnostics
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
    torch.testing.assert_close(fresh(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


def test_state_saved_before_the_first_task_loads_and_trains():
    model = tiny_llama()
    benchmark = lm_benchmark(model, lm_tasks(1, size=2))
    branches = LoraBranches(model, rank=2, alpha=4)
    state = [plugin.state_dict() for plugin in (InfLoRAPlugin(branches), GainLoRAPlugin(branches, hidden=8))]
    fresh_branches = LoraBranches(model, rank=2, alpha=4)
    plugins = [InfLoRAPlugin(fresh_branches), GainLoRAPlugin(fresh_branches, hidden=8)]
    for plugin, saved in zip(plugins, state):
        plugin.load_state_dict(saved)
    lm_strategy(model, plugins=plugins).train(benchmark.train_stream[0])
    assert fresh_branches.num_branches == 1 and len(plugins[1].gates) == 1


def test_gainlora_without_a_branch_plugin_is_rejected():
    model = tiny_llama()
    benchmark = lm_benchmark(model, lm_tasks(1, size=2))
    branches = LoraBranches(model, rank=2, alpha=4)
    strategy = lm_strategy(model, plugins=[GainLoRAPlugin(branches)])
    with pytest.raises(RuntimeError, match="put a branch plugin"):
        strategy.train(benchmark.train_stream[0])


def test_seqlora_keeps_one_branch_and_runs_with_avalanche_ewc():
    RNGManager.set_random_seeds(0)
    model = tiny_llama()
    benchmark = lm_benchmark(model, lm_tasks(3, size=2))
    branches = LoraBranches(model, rank=2, alpha=4)
    ewc = EWCPlugin(ewc_lambda=1.0)
    strategy = lm_strategy(model, lr=1e-2, plugins=[SeqLoRAPlugin(branches), ewc])
    _train(strategy, benchmark, evaluate=False)
    assert branches.num_branches == 1
    assert all(p.requires_grad for p in branches.parameters(0))
    # EWC saw the branch: its importances reach the LoRA weights, the only trainable ones.
    importances = ewc.importances[2]
    assert any("lora_" in name and imp.data.abs().sum() > 0 for name, imp in importances.items())
    assert all(imp.data.abs().sum() == 0 for name, imp in importances.items() if "lora_" not in name)


def test_avalanche_checkpoint_restores_branches_gates_and_bases(tmp_path):
    RNGManager.set_random_seeds(0)
    model = tiny_llama()
    benchmark = lm_benchmark(model, lm_tasks(2, size=4))
    branches = LoraBranches(model, rank=2, alpha=4)
    strategy = lm_strategy(model, lr=1e-2, plugins=[OLoRAPlugin(branches), GainLoRAPlugin(branches, hidden=8)])
    strategy.train(benchmark.train_stream[0])
    with torch.no_grad():
        for up in branches.up(0).values():
            up.add_(torch.randn_like(up))
    batch = benchmark.test_stream[0].dataset.collate_fn([benchmark.test_stream[0].dataset[i] for i in range(4)])[0]
    expected = strategy.generate(batch)
    save_checkpoint(strategy, str(tmp_path / "checkpoint.pkl"))  # avalanche_gpm.checkpoint: with the optimizer

    fresh = tiny_llama()
    fresh_branches = LoraBranches(fresh, rank=2, alpha=4)
    template = lm_strategy(fresh, plugins=[OLoRAPlugin(fresh_branches), GainLoRAPlugin(fresh_branches, hidden=8)])
    restored, next_experience = maybe_load_checkpoint(template, str(tmp_path / "checkpoint.pkl"))
    assert next_experience == 1
    assert restored.generate(batch) == expected
    gainlora = next(p for p in restored.plugins if isinstance(p, GainLoRAPlugin))
    assert len(gainlora.gates) == 1 and gainlora.memory.bases["down"] is not None
    restored.train(benchmark.train_stream[1])  # training goes on with the restored plugins
    assert gainlora.branches.num_branches == 2 and len(gainlora.gates) == 2


def test_state_grown_with_another_energy_rule_is_refused():
    model = tiny_llama()
    benchmark = lm_benchmark(model, lm_tasks(1, size=4))
    branches = LoraBranches(model, rank=2, alpha=4)
    plugins = [InfLoRAPlugin(branches), GainLoRAPlugin(branches, hidden=8)]
    _train(lm_strategy(model, plugins=plugins), benchmark, evaluate=False)
    fresh = LoraBranches(tiny_llama(), rank=2, alpha=4)
    with pytest.raises(ValueError, match="'covariance' energy rule but this memory uses 'gram'"):
        InfLoRAPlugin(fresh, rule="gpm").load_state_dict(plugins[0].state_dict())
    with pytest.raises(ValueError, match="'covariance' energy rule but this memory uses 'gram'"):
        GainLoRAPlugin(fresh, hidden=8, rule="gpm").load_state_dict(plugins[1].state_dict())


def test_gates_stay_float32_under_bf16_autocast():
    model = tiny_llama()
    benchmark = lm_benchmark(model, lm_tasks(2, size=4))
    branches = LoraBranches(model, rank=2, alpha=4)
    dtypes = []

    class WeightProbe(SupervisedPlugin):
        def before_backward(self, strategy, **kwargs):
            dtypes.append(branches.weights.values.dtype)

    plugins = [InfLoRAPlugin(branches), GainLoRAPlugin(branches, hidden=8), WeightProbe()]
    _train(lm_strategy(model, plugins=plugins, precision="bf16"), benchmark, evaluate=False)
    assert dtypes and set(dtypes) == {torch.float32}
