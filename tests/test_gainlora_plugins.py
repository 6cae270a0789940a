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
    gainlora = GainLoRAPlugin(inflora, hidden=24, threshold=1.0, rule="gpm")
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
        plugins=[gainlora, probe, DesignProbe()],
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
    gainlora = GainLoRAPlugin(OLoRAPlugin(branches, lambda1=0.5), hidden=8, threshold=0.99)
    checked = []

    class GradientProbe(SupervisedPlugin):
        def after_backward(self, strategy, **kwargs):
            current = branches.num_branches - 1
            allowed = {id(p) for p in branches.parameters(current)} | {id(p) for p in gainlora.gates.current.parameters()}
            with_grad = {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
            assert with_grad <= allowed
            assert {id(p) for p in branches.up(current).values()} <= with_grad
            checked.append(current)

    strategy = lm_strategy(model, lr=1e-2, plugins=[gainlora, GradientProbe()], train_mb_size=2)
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
    gainlora = GainLoRAPlugin(InfLoRAPlugin(branches), hidden=8)
    strategy = lm_strategy(model, lr=1e-2, plugins=[gainlora])
    _train(strategy, benchmark, evaluate=False)
    with torch.no_grad():
        for index in range(2):  # make the branches matter for generation
            for up in branches.up(index).values():
                up.add_(torch.randn_like(up))
    batch = benchmark.test_stream[1].dataset.collate_fn([benchmark.test_stream[1].dataset[i] for i in range(4)])[0]
    expected = strategy.generate(batch)
    torch.save(gainlora.state_dict(), tmp_path / "gainlora.pt")  # one state: the base's with the gates'

    fresh = tiny_llama()  # same seed: same base weights, no branches
    restored_plugin = GainLoRAPlugin(InfLoRAPlugin(LoraBranches(fresh, rank=2, alpha=4)), hidden=8)
    restored_plugin.load_state_dict(torch.load(tmp_path / "gainlora.pt", weights_only=False))
    restored = lm_strategy(fresh, plugins=[restored_plugin])
    assert restored.generate(batch) == expected
    assert restored_plugin.diagnostics == gainlora.diagnostics and gainlora.diagnostics
    assert restored_plugin.base.diagnostics == gainlora.base.diagnostics and gainlora.base.diagnostics
    for name, basis in gainlora.base.memory.bases.items():
        torch.testing.assert_close(restored_plugin.base.memory.bases[name], basis, atol=0, rtol=0)
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
    torch.testing.assert_close(fresh(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


def test_state_saved_before_the_first_task_loads_and_trains():
    model = tiny_llama()
    benchmark = lm_benchmark(model, lm_tasks(1, size=2))
    branches = LoraBranches(model, rank=2, alpha=4)
    state = GainLoRAPlugin(InfLoRAPlugin(branches), hidden=8).state_dict()
    fresh_branches = LoraBranches(model, rank=2, alpha=4)
    gainlora = GainLoRAPlugin(InfLoRAPlugin(fresh_branches), hidden=8)
    gainlora.load_state_dict(state)
    lm_strategy(model, plugins=[gainlora]).train(benchmark.train_stream[0])
    assert fresh_branches.num_branches == 1 and len(gainlora.gates) == 1


def test_gainlora_state_without_the_base_part_is_refused():
    branches = LoraBranches(tiny_llama(), rank=2, alpha=4)
    state = GainLoRAPlugin(OLoRAPlugin(branches), hidden=8).state_dict()
    del state["base"]  # what the former GainLoRAPlugin(branches) saved
    fresh = GainLoRAPlugin(OLoRAPlugin(LoraBranches(tiny_llama(), rank=2, alpha=4)), hidden=8)
    with pytest.raises(ValueError, match="no 'base' entry"):
        fresh.load_state_dict(state)


@pytest.mark.parametrize("base", ["branches", "seqlora", "gainlora"])
def test_gainlora_on_anything_but_olora_or_inflora_is_rejected(base):
    branches = LoraBranches(tiny_llama(), rank=2, alpha=4)
    given = {
        "branches": lambda: branches,  # the former GainLoRAPlugin(branches)
        "seqlora": lambda: SeqLoRAPlugin(branches),
        "gainlora": lambda: GainLoRAPlugin(OLoRAPlugin(branches)),
    }[base]()
    with pytest.raises(TypeError, match="must be an OLoRAPlugin or InfLoRAPlugin instance"):
        GainLoRAPlugin(given)


def test_gainlora_on_a_base_that_overrides_before_training_exp_is_rejected():
    class EagerInfLoRA(InfLoRAPlugin):
        def before_training_exp(self, strategy, *args, **kwargs):
            super().before_training_exp(strategy, *args, **kwargs)

    with pytest.raises(TypeError, match="override add_experience_branch or init_branch instead"):
        GainLoRAPlugin(EagerInfLoRA(LoraBranches(tiny_llama(), rank=2, alpha=4)))


@pytest.mark.parametrize("position", ["before", "after"])
def test_base_also_in_the_plugin_list_is_rejected(position):
    model = tiny_llama()
    benchmark = lm_benchmark(model, lm_tasks(1, size=2))
    base = InfLoRAPlugin(LoraBranches(model, rank=2, alpha=4))
    gainlora = GainLoRAPlugin(base, hidden=8)
    plugins = [base, gainlora] if position == "before" else [gainlora, base]
    strategy = lm_strategy(model, plugins=plugins)
    with pytest.raises(ValueError, match=r"would run twice: pass it only as GainLoRAPlugin\(base=\.\.\.\)"):
        strategy.train(benchmark.train_stream[0])


def _count_optimizer_builds(strategy, plugin) -> tuple[list[int], list[int]]:
    """Wrap ``strategy.make_optimizer`` and ``plugin.before_training_exp``: the training experience of
    every optimizer build, and the number of builds inside the plugin's hook per experience."""
    builds: list[int] = []
    in_hook: list[int] = []
    make_optimizer, hook = strategy.make_optimizer, plugin.before_training_exp

    def counted_make_optimizer(*args, **kwargs):
        builds.append(strategy.experience.current_experience)
        return make_optimizer(*args, **kwargs)

    def counted_hook(strategy, *args, **kwargs):
        before = len(builds)
        hook(strategy, *args, **kwargs)
        in_hook.append(len(builds) - before)

    strategy.make_optimizer, plugin.before_training_exp = counted_make_optimizer, counted_hook
    return builds, in_hook


@pytest.mark.parametrize(
    "method",
    [
        lambda b: SeqLoRAPlugin(b),
        lambda b: OLoRAPlugin(b),
        lambda b: InfLoRAPlugin(b),
        lambda b: GainLoRAPlugin(OLoRAPlugin(b), hidden=8),
        lambda b: GainLoRAPlugin(InfLoRAPlugin(b), hidden=8),
    ],
    ids=["seqlora", "olora", "inflora", "gainlora_olora", "gainlora_inflora"],
)
def test_optimizer_rebuilt_once_per_experience_by_the_method(method):
    model = tiny_llama()
    benchmark = lm_benchmark(model, lm_tasks(3, size=2))
    plugin = method(LoraBranches(model, rank=2, alpha=4))
    strategy = lm_strategy(model, plugins=[plugin])
    builds, in_hook = _count_optimizer_builds(strategy, plugin)
    _train(strategy, benchmark, evaluate=False)
    # One rebuild per new branch (and gate); SeqLoRA adds its single branch on the first experience.
    assert in_hook == ([1, 0, 0] if isinstance(plugin, SeqLoRAPlugin) else [1, 1, 1])
    # Avalanche's own builds: two on the first experience (the first one maps the parameters), then one.
    assert [builds.count(e) - n for e, n in enumerate(in_hook)] == [2, 1, 1]
    optimized = {id(p) for group in strategy.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in model.parameters() if p.requires_grad} <= optimized


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
    strategy = lm_strategy(model, lr=1e-2, plugins=[GainLoRAPlugin(OLoRAPlugin(branches), hidden=8)])
    strategy.train(benchmark.train_stream[0])
    with torch.no_grad():
        for up in branches.up(0).values():
            up.add_(torch.randn_like(up))
    batch = benchmark.test_stream[0].dataset.collate_fn([benchmark.test_stream[0].dataset[i] for i in range(4)])[0]
    expected = strategy.generate(batch)
    save_checkpoint(strategy, str(tmp_path / "checkpoint.pkl"))  # avalanche_gpm.checkpoint: with the optimizer

    fresh = tiny_llama()
    fresh_branches = LoraBranches(fresh, rank=2, alpha=4)
    template = lm_strategy(fresh, plugins=[GainLoRAPlugin(OLoRAPlugin(fresh_branches), hidden=8)])
    restored, next_experience = maybe_load_checkpoint(template, str(tmp_path / "checkpoint.pkl"))
    assert next_experience == 1
    assert restored.generate(batch) == expected
    gainlora = next(p for p in restored.plugins if isinstance(p, GainLoRAPlugin))
    assert len(gainlora.gates) == 1 and gainlora.memory.bases["down"] is not None
    assert not any(isinstance(p, OLoRAPlugin) for p in restored.plugins)  # the base travels inside GainLoRA
    restored.train(benchmark.train_stream[1])  # training goes on with the restored plugin
    assert gainlora.branches.num_branches == 2 and len(gainlora.gates) == 2
    assert gainlora.branches is gainlora.base.branches


def test_state_grown_with_another_energy_rule_is_refused():
    model = tiny_llama()
    benchmark = lm_benchmark(model, lm_tasks(1, size=4))
    branches = LoraBranches(model, rank=2, alpha=4)
    gainlora = GainLoRAPlugin(InfLoRAPlugin(branches), hidden=8)
    _train(lm_strategy(model, plugins=[gainlora]), benchmark, evaluate=False)
    base_rule = GainLoRAPlugin(InfLoRAPlugin(LoraBranches(tiny_llama(), rank=2, alpha=4), rule="gpm"), hidden=8)
    gate_rule = GainLoRAPlugin(InfLoRAPlugin(LoraBranches(tiny_llama(), rank=2, alpha=4)), hidden=8, rule="gpm")
    for plugin in (base_rule, gate_rule):
        with pytest.raises(ValueError, match="'covariance' energy rule but this memory uses 'gram'"):
            plugin.load_state_dict(gainlora.state_dict())


def test_gates_stay_float32_under_bf16_autocast():
    model = tiny_llama()
    benchmark = lm_benchmark(model, lm_tasks(2, size=4))
    branches = LoraBranches(model, rank=2, alpha=4)
    dtypes = []

    class WeightProbe(SupervisedPlugin):
        def before_backward(self, strategy, **kwargs):
            dtypes.append(branches.weights.values.dtype)

    plugins = [GainLoRAPlugin(InfLoRAPlugin(branches), hidden=8), WeightProbe()]
    _train(lm_strategy(model, plugins=plugins, precision="bf16"), benchmark, evaluate=False)
    assert dtypes and set(dtypes) == {torch.float32}
