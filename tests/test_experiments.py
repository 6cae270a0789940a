"""The experiments package: Permuted Digits, metrics, the resumable runner, the report and the CLI."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from avalanche_gpm import LinearSchedule
from gpm_gainlora_experiments.image import runner as runner_module
from gpm_gainlora_experiments.image.benchmarks import BENCHMARKS, get_benchmark
from gpm_gainlora_experiments.image.benchmarks.permuted_digits import digits_split, permuted_digits, task_permutations
from gpm_gainlora_experiments.image.hyperparams import Hyperparams
from gpm_gainlora_experiments.common.metrics import acc_bwt
from gpm_gainlora_experiments.image.report import write_report
from gpm_gainlora_experiments.image.run import main as cli_main
from gpm_gainlora_experiments.image.run import parse_args
from gpm_gainlora_experiments.common.records import result_path
from gpm_gainlora_experiments.image.runner import run
from gpm_gainlora_experiments.image.strategies import STRATEGIES, build_strategy

TINY = {"num_tasks": 2, "progress": False}
FIGURES = ("accuracy_matrices.png", "task_curves.png", "gpm_memory.png", "acc_bwt.png")


def tiny_hyperparams() -> Hyperparams:
    """The Permuted Digits preset cut to one epoch: about a second per task."""
    return get_benchmark("permuted_digits").defaults.replace(epochs=1)


def stream_tensors(stream) -> list[tuple[torch.Tensor, torch.Tensor, set[int]]]:
    """Inputs, labels and task labels of every experience of a stream."""
    result = []
    for experience in stream:
        x, y, t = zip(*[experience.dataset[i][:3] for i in range(len(experience.dataset))])
        result.append((torch.stack(x), torch.tensor(y), set(t)))
    return result


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """One tiny run of every strategy, shared by the runner and report tests."""
    out = tmp_path_factory.mktemp("sweep")
    for strategy in ("naive", "ewc", "gpm"):
        run("permuted_digits", strategy, 0, out, hyperparams=tiny_hyperparams(), **TINY)
    return out


# -- Permuted Digits ---------------------------------------------------------------------------


def test_permuted_digits_shapes_labels_and_tasks():
    benchmark = permuted_digits(num_tasks=3, seed=0)
    train, test = stream_tensors(benchmark.train_stream), stream_tensors(benchmark.test_stream)
    assert len(train) == len(test) == 3
    for (x_train, y_train, t_train), (x_test, y_test, t_test) in zip(train, test):
        assert x_train.shape == (1437, 64) and x_test.shape == (360, 64)
        assert x_train.dtype == torch.float32
        # Stratified split: every digit is in both splits.
        assert set(y_train.tolist()) == set(y_test.tolist()) == set(range(10))
        assert t_train == t_test == {0}


def test_every_task_is_its_own_fixed_permutation_of_the_same_digits():
    x_train, y_train, x_test, _ = digits_split(seed=0)
    permutations = task_permutations(3, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(permutations, task_permutations(3, seed=0)))
    assert not torch.equal(permutations[0], torch.arange(64)), "the first task is permuted too"
    assert len({tuple(p.tolist()) for p in permutations}) == 3
    assert not torch.equal(permutations[0], task_permutations(1, seed=1)[0])

    train = stream_tensors(permuted_digits(num_tasks=3, seed=0).train_stream)
    for (x, y, _), p in zip(train, permutations):
        assert torch.equal(x, x_train[:, p]) and torch.equal(y, y_train)
    # Standardised with the training split's statistics.
    assert abs(x_train.mean().item()) < 1e-5 and abs(x_train.std().item() - 1) < 1e-5
    assert abs(x_test.mean().item()) < 0.1


def test_same_seed_same_data_other_seed_other_data():
    first, again, other = (stream_tensors(permuted_digits(2, seed=s).test_stream) for s in (0, 0, 1))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], other[0][0])


@pytest.mark.parametrize("kwargs", [{"num_tasks": 0}, {"test_fraction": 1.0}])
def test_permuted_digits_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        permuted_digits(**kwargs)


# -- metrics and registries --------------------------------------------------------------------


def test_acc_bwt_of_a_hand_made_matrix():
    matrix = [[0.90, 0.10, 0.20], [0.80, 0.95, 0.10], [0.70, 0.90, 0.85]]
    acc, bwt = acc_bwt(matrix)
    assert acc == pytest.approx((0.70 + 0.90 + 0.85) / 3)
    assert bwt == pytest.approx(((0.70 - 0.90) + (0.90 - 0.95)) / 2)
    assert acc_bwt(torch.tensor(matrix)) == pytest.approx((acc, bwt))
    single_acc, single_bwt = acc_bwt([[0.5]])
    assert single_acc == 0.5 and math.isnan(single_bwt)
    with pytest.raises(ValueError, match="square"):
        acc_bwt([[0.5, 0.4]])


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="permuted_digits"):
        get_benchmark("mnist9")
    model = BENCHMARKS["permuted_digits"].model()
    with pytest.raises(ValueError, match="ewc, gpm, joint, naive"):
        build_strategy("sgd", model=model, hyperparams=tiny_hyperparams(), evaluator=None, device="cpu")
    with pytest.raises(SystemExit):
        parse_args(["--strategies", "gpm,foo"])


@pytest.mark.parametrize("strategy", ["gpm", "sgp"])
def test_projection_methods_draw_their_memory_samples_with_the_run_seed(strategy):
    def seed_of(hyperparams: Hyperparams, seed: int) -> int:
        model = BENCHMARKS["permuted_digits"].model()
        built = build_strategy(strategy, model=model, hyperparams=hyperparams, evaluator=None, device="cpu", seed=seed)
        return built.gpm.seed

    assert seed_of(tiny_hyperparams(), 2) == 2
    # A seed set in the preset wins over the run's.
    assert seed_of(tiny_hyperparams().with_options(strategy, {"seed": 7}), 2) == 7


def test_hyperparams_record_schedules_by_type():
    schedule = {"gpm": {"threshold": LinearSchedule(0.97, 0.003)}}
    hp = Hyperparams(lr=0.01, batch_size=64, epochs=1, strategy_options=schedule)
    assert hp.to_dict("gpm")["options"]["threshold"] == {"type": "LinearSchedule", "start": 0.97, "step": 0.003}
    assert hp.to_dict("naive")["options"] == {}


def test_file_benchmarks_need_a_root_and_name_missing_files(tmp_path):
    spec = get_benchmark("pmnist")
    with pytest.raises(ValueError, match="pass --data-root"):
        spec.build(0, None, False)
    with pytest.raises(FileNotFoundError, match="--download"):
        spec.build(0, str(tmp_path), False)
    assert parse_args(["--download"]).download and not parse_args([]).download


def test_cli_defaults_run_the_demo():
    args = parse_args([])
    assert (args.benchmark, args.strategies, args.seeds, args.out) == (
        "permuted_digits",
        ["gpm", "naive", "ewc"],
        [0],
        "results/permuted_digits",
    )
    assert set(args.strategies) <= set(STRATEGIES)


# -- runner ------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["naive", "ewc", "gpm"])
def test_runner_writes_a_record(sweep_dir, strategy):
    path = result_path(sweep_dir, strategy, 0)
    record = json.loads(path.read_text())
    matrix = torch.tensor(record["accuracy_matrix"], dtype=torch.float64)
    assert matrix.shape == (2, 2) and bool(((matrix >= 0) & (matrix <= 1)).all())
    assert (record["acc"], record["bwt"]) == pytest.approx(acc_bwt(matrix))
    assert matrix[0, 0] > 0.3, "one epoch on the first task learns well above chance (0.1)"
    assert record["config"]["strategy"] == strategy and record["config"]["num_tasks"] == 2
    assert record["config"]["hyperparams"]["epochs"] == 1
    assert record["wall_time_s"] >= record["train_time_s"] > 0
    assert record["peak_memory"]["max_rss_mib"] > 0
    assert record["diverged_experiences"] == []
    assert set(record["environment"]["packages"]) >= {"torch", "avalanche-lib", "avalanche-gpm-gainlora"}
    assert record["environment"]["cpu"]  # results differ between CPUs: the record names its own
    history = record["gpm_usage_history"]
    if strategy == "gpm":
        assert len(history) == 2 and set(history[0]) == {"fc1", "fc2", "fc3"}
        assert history[0]["fc1"]["input_dim"] == 64
        assert history[0]["fc1"]["basis_size"] <= history[1]["fc1"]["basis_size"] <= 64
    else:
        assert history is None


def test_runner_skips_existing_records(sweep_dir, monkeypatch):
    path = result_path(sweep_dir, "naive", 0)
    before = path.read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("an existing run must not be retrained")

    monkeypatch.setattr(runner_module, "build_strategy", no_training)
    record = run("permuted_digits", "naive", 0, sweep_dir, hyperparams=tiny_hyperparams(), **TINY)
    assert record == json.loads(before) and path.read_text() == before
    with pytest.raises(ValueError, match="another configuration"):
        run("permuted_digits", "naive", 0, sweep_dir, hyperparams=tiny_hyperparams().replace(epochs=2), **TINY)


def test_runner_is_seeded(sweep_dir, tmp_path):
    again = run("permuted_digits", "naive", 0, tmp_path, hyperparams=tiny_hyperparams(), **TINY)
    first = json.loads(result_path(sweep_dir, "naive", 0).read_text())
    assert again["accuracy_matrix"] == first["accuracy_matrix"]


def test_runner_records_and_reports_a_diverged_experience(tmp_path):
    # lr 1e6 drives the MLP's logits to overflow within the first epoch.
    exploding = tiny_hyperparams().replace(lr=1e6)
    with pytest.warns(RuntimeWarning, match="training diverged on experience"):
        record = run("permuted_digits", "naive", 0, tmp_path, hyperparams=exploding, **TINY)
    assert record["diverged_experiences"] == [0, 1]
    assert "Diverged (training loss NaN or infinite; experiences counted from 0): naive seed 0 on experience(s) 0, 1." in (
        write_report(tmp_path)
    )


# -- report and CLI ----------------------------------------------------------------------------


def test_report_writes_table_csv_and_figures(sweep_dir):
    markdown = write_report(sweep_dir)
    assert (sweep_dir / "summary.md").read_text() == markdown
    for strategy in ("naive", "ewc", "gpm"):
        assert f"| {strategy} |" in markdown
    with open(sweep_dir / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["strategy"] for row in rows} == {"naive", "ewc", "gpm"}
    assert all(row["num_seeds"] == "1" and row["acc_std"] == "" for row in rows)
    for name in FIGURES:
        assert (sweep_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_averages_seeds(sweep_dir, tmp_path):
    record = json.loads(result_path(sweep_dir, "naive", 0).read_text())
    for seed, acc in ((0, 0.5), (1, 0.7)):
        record["config"]["seed"], record["acc"] = seed, acc
        result_path(tmp_path, "naive", seed).write_text(json.dumps(record))
    markdown = write_report(tmp_path)
    assert "| naive | 60.00 ± 14.14 |" in markdown and "| 2 |" in markdown
    assert not (tmp_path / "gpm_memory.png").exists()

    record["config"]["benchmark"] = "other"
    result_path(tmp_path, "naive", 2).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="several benchmarks"):
        write_report(tmp_path)


def test_report_refuses_to_average_other_settings_or_validation_runs(sweep_dir, tmp_path):
    record = json.loads(result_path(sweep_dir, "naive", 0).read_text())
    result_path(tmp_path, "naive", 0).write_text(json.dumps(record))
    record["config"]["seed"], record["config"]["hyperparams"]["epochs"] = 1, 5
    result_path(tmp_path, "naive", 1).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="naive records differ in hyperparams.epochs, not only"):
        write_report(tmp_path)

    record["config"]["hyperparams"]["epochs"] = 1
    record["config"]["eval_stream"] = "valid"
    result_path(tmp_path, "naive", 1).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="validation records"):
        write_report(tmp_path)


def test_report_refuses_strategies_run_under_other_protocols(sweep_dir, tmp_path):
    for strategy in ("naive", "gpm"):
        result_path(tmp_path, strategy, 0).write_text(result_path(sweep_dir, strategy, 0).read_text())
    write_report(tmp_path)  # strategies may differ in their own options
    record = json.loads(result_path(sweep_dir, "ewc", 0).read_text())
    record["config"]["hyperparams"]["epochs"] += 1  # e.g. an --epochs run written into the same folder
    result_path(tmp_path, "ewc", 0).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"differ in hyperparams\.epochs, not only in the strategy.*own folder"):
        write_report(tmp_path)


def test_cli_runs_and_reports(tmp_path, capsys):
    cli_main(["--strategies", "naive", "--seeds", "3", "--epochs", "1", "--tasks", "2", "--out", str(tmp_path)])
    assert result_path(tmp_path, "naive", 3).exists() and (tmp_path / "summary.md").exists()
    captured = capsys.readouterr()
    assert "| naive |" in captured.out
    # The bar shows the epoch in training and, after each task, the accuracy on the tasks seen.
    assert "epoch=1/1" in captured.err and "acc_seen=" in captured.err
