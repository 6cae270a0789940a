"""--loggers: Avalanche's loggers in the runners, GPM's memory report against the training iteration."""

from __future__ import annotations

import csv
import subprocess
import sys

import dill
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gpm_gainlora_experiments.common.cli_types import logger_names
from gpm_gainlora_experiments.common.loggers import MetricsCSVLogger, build_loggers, close_loggers
from gpm_gainlora_experiments.image.runner import run
from tests.test_experiments import TINY, tiny_hyperparams


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def logged_gpm(tmp_path_factory):
    """A tiny GPM run with TensorBoard and CSV logs, and the same run without loggers."""
    root = tmp_path_factory.mktemp("logged")
    logged = run("permuted_digits", "gpm", 0, root / "logged", hyperparams=tiny_hyperparams(),
                 loggers=["tensorboard", "csv"], **TINY)  # fmt: skip
    plain = run("permuted_digits", "gpm", 0, root / "plain", hyperparams=tiny_hyperparams(), **TINY)
    return root / "logged" / "logs" / "gpm_seed0", logged, plain


def test_loggers_change_no_result(logged_gpm):
    _, logged, plain = logged_gpm
    assert logged["accuracy_matrix"] == plain["accuracy_matrix"]
    assert logged["gpm_usage_history"] == plain["gpm_usage_history"]
    assert logged["config"] == plain["config"]  # the loggers are not part of the protocol


def test_tensorboard_holds_gpm_memory_against_the_training_iteration(logged_gpm):
    folder, record, _ = logged_gpm
    scalars = _scalars(folder / "tensorboard")
    fraction = scalars["GPM/memory_fraction/fc1"]
    steps = [step for step, _ in fraction]
    assert len(steps) == 2 and steps[0] > 0 and steps[1] == 2 * steps[0]  # iterations after tasks 1 and 2
    expected = [entry["fc1"]["basis_size"] / entry["fc1"]["input_dim"] for entry in record["gpm_usage_history"]]
    assert [value for _, value in fraction] == pytest.approx(expected)
    # Avalanche's own metrics sit on the same axis: the last epoch's loss at the last iteration.
    loss = scalars["Loss_Epoch/train_phase/train_stream/Task000"]
    assert loss[-1][0] == steps[-1]
    accuracy = scalars["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001"]
    assert accuracy[-1][1] == pytest.approx(record["accuracy_matrix"][-1][1])


def test_csv_logs_every_metric_and_avalanche_csv_files(logged_gpm):
    folder, record, _ = logged_gpm
    assert (folder / "training_results.csv").is_file() and (folder / "eval_results.csv").is_file()
    with open(folder / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    gpm_rows = [row for row in rows if row["metric"] == "GPM/basis_size/fc1"]
    assert [int(float(row["value"])) for row in gpm_rows] == [e["fc1"]["basis_size"] for e in record["gpm_usage_history"]]
    assert any(row["metric"].startswith("Top1_Acc_Stream/eval_phase/test_stream") for row in rows)


def test_metrics_csv_survives_pickling_and_appends(tmp_path):
    logger = MetricsCSVLogger(tmp_path / "m.csv")
    logger.log_single_metric("a", 1.0, 3)
    logger.log_single_metric("image", object(), 3)  # non-numeric: left to other loggers
    restored = dill.loads(dill.dumps(logger))
    restored.log_single_metric("a", 2.0, 5)
    close_loggers([logger, restored])
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines == ["metric,x,value", "a,3,1.0", "a,5,2.0"]


def test_resumed_run_adds_to_its_logs(tmp_path):
    first = build_loggers(["csv", "text"], tmp_path / "run", project="p", resume=False)
    first[1].log_single_metric("a", 1.0, 1)
    close_loggers(first)
    second = build_loggers(["csv", "text"], tmp_path / "run", project="p", resume=True)
    second[1].log_single_metric("a", 2.0, 2)
    close_loggers(second)
    assert (tmp_path / "run" / "metrics.csv").read_text().splitlines() == ["metric,x,value", "a,1,1.0", "a,2,2.0"]


def test_unknown_logger_is_refused_by_name():
    with pytest.raises(Exception, match="unknown logger tensorbored; choose from interactive, text, csv"):
        logger_names("csv,tensorbored")
    result = subprocess.run(
        [sys.executable, "-m", "gpm_gainlora_experiments.image.run", "--loggers", "nope"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "unknown logger nope" in result.stderr and "Traceback" not in result.stderr


class _Stop(Exception):
    pass


def test_a_resumed_run_keeps_logging_into_the_same_files(tmp_path, monkeypatch, logged_gpm):
    from gpm_gainlora_experiments.image import runner

    save = runner.save_strategy_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise _Stop  # killed right after the first experience's checkpoint

    monkeypatch.setattr(runner, "save_strategy_checkpoint", save_then_stop)
    with pytest.raises(_Stop):
        run("permuted_digits", "gpm", 0, tmp_path, hyperparams=tiny_hyperparams(), loggers=["csv"], **TINY)
    monkeypatch.setattr(runner, "save_strategy_checkpoint", save)
    resumed = run("permuted_digits", "gpm", 0, tmp_path, hyperparams=tiny_hyperparams(), loggers=["csv"], **TINY)
    _, _, plain = logged_gpm
    assert resumed["resumed_after_experience"] == 1
    assert resumed["accuracy_matrix"] == plain["accuracy_matrix"]
    with open(tmp_path / "logs" / "gpm_seed0" / "metrics.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["metric"] == "GPM/basis_size/fc1"]
    assert [int(float(row["value"])) for row in rows] == [e["fc1"]["basis_size"] for e in plain["gpm_usage_history"]]


def test_lm_runs_log_loss_and_scores_against_the_training_iteration(tmp_path):
    from gpm_gainlora_experiments.lm import runner as lm_runner
    from tests.test_lm_experiments import TINY as LM_TINY, fixture_tasks, tiny_factory

    kwargs = dict(tasks=fixture_tasks(2), model_name="tiny-llama", settings=LM_TINY, progress=False)
    logged = lm_runner.run_lm("seqlora", 0, tmp_path / "logged", model_factory=tiny_factory(),
                              loggers=["tensorboard"], **kwargs)  # fmt: skip
    plain = lm_runner.run_lm("seqlora", 0, tmp_path / "plain", model_factory=tiny_factory(), **kwargs)
    assert logged["score_matrices"] == plain["score_matrices"] and logged["train_loss"] == plain["train_loss"]
    scalars = _scalars(tmp_path / "logged" / "logs" / "seqlora_seed0" / "tensorboard")
    # Each task has its own task label; Avalanche numbers a mini-batch's loss by the iterations before it.
    iterations = [step for task in ("Task000", "Task001") for step, _ in scalars[f"Loss_MB/train_phase/train_stream/{task}"]]
    assert iterations == list(range(len(iterations))) and len(iterations) >= 2
    rouge = scalars["RougeL_Exp/eval_phase/test_stream/Task001/Exp001"]
    assert rouge[-1] == (len(iterations), pytest.approx(logged["score_matrices"]["rouge_l"][-1][1]))
