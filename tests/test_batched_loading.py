"""The batched data path: same batches, random numbers, weights and bases as Avalanche's loader, or a fallback."""

from __future__ import annotations

import warnings

import avalanche
import pytest
import torch
from avalanche.benchmarks import tensors_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.benchmarks.utils.data_loader import SingleDatasetDataLoader, TaskBalancedDataLoader
from avalanche.training import Naive
from avalanche.training.plugins import ReplayPlugin, SupervisedPlugin

from avalanche_gpm import GPM
from gpm_gainlora_experiments.common.evaluation import accuracy_row, quiet_evaluator
from gpm_gainlora_experiments.image.batched_data import NotBatchable, batched_loader
from gpm_gainlora_experiments.image.benchmarks import get_benchmark
from gpm_gainlora_experiments.image.benchmarks.permuted import PermutedFeatures, PermutedSplits, permuted_benchmark
from gpm_gainlora_experiments.image.benchmarks.permuted_digits import digits_split, permuted_digits, task_permutations
from gpm_gainlora_experiments.image.plugins import BatchedLoading
from gpm_gainlora_experiments.image.cli import run_keywords
from gpm_gainlora_experiments.image.run import parse_args
from gpm_gainlora_experiments.image.runner import run
from gpm_gainlora_experiments.image.strategies import build_strategy


def _epochs(loader, epochs: int = 2) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
    """Every batch of ``epochs`` passes from seed 3, and the generator state after them."""
    torch.manual_seed(3)
    batches = [batch for _ in range(epochs) for batch in loader]
    return batches, torch.get_rng_state()


def _assert_same_batches(expected, actual) -> None:
    (want, want_state), (got, got_state) = expected, actual
    assert len(got) == len(want)
    for a, b in zip(want, got):
        assert isinstance(b, list) and len(a) == len(b)
        assert all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(got_state, want_state)


def test_train_and_eval_batches_equal_avalanche_loaders():
    data = permuted_digits(num_tasks=2).train_stream[1].dataset.train()
    train = lambda: TaskBalancedDataLoader(data, batch_size=10, shuffle=True)  # noqa: E731
    _assert_same_batches(_epochs(train()), _epochs(batched_loader(train())))
    test = permuted_digits(num_tasks=2).test_stream[0].dataset.eval()
    evaluation = lambda: SingleDatasetDataLoader(test, batch_size=64)  # noqa: E731
    _assert_same_batches(_epochs(evaluation()), _epochs(batched_loader(evaluation())))


def test_several_task_groups_of_one_leaf_interleave_as_avalanche_does():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(57, 5, generator=generator), torch.randint(0, 3, (57,), generator=generator)
    labels = torch.randint(0, 3, (57,), generator=generator).tolist()
    data = _make_taskaware_tensor_classification_dataset(x, y, task_labels=labels).train()
    subset = data.subset(torch.randperm(57, generator=generator)[:40].tolist())
    loader = lambda: TaskBalancedDataLoader(subset, batch_size=7, shuffle=True)  # noqa: E731
    assert len(loader().datasets) == 3
    _assert_same_batches(_epochs(loader()), _epochs(batched_loader(loader())))


def test_a_joint_dataset_of_several_leaves_gathers_each_part_in_place():
    # Joint training concatenates the experiences: each lazy permuted task is its own leaf.
    stream = permuted_digits(num_tasks=3).train_stream
    joint = stream[0].dataset.concat(stream[1].dataset).concat(stream[2].dataset).train()
    loader = lambda: TaskBalancedDataLoader(joint, batch_size=16, shuffle=True)  # noqa: E731
    assert len(batched_loader(loader()).source.gatherers) == 3
    _assert_same_batches(_epochs(loader()), _epochs(batched_loader(loader())))


def test_leaves_with_different_sample_types_fall_back():
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    first = _make_taskaware_tensor_classification_dataset(x, y, task_labels=0)
    second = _make_taskaware_tensor_classification_dataset(x.double(), y, task_labels=0)
    with pytest.raises(NotBatchable, match="differ in dtype"):
        batched_loader(TaskBalancedDataLoader(first.concat(second).train(), batch_size=5))


def _train_gpm(plugins: list) -> tuple[list[list[float]], dict, dict]:
    """Two Permuted Digits tasks of GPM (one epoch each): accuracy matrix, weights, GPM state."""
    torch.manual_seed(0)
    benchmark = permuted_digits(num_tasks=2)
    model = get_benchmark("permuted_digits").model()
    hyperparams = get_benchmark("permuted_digits").defaults.replace(epochs=1)
    strategy = build_strategy(
        "gpm", model=model, hyperparams=hyperparams, evaluator=quiet_evaluator(), device="cpu", plugins=plugins
    )
    assert isinstance(strategy, GPM)
    matrix = []
    for experience in benchmark.train_stream:
        strategy.train(experience)
        matrix.append(accuracy_row(strategy.eval(benchmark.test_stream), 2))
    return matrix, model.state_dict(), strategy.gpm.state_dict()


def test_gpm_trains_bitwise_identically_with_batched_loading():
    plugin = BatchedLoading()
    matrix, weights, state = _train_gpm([plugin])
    want_matrix, want_weights, want_state = _train_gpm([])
    assert matrix == want_matrix
    assert all(torch.equal(weights[k], want_weights[k]) for k in want_weights)
    bases, want_bases = state["memory"]["bases"], want_state["memory"]["bases"]
    assert bases.keys() == want_bases.keys() and all(basis is not None for basis in bases.values())
    assert all(torch.equal(bases[name], want_bases[name]) for name in want_bases)
    # 2 training loaders + 2 evaluations x 2 test experiences, none left to Avalanche
    assert plugin.batched == 6 and not plugin.fallbacks


class _LoaderTypes(SupervisedPlugin):
    """Records the type of the loader each training epoch iterates."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def before_training_epoch(self, strategy, **kwargs) -> None:
        self.seen.append(type(strategy.dataloader).__name__)


def test_a_transform_keeps_avalanches_loader_and_is_reported_once():
    benchmark = tensors_benchmark(
        train_tensors=[(torch.randn(20, 64), torch.randint(0, 10, (20,)))],
        test_tensors=[(torch.randn(8, 64), torch.randint(0, 10, (8,)))],
        task_labels=[0],
        train_transform=lambda x: x * 2,
    )
    plugin, loaders = BatchedLoading(), _LoaderTypes()
    strategy = build_strategy(
        "naive",
        model=get_benchmark("permuted_digits").model(),
        hyperparams=get_benchmark("permuted_digits").defaults.replace(epochs=2),
        evaluator=quiet_evaluator(),
        device="cpu",
        plugins=[plugin, loaders],
    )
    with pytest.warns(UserWarning, match="transform"):
        strategy.train(benchmark.train_stream[0])
    assert loaders.seen == ["TaskBalancedDataLoader"] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strategy.train(benchmark.train_stream[0])  # the same reason is not warned again
        strategy.eval(benchmark.test_stream)  # no eval transform: batched
    (reason, count), = plugin.fallbacks.items()
    assert "transform" in reason and count == 2
    assert plugin.batched == 1


@pytest.mark.parametrize("batched_first", [True, False])
def test_replay_loaders_are_left_to_avalanche_in_any_plugin_order(batched_first):
    plugin, loaders = BatchedLoading(), _LoaderTypes()
    replay = ReplayPlugin(mem_size=50)
    model = get_benchmark("permuted_digits").model()
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        train_mb_size=10,
        evaluator=quiet_evaluator(),
        plugins=[plugin, replay, loaders] if batched_first else [replay, plugin, loaders],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for experience in permuted_digits(num_tasks=2).train_stream:
            strategy.train(experience)
    # the buffer is empty during the first experience, so replay swaps its loader in from the second
    assert loaders.seen == ["BatchedLoader", "ReplayDataLoader"]
    assert [str(w.message) for w in caught if "BatchedLoading" in str(w.message)] == (
        [] if batched_first else ["BatchedLoading: using Avalanche's own loader (loader type ReplayDataLoader)"]
    )


def test_other_avalanche_versions_and_loader_options_fall_back(monkeypatch):
    data = permuted_digits(num_tasks=1).train_stream[0].dataset.train()
    monkeypatch.setattr(avalanche, "__version__", "0.7.0")
    with pytest.raises(NotBatchable, match="0.7.0"):
        batched_loader(TaskBalancedDataLoader(data, batch_size=10))
    monkeypatch.undo()
    with pytest.raises(NotBatchable, match="worker processes"):
        batched_loader(TaskBalancedDataLoader(data, batch_size=10, num_workers=2))
    with pytest.raises(NotBatchable, match="collate"):
        batched_loader(TaskBalancedDataLoader(data, batch_size=10, collate_fn=lambda batch: batch))


def test_lazy_permutations_equal_stored_copies():
    x_train, y_train, x_test, y_test = digits_split()
    permutations = task_permutations(3)
    lazy = permuted_benchmark({"train": (x_train, y_train), "test": (x_test, y_test)}, permutations)
    stored = tensors_benchmark(
        train_tensors=[(x_train[:, p], y_train) for p in permutations],
        test_tensors=[(x_test[:, p], y_test) for p in permutations],
        task_labels=[0, 0, 0],
    )
    for name in ("train_stream", "test_stream"):
        for a, b in zip(getattr(lazy, name), getattr(stored, name)):
            assert len(a.dataset) == len(b.dataset) and a.task_labels == b.task_labels == [0]
            rows = torch.tensor([0, 5, len(a.dataset) - 1])
            for i in rows.tolist():
                (xa, ya, ta), (xb, yb, tb) = a.dataset[i], b.dataset[i]
                assert torch.equal(xa, xb) and ya == yb and type(ya) is type(yb) and ta == tb
    # every task's dataset reads the one stored copy
    assert all(leaf.features is x_train for exp in lazy.train_stream for leaf in _leaves(exp.dataset))
    leaf = PermutedFeatures(x_train, y_train, permutations[1])
    rows = torch.tensor([3, 1, 4, 1, 5])
    collated = torch.utils.data.default_collate([leaf[i] for i in rows.tolist()])
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(leaf.gather_batch(rows), collated))
    views = PermutedSplits((x_test, y_test), permutations)
    assert len(views) == 3 and torch.equal(views[2][0], x_test[:, permutations[2]]) and len(views[1:]) == 2


def _leaves(dataset) -> list:
    pending, found = [dataset._flat_data], []
    while pending:
        node = pending.pop()
        children = getattr(node, "_datasets", None)
        if children is None:
            found.append(node)
        else:
            pending.extend(children)
    return found


def test_permuted_features_rejects_bad_shapes():
    with pytest.raises(ValueError, match="one target per row"):
        PermutedFeatures(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), torch.arange(3))
    with pytest.raises(ValueError, match="permutation of 0..2"):
        PermutedFeatures(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 1]))


def test_runner_records_are_identical_with_and_without_batched_loading(tmp_path):
    hyperparams = get_benchmark("permuted_digits").defaults.replace(epochs=1)
    records = [
        run("permuted_digits", "gpm", 0, tmp_path / str(batched), hyperparams=hyperparams, num_tasks=2,
            progress=False, batched_loading=batched)
        for batched in (True, False)
    ]  # fmt: skip
    assert records[0]["accuracy_matrix"] == records[1]["accuracy_matrix"]
    assert records[0]["gpm_usage_history"] == records[1]["gpm_usage_history"]
    assert records[0]["config"] == records[1]["config"]  # the data path is not part of the protocol
    assert run_keywords(parse_args(["--avalanche-loader"]))["batched_loading"] is False
    assert run_keywords(parse_args([]))["batched_loading"] is True
