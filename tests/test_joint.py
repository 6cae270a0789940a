"""The Joint (multitask) upper bound: runner record, report, and multi-head training."""

from __future__ import annotations

import csv
import json

import pytest
from avalanche.core import SupervisedPlugin
from avalanche.models import MultiHeadClassifier, MultiTaskModule
from torch import Tensor, nn

from gpm_gainlora_experiments.common.evaluation import accuracy_row, quiet_evaluator
from gpm_gainlora_experiments.image.hyperparams import Hyperparams
from gpm_gainlora_experiments.image.report import write_report
from gpm_gainlora_experiments.common.records import result_path
from gpm_gainlora_experiments.image.runner import run
from gpm_gainlora_experiments.image.strategies import build_strategy
from tests.helpers import gaussian_tasks
from tests.test_experiments import FIGURES, TINY, tiny_hyperparams


@pytest.fixture(scope="module")
def joint_dir(tmp_path_factory):
    """Tiny joint and GPM runs in one folder."""
    out = tmp_path_factory.mktemp("joint")
    for strategy in ("joint", "gpm"):
        run("permuted_digits", strategy, 0, out, hyperparams=tiny_hyperparams(), **TINY)
    return out


def test_runner_writes_a_single_final_row_without_bwt(joint_dir):
    record = json.loads(result_path(joint_dir, "joint", 0).read_text())
    (row,) = record["accuracy_matrix"]
    assert len(row) == 2 and all(0.3 < a <= 1 for a in row), "both tasks learned well above chance (0.1)"
    assert record["acc"] == pytest.approx(sum(row) / 2)
    assert record["bwt"] is None and record["joint"] is True
    assert record["config"]["strategy"] == "joint" and record["config"]["hyperparams"]["epochs"] == 1
    assert record["gpm_usage_history"] is None
    assert record["wall_time_s"] >= record["train_time_s"] > 0
    assert json.loads(result_path(joint_dir, "gpm", 0).read_text())["joint"] is False


def test_report_shows_joint_without_bwt_and_averages_mixed_seeds(joint_dir, tmp_path):
    markdown = write_report(joint_dir)
    assert markdown.startswith("# permuted_digits: 2 tasks")
    assert "| joint |" in markdown and "| – | 1 |" in markdown
    gpm_row = next(line for line in markdown.splitlines() if line.startswith("| gpm |"))
    assert "–" not in gpm_row
    with open(joint_dir / "summary.csv") as handle:
        rows = {row["strategy"]: row for row in csv.DictReader(handle)}
    assert rows["joint"]["bwt_mean"] == "" and rows["gpm"]["bwt_mean"] != ""
    for name in FIGURES:
        assert (joint_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Two seeds of each strategy: joint keeps its single row and gets a spread, still no BWT.
    for strategy in ("joint", "gpm"):
        record = json.loads(result_path(joint_dir, strategy, 0).read_text())
        for seed, acc in ((0, 0.5), (1, 0.7)):
            record["config"]["seed"], record["acc"] = seed, acc
            result_path(tmp_path, strategy, seed).write_text(json.dumps(record))
    markdown = write_report(tmp_path)
    assert "| joint | 60.00 ± 14.14 | – | 2 |" in markdown
    assert "| gpm | 60.00 ± 14.14 | " in markdown and (tmp_path / "accuracy_matrices.png").exists()


class _TinyMultiHead(MultiTaskModule):
    """A hidden layer shared by all tasks and one Avalanche head per task."""

    def __init__(self, in_features: int, classes_per_task: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, 32), nn.ReLU())
        self.classifier = MultiHeadClassifier(32, initial_out_features=classes_per_task, masking=False)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        return self.classifier(self.body(x), task_label)


class _TaskLabelsSeen(SupervisedPlugin):
    """Collects the task labels of every training minibatch."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[set[int]] = []

    def after_training_iteration(self, strategy, *args, **kwargs) -> None:
        self.batches.append(set(strategy.mb_task_id.tolist()))


def test_joint_training_adapts_and_trains_every_task_head():
    benchmark = gaussian_tasks(num_tasks=2, shape=(8,), num_classes=3, task_labels=True)
    model = _TinyMultiHead(8, classes_per_task=3)
    hyperparams = Hyperparams(lr=0.1, batch_size=8, epochs=5)
    strategy = build_strategy("joint", model=model, hyperparams=hyperparams, evaluator=quiet_evaluator(), device="cpu")
    seen = _TaskLabelsSeen()
    strategy.plugins.append(seen)

    strategy.train(benchmark.train_stream)
    heads = model.classifier.classifiers
    assert set(heads) == {"0", "1"}, "model adaptation over all experiences adds the second head"
    # Avalanche's task-balanced loader mixes both tasks in every minibatch of the concatenation.
    assert seen.batches and all(labels == {0, 1} for labels in seen.batches)
    optimised = {id(p) for group in strategy.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in heads["1"].parameters()), "the new head is optimised"
    row = accuracy_row(strategy.eval(benchmark.test_stream), 2)
    assert all(a > 0.6 for a in row), f"both heads learn their task (chance 1/3): {row}"
