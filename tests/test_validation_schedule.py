"""The validation learning-rate schedule: decision rule, plugin inside Avalanche, presets and runner."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from avalanche.benchmarks import tensors_benchmark
from avalanche.models import MultiHeadClassifier, MultiTaskModule
from avalanche.training import JointTraining, Naive
from avalanche.training.plugins import SupervisedPlugin
from torch import nn

from avalanche_gpm import GPM
from gpm_gainlora_experiments.image.benchmarks import BENCHMARKS, CIFAR100_SCHEDULE, FIVE_DATASETS_SCHEDULE, BenchmarkSpec
from gpm_gainlora_experiments.image.hyperparams import Hyperparams, LRScheduleConfig
from gpm_gainlora_experiments.image.plugins import PlateauDecision, PlateauTracker, ValidationLRSchedule
from gpm_gainlora_experiments.image import batched_data
from gpm_gainlora_experiments.image import runner as runner_module
from gpm_gainlora_experiments.image.plugins import validation_schedule
from gpm_gainlora_experiments.image.runner import run
from gpm_gainlora_experiments.image.strategies import build_strategy
from tests.helpers import quiet_evaluator

NUM_CLASSES = 3
NUM_FEATURES = 8
IMPROVED, WAIT, DECAY, STOP = PlateauDecision


def tiny_benchmark(
    num_tasks: int = 2, *, adversarial: bool = False, valid_tasks: int | None = None, valid_size: int = 15
):
    """Gaussian-blob tasks with task labels ``0..num_tasks-1`` and a ``valid`` stream.

    :param adversarial: validate on training inputs with shifted labels, so that every epoch of
        training makes the validation loss worse than after the first one.
    :param valid_tasks: keep only the first ``valid_tasks`` validation experiences.
    :param valid_size: samples per validation experience.
    """
    generator = torch.Generator().manual_seed(0)
    train, test, valid = [], [], []
    for _ in range(num_tasks):
        means = 2 * torch.randn(NUM_CLASSES, NUM_FEATURES, generator=generator)

        def sample(size: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
            return means[y] + 0.5 * torch.randn(size, NUM_FEATURES, generator=generator), y

        train.append(sample(60))
        test.append(sample(30))
        x, y = train[-1]
        valid.append((x[:valid_size], (y[:valid_size] + 1) % NUM_CLASSES) if adversarial else sample(valid_size))
    return tensors_benchmark(
        train_tensors=train,
        test_tensors=test,
        other_streams_tensors={"valid": valid[:valid_tasks]},
        task_labels=list(range(num_tasks)),
    )


class TinyMultiHead(MultiTaskModule):
    """Shared bias-free layers and one head per task, grown by Avalanche's model adaptation."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(NUM_FEATURES, 16, bias=False), nn.ReLU(), nn.Dropout(dropout))
        self.head = MultiHeadClassifier(16)

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        return self.head(self.body(x), task_label)


class Recorder(SupervisedPlugin):
    """Per experience, for every epoch actually run: its learning rate, the weights and the mode after it."""

    def __init__(self):
        super().__init__()
        self.lrs: list[list[float]] = []
        self.states: list[list[dict[str, torch.Tensor]]] = []
        self.training_mode: list[bool] = []
        self._lr = math.nan

    def before_training_exp(self, strategy, **kwargs):
        self.lrs.append([])
        self.states.append([])

    def before_training_epoch(self, strategy, **kwargs):
        # Also called before the check that ends a stopped task, so the epoch is counted only after it ran.
        self._lr = strategy.optimizer.param_groups[0]["lr"]

    def after_training_epoch(self, strategy, **kwargs):
        self.lrs[-1].append(self._lr)
        self.states[-1].append(copy.deepcopy(strategy.model.state_dict()))
        self.training_mode.append(strategy.model.training)


def schedule_plugin(benchmark, **kwargs) -> ValidationLRSchedule:
    return ValidationLRSchedule(benchmark.valid_stream, **{"factor": 2.0, "patience": 2, "lr_min": 0.01, **kwargs})


def naive(model: nn.Module, plugins: list[SupervisedPlugin], *, lr: float = 0.05, epochs: int = 20) -> Naive:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return Naive(
        model=model,
        optimizer=optimizer,
        train_mb_size=10,
        train_epochs=epochs,
        evaluator=quiet_evaluator(),
        plugins=plugins,
    )


def script_losses(monkeypatch, plugin: ValidationLRSchedule, losses: list[float]) -> None:
    """Make the plugin see these validation losses, one per epoch, instead of measuring them."""
    remaining = iter(losses)
    monkeypatch.setattr(plugin, "_validation_loss", lambda strategy: next(remaining))


def assert_same_state(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    assert all(torch.equal(left[key], right[key]) for key in left)


# -- decision rule -----------------------------------------------------------------------------


def test_tracker_divides_after_patience_and_stops_below_minimum():
    tracker = PlateauTracker(factor=2.0, patience=2, lr_min=0.01)
    tracker.reset(lr=0.05)
    decisions = [tracker.step(loss) for loss in (1.0, 0.9, 0.95, 0.9, 0.8, 0.85, 0.85)]
    assert decisions == [IMPROVED, IMPROVED, WAIT, DECAY, IMPROVED, WAIT, DECAY]
    assert tracker.lr == pytest.approx(0.0125) and tracker.best_loss == 0.8
    # 0.0125 / 2 is below 0.01: stop, in the official order (divide, compare, and only then reset).
    assert [tracker.step(1.0), tracker.step(1.0)] == [WAIT, STOP]
    assert tracker.lr == pytest.approx(0.00625) and tracker.patience_left == 0


def test_tracker_keeps_a_rate_equal_to_the_minimum_and_never_improves_on_nan():
    tracker = PlateauTracker(factor=2.0, patience=1, lr_min=0.025)
    tracker.reset(lr=0.05)
    assert [tracker.step(math.nan), tracker.step(1.0), tracker.step(math.nan)] == [DECAY, IMPROVED, STOP]
    tracker.reset(lr=0.1)
    assert (tracker.lr, tracker.best_loss, tracker.patience_left) == (0.1, math.inf, 1)


@pytest.mark.parametrize(
    "kwargs", [{"factor": 1.0}, {"factor": math.nan}, {"patience": 0}, {"patience": 2.0}, {"lr_min": -1e-5}]
)
def test_tracker_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        PlateauTracker(**{"factor": 2.0, "patience": 6, "lr_min": 1e-5, **kwargs})


# -- the plugin in Avalanche -------------------------------------------------------------------


def test_validation_loss_is_the_sample_mean_of_the_task_head_in_eval_mode():
    benchmark = tiny_benchmark()
    model = TinyMultiHead(dropout=0.5)
    plugin, recorder = schedule_plugin(benchmark, eval_mb_size=4), Recorder()
    strategy = naive(model, [plugin, recorder], epochs=1)
    strategy.train(benchmark.train_stream[1])

    # Task 1 only: the loss must come from the head of task 1, with dropout off, averaged over the
    # 15 samples although the last of the 4-sample batches is short.
    dataset = benchmark.valid_stream[1].dataset
    inputs, labels, tasks = zip(*[dataset[i][:3] for i in range(len(dataset))])
    x, y, t = torch.stack(inputs), torch.tensor(labels), torch.tensor(tasks)
    model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(model(x, t), y).item()
    assert set(t.tolist()) == {1}
    assert plugin.tracker.best_loss == pytest.approx(expected, rel=1e-6)
    assert recorder.training_mode == [True], "training must resume in train mode after validation"


def test_validation_batches_by_tensor_gathers_give_the_data_loaders_loss(monkeypatch):
    def best_loss() -> float:
        torch.manual_seed(0)
        benchmark, model = tiny_benchmark(), TinyMultiHead()
        plugin = schedule_plugin(benchmark, eval_mb_size=4)
        naive(model, [plugin], epochs=1).train(benchmark.train_stream[1])
        return plugin.tracker.best_loss

    sources = []

    def recorded_source(datasets):
        sources.append(batched_data.tensor_source(datasets))
        return sources[-1]

    monkeypatch.setattr(validation_schedule, "tensor_source", recorded_source)
    batched = best_loss()

    def not_batchable(datasets):
        raise validation_schedule.NotBatchable("test")

    monkeypatch.setattr(validation_schedule, "tensor_source", not_batchable)
    assert sources and best_loss() == batched


def test_training_stops_once_the_rate_falls_below_the_minimum():
    benchmark = tiny_benchmark(adversarial=True)
    recorder = Recorder()
    strategy = naive(TinyMultiHead(), [schedule_plugin(benchmark), recorder], lr=0.05, epochs=20)
    strategy.train(benchmark.train_stream[0])
    # Epoch 1 is the best; 2 more epochs halve the rate, twice; the third halving (0.00625) is
    # below lr_min = 0.01, so the task ends after 7 of its 20 epochs.
    assert recorder.lrs == [pytest.approx([0.05] * 3 + [0.025] * 2 + [0.0125] * 2)]


def test_best_weights_are_restored_and_the_rate_reset_for_the_next_task(monkeypatch):
    benchmark = tiny_benchmark()
    model = TinyMultiHead()
    plugin, recorder = schedule_plugin(benchmark, patience=1, lr_min=0.0), Recorder()
    strategy = naive(model, [plugin, recorder], lr=0.05, epochs=4)
    script_losses(monkeypatch, plugin, [3.0, 1.0, 2.0, 2.0, 5.0, 4.0, 4.5, 4.5])

    strategy.train(benchmark.train_stream[0])
    assert recorder.lrs[0] == pytest.approx([0.05, 0.05, 0.05, 0.025])
    assert_same_state(model.state_dict(), recorder.states[0][1])
    assert strategy.optimizer.param_groups[0]["lr"] == 0.05

    # Task 2 adds a head: its best state (epoch 2) includes it, and its rate starts at 0.05 again.
    strategy.train(benchmark.train_stream[1])
    assert "head.classifiers.1.classifier.weight" in model.state_dict()
    assert recorder.lrs[1] == pytest.approx([0.05, 0.05, 0.05, 0.025])
    assert_same_state(model.state_dict(), recorder.states[1][1])
    assert not torch.equal(model.body[0].weight, recorder.states[1][-1]["body.0.weight"])


def test_weights_before_training_are_kept_when_no_epoch_improves(monkeypatch):
    benchmark = tiny_benchmark()
    model = TinyMultiHead()
    plugin = schedule_plugin(benchmark, patience=5)
    strategy = naive(model, [plugin], epochs=2)
    script_losses(monkeypatch, plugin, [math.nan, math.nan])
    before = copy.deepcopy(model.body.state_dict())
    with pytest.warns(RuntimeWarning, match="no epoch of experience 0 had a finite validation loss"):
        strategy.train(benchmark.train_stream[0])
    assert_same_state(model.body.state_dict(), before)


def test_a_stop_on_the_last_epoch_does_not_skip_the_next_experience(monkeypatch):
    benchmark = tiny_benchmark()
    plugin, recorder = schedule_plugin(benchmark, patience=1, lr_min=1.0), Recorder()
    strategy = naive(TinyMultiHead(), [plugin, recorder], epochs=2)
    script_losses(monkeypatch, plugin, [1.0, 2.0, 1.0, 0.5])
    strategy.train(benchmark.train_stream)  # both experiences in one call
    assert [len(lrs) for lrs in recorder.lrs] == [2, 2]


def test_gpm_builds_its_memory_from_the_restored_weights(monkeypatch):
    benchmark = tiny_benchmark(adversarial=True)
    model = TinyMultiHead()
    recorder = Recorder()
    strategy = GPM(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        threshold=0.9,
        num_samples=20,
        train_mb_size=10,
        train_epochs=4,
        evaluator=quiet_evaluator(),
        plugins=[schedule_plugin(benchmark, patience=10), recorder],
    )
    captured: list[dict[str, torch.Tensor]] = []
    capture = strategy.gpm._capture

    def spy(strategy_):
        captured.append(copy.deepcopy(strategy_.model.state_dict()))
        return capture(strategy_)

    monkeypatch.setattr(strategy.gpm, "_capture", spy)
    for experience in benchmark.train_stream:
        strategy.train(experience)

    assert strategy.gpm.experiences_learned == 2 and len(captured) == 2
    for task in range(2):
        # With shifted validation labels the first epoch is the best one.
        assert_same_state(captured[task], recorder.states[task][0])
        assert not torch.equal(captured[task]["body.0.weight"], recorder.states[task][-1]["body.0.weight"])


def test_missing_or_empty_validation_experiences_are_rejected():
    short = tiny_benchmark(valid_tasks=1)
    strategy = naive(TinyMultiHead(), [schedule_plugin(short)], epochs=1)
    strategy.train(short.train_stream[0])
    with pytest.raises(ValueError, match="validation stream has 1 experiences, too few for training experience 1"):
        strategy.train(short.train_stream[1])

    empty = tiny_benchmark(valid_size=0)
    strategy = naive(TinyMultiHead(), [schedule_plugin(empty)], epochs=1)
    with pytest.raises(ValueError, match="validation experience 0 is empty"):
        strategy.train(empty.train_stream[0])

    misaligned = tiny_benchmark()
    plugin = ValidationLRSchedule(misaligned.valid_stream[1:], factor=2.0, patience=2, lr_min=0.01)
    with pytest.raises(ValueError, match="not aligned"):
        naive(TinyMultiHead(), [plugin], epochs=1).train(misaligned.train_stream[0])

    with pytest.raises(ValueError, match="eval_mb_size"):
        schedule_plugin(misaligned, eval_mb_size=0)


def test_joint_training_is_rejected():
    benchmark = tiny_benchmark()
    model = TinyMultiHead()
    strategy = JointTraining(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=10,
        train_epochs=1,
        evaluator=quiet_evaluator(),
        plugins=[schedule_plugin(benchmark)],
    )
    with pytest.raises(ValueError, match="JointTraining"):
        strategy.train(benchmark.train_stream)


# -- presets and runner ------------------------------------------------------------------------


def test_presets_follow_the_papers_protocols():
    assert CIFAR100_SCHEDULE == LRScheduleConfig(factor=2.0, patience=6, lr_min=1e-5)
    assert FIVE_DATASETS_SCHEDULE == LRScheduleConfig(factor=3.0, patience=5, lr_min=1e-3)
    expected = {
        "split_cifar10": (CIFAR100_SCHEDULE, 0.01, 5),
        "split_cifar100": (CIFAR100_SCHEDULE, 0.01, 200),
        "five_datasets": (FIVE_DATASETS_SCHEDULE, 0.1, 100),
        "mini_imagenet": (FIVE_DATASETS_SCHEDULE, 0.1, 100),
        "pmnist": (None, 0.01, 5),
        "permuted_digits": (None, 0.01, 5),
    }
    for name, (schedule, lr, epochs) in expected.items():
        defaults = BENCHMARKS[name].defaults
        assert (defaults.lr_schedule, defaults.lr, defaults.epochs) == (schedule, lr, epochs), name


def test_records_show_the_schedule_only_when_there_is_one():
    hp = Hyperparams(lr=0.01, batch_size=64, epochs=5)
    assert "lr_schedule" not in hp.to_dict("gpm")
    assert hp.replace(lr_schedule=CIFAR100_SCHEDULE).to_dict("gpm")["lr_schedule"] == {
        "type": "LRScheduleConfig",
        "factor": 2.0,
        "patience": 6,
        "lr_min": 1e-5,
    }


@pytest.mark.parametrize("strategy", ["gpm", "replay"])
def test_runner_trains_with_the_schedule(monkeypatch, tmp_path, strategy):
    defaults = Hyperparams(
        lr=0.05,
        batch_size=10,
        epochs=3,
        lr_schedule=LRScheduleConfig(factor=2.0, patience=1, lr_min=1e-3),
        strategy_options={"gpm": {"threshold": 0.9, "num_samples": 20}, "replay": {"mem_size": 20}},
    )
    spec = BenchmarkSpec(build=lambda seed, root, download: tiny_benchmark(), model=TinyMultiHead, defaults=defaults, description="")
    monkeypatch.setitem(BENCHMARKS, "tiny", spec)
    plugins: list[SupervisedPlugin] = []

    def spy(*args, **kwargs):
        plugins.extend(kwargs["plugins"])
        return build_strategy(*args, **kwargs)

    monkeypatch.setattr(runner_module, "build_strategy", spy)
    record = run("tiny", strategy, 0, tmp_path, progress=False)
    assert len(record["accuracy_matrix"]) == 2
    assert json.loads((tmp_path / f"{strategy}_seed0.json").read_text())["config"]["hyperparams"]["lr_schedule"] == {
        "type": "LRScheduleConfig",
        "factor": 2.0,
        "patience": 1,
        "lr_min": 1e-3,
    }
    (plugin,) = [p for p in plugins if isinstance(p, ValidationLRSchedule)]
    assert len(plugin.valid_stream) == 2 and plugin.eval_mb_size == defaults.eval_batch_size
    assert plugin.tracker.lr_min == 1e-3 and math.isfinite(plugin.tracker.best_loss)


def test_runner_rejects_a_schedule_without_validation_stream(tmp_path):
    hp = BENCHMARKS["permuted_digits"].defaults.replace(epochs=1, lr_schedule=CIFAR100_SCHEDULE)
    with pytest.raises(ValueError, match="permuted_digits has none for 2 tasks"):
        run("permuted_digits", "naive", 0, tmp_path, hyperparams=hp, num_tasks=2, progress=False)
    # no record and no checkpoint; only the run's lock file (gpm_gainlora_experiments.common.records) stays behind
    left = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")]
    assert left == ["checkpoints", "checkpoints/naive_seed0.lock"]
