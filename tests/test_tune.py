"""gpm_gainlora_experiments.image.tune: grids of strategy options scored on the validation split."""

from __future__ import annotations

import json

import pytest
import torch

from avalanche_gpm.models import pmnist_mlp
from gpm_gainlora_experiments.image import benchmarks as benchmarks_module
from gpm_gainlora_experiments.image.benchmarks import BenchmarkSpec
from gpm_gainlora_experiments.image.benchmarks.image_data import TaskSplits, make_benchmark
from gpm_gainlora_experiments.image.hyperparams import Hyperparams
from gpm_gainlora_experiments.common.records import result_path
from gpm_gainlora_experiments.image.runner import run
from gpm_gainlora_experiments.image.tune import grid_points, main as tune_main, parse_grid_axis, point_record_name, tune, write_tuning_report

FEATURES, CLASSES = 8, 3


def _blobs(seed: int) -> list[TaskSplits]:
    """Two learnable tasks whose *test* labels are shuffled: only validation scores can be high."""
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(2):
        means = 3 * torch.randn(CLASSES, FEATURES, generator=generator)

        def sample(size: int) -> tuple[torch.Tensor, torch.Tensor]:
            labels = torch.randint(0, CLASSES, (size,), generator=generator)
            return means[labels] + 0.3 * torch.randn(size, FEATURES, generator=generator), labels

        train, val, (test_x, test_y) = sample(90), sample(30), sample(30)
        tasks.append(TaskSplits(train, val, (test_x, test_y[torch.randperm(30, generator=generator)])))
    return tasks


@pytest.fixture
def blobs(monkeypatch):
    """Register a two-task benchmark with a validation split under the name ``blobs``."""
    spec = BenchmarkSpec(
        build=lambda seed, root, download: make_benchmark(_blobs(seed), [0, 0]).benchmark,
        model=lambda: pmnist_mlp(in_features=FEATURES, hidden=16, num_classes=CLASSES),
        defaults=Hyperparams(lr=0.1, batch_size=10, epochs=2, strategy_options={"ewc": {"ewc_lambda": 1.0}}),
        description="test blobs",
    )
    monkeypatch.setitem(benchmarks_module.BENCHMARKS, "blobs", spec)
    return "blobs"


def test_grid_axes_and_points():
    assert parse_grid_axis("ewc_lambda=10,1e3") == ("ewc_lambda", [10, 1000.0])
    assert parse_grid_axis("mode=online") == ("mode", ["online"])
    assert parse_grid_axis("keep=true,none") == ("keep", [True, None])
    points = grid_points([("a", [1, 2]), ("b", ["x", "y"])])
    assert points == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert point_record_name("ewc", {"ewc_lambda": 100, "mode": "online"}) == "ewc_ewc_lambda-100_mode-online"
    with pytest.raises(ValueError, match="several --grid axes"):
        grid_points([("a", [1]), ("a", [2])])
    for bad in ("ewc_lambda", "=1", "ewc_lambda="):
        with pytest.raises(Exception, match="name=value"):
            parse_grid_axis(bad)


def test_tune_scores_every_point_on_validation_and_ranks_them(blobs, tmp_path):
    points = [{"ewc_lambda": 0.1}, {"ewc_lambda": 1e4}]
    with pytest.warns(RuntimeWarning, match="training diverged on experience 1"):
        markdown = tune(blobs, "ewc", points, [1], tmp_path, progress=False)
    accs, diverged = {}, {}
    for point in points:
        record = json.loads(result_path(tmp_path, point_record_name("ewc", point), 1).read_text())
        assert record["config"]["eval_stream"] == "valid"
        assert record["config"]["hyperparams"]["options"]["ewc_lambda"] == point["ewc_lambda"]
        matrix = record["accuracy_matrix"]
        # Shuffled test labels would give about 1/3: these are validation accuracies.
        assert matrix[0][0] > 0.9
        accs[point["ewc_lambda"]] = record["acc"]
        diverged[point["ewc_lambda"]] = record["diverged_experiences"]
    # SGD at lr 0.1 cannot integrate a penalty of weight 1e4: task 2 diverges, and the point ranks last.
    assert diverged == {0.1: [], 1e4: [1]} and accs[0.1] > accs[1e4]
    rows = [line for line in markdown.splitlines() if line.startswith("| ewc_lambda=")]
    assert [row.split(" |")[0] for row in rows] == ["| ewc_lambda=0.1", "| ewc_lambda=10000.0"]
    assert "Diverged (training loss NaN or infinite; experiences counted from 0): ewc_lambda=10000.0 seed 1 on experience(s) 1." in markdown
    assert (tmp_path / "tuning.md").read_text() == markdown
    assert (tmp_path / "tuning.csv").read_text().startswith("options,val_acc_mean,")


def test_tune_refuses_bad_options_before_training(blobs, tmp_path):
    with pytest.raises(ValueError, match="ewc_lamda=1"):
        tune(blobs, "ewc", [{"ewc_lambda": 1.0}, {"ewc_lamda": 1}], [1], tmp_path, progress=False)
    with pytest.raises(ValueError, match="decay_factor"):
        tune(blobs, "ewc", [{"mode": "online"}], [1], tmp_path, progress=False)
    # A word where the strategy takes a number (EWC would use it without complaint until it multiplies).
    with pytest.raises(ValueError, match=r"--grid ewc_lambda=abc: ewc's ewc_lambda is a number"):
        tune(blobs, "ewc", [{"ewc_lambda": 1.0}, {"ewc_lambda": "abc"}], [1], tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"--grid decay_factor=fast: ewc's decay_factor is a number"):
        tune(blobs, "ewc", [{"mode": "online", "decay_factor": "fast"}], [1], tmp_path, progress=False)
    assert not list(tmp_path.iterdir()), "nothing may run when one point is invalid"


def test_tune_refuses_to_mix_protocols_in_one_folder(blobs, tmp_path):
    tune(blobs, "ewc", [{"ewc_lambda": 1.0}], [1], tmp_path, num_tasks=1, progress=False)
    with pytest.raises(ValueError, match=r"different protocols \(they differ in num_tasks\).*own folder"):
        tune(blobs, "ewc", [{"ewc_lambda": 2.0}], [1], tmp_path, num_tasks=2, progress=False)
    assert len(list(tmp_path.glob("*.json"))) == 1, "the refused grid must not train"
    # A record of another protocol copied in by hand is refused by the report too.
    record_path = next(tmp_path.glob("*.json"))
    record = json.loads(record_path.read_text())
    record["config"]["hyperparams"]["epochs"] = 5
    record_path.with_name("ewc_ewc_lambda-9_seed1.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"differ in hyperparams\.epochs\)"):
        write_tuning_report(tmp_path, "ewc")


def test_a_point_run_under_another_preset_is_refused_unless_forced(blobs, tmp_path):
    point = {"ewc_lambda": 1.0}
    tune(blobs, "ewc", [point], [1], tmp_path, num_tasks=1, progress=False)
    online = benchmarks_module.BENCHMARKS[blobs].defaults.with_options("ewc", {"mode": "online", "decay_factor": 0.5})
    with pytest.raises(ValueError, match="another configuration.*--force"):
        tune(blobs, "ewc", [point], [1], tmp_path, hyperparams=online, num_tasks=1, progress=False)
    tune(blobs, "ewc", [point], [1], tmp_path, hyperparams=online, num_tasks=1, force=True, progress=False)
    record = json.loads(result_path(tmp_path, point_record_name("ewc", point), 1).read_text())
    assert record["config"]["hyperparams"]["options"] == {"ewc_lambda": 1.0, "mode": "online", "decay_factor": 0.5}


def test_tuning_needs_a_validation_stream(tmp_path):
    with pytest.raises(ValueError, match="no validation stream"):
        run("permuted_digits", "naive", 0, tmp_path, eval_stream="valid", progress=False)
    with pytest.raises(ValueError, match="eval_stream"):
        run("permuted_digits", "naive", 0, tmp_path, eval_stream="train", progress=False)


def test_test_records_keep_their_configuration(blobs, tmp_path):
    record = run(blobs, "naive", 0, tmp_path, progress=False)
    assert "eval_stream" not in record["config"], "records written before tuning existed must still match"


def test_cli(blobs, tmp_path, capsys):
    args = ["--benchmark", blobs, "--strategy", "ewc", "--grid", "ewc_lambda=3", "--out", str(tmp_path), "--tasks", "1"]
    tune_main(args)
    out = capsys.readouterr().out
    assert "ewc on blobs, validation split, 2 epoch(s) per task, tasks: 1" in out and "| ewc_lambda=3 |" in out
    record_path = result_path(tmp_path, point_record_name("ewc", {"ewc_lambda": 3}), 1)
    written = record_path.stat().st_mtime_ns
    tune_main(args)
    assert record_path.stat().st_mtime_ns == written, "an existing point is skipped"
    tune_main([*args, "--force"])
    assert record_path.stat().st_mtime_ns > written, "--force reruns it"


def test_tuning_table_names_a_mapping_option_by_its_own_name(blobs, tmp_path):
    tune(blobs, "ewc", [{"ewc_lambda": 1.0}], [1], tmp_path, num_tasks=1, progress=False)
    record_path = next(tmp_path.glob("*.json"))
    record = json.loads(record_path.read_text())
    # Two points that differ only inside a mapping-valued option, as per-layer settings would.
    for name, value in (("a", 0.9), ("b", 0.95)):
        record["config"]["hyperparams"]["options"] = {"ewc_lambda": 1.0, "per_layer": {"fc": value}}
        record_path.with_name(f"ewc_per_layer-{name}_seed1.json").write_text(json.dumps(record))
    record_path.unlink()
    table = write_tuning_report(tmp_path, "ewc")
    assert "per_layer={'fc': 0.9}" in table and "per_layer={'fc': 0.95}" in table
    assert "ewc_lambda" not in table, "an option shared by every point is not what was tuned"
