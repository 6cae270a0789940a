"""The cost benchmarks run (their numbers are checked on demand, not here)."""

from __future__ import annotations

import json

from benchmarks import gpm_step_cost


def test_gpm_step_cost_writes_a_row_per_memory_fill(tmp_path):
    gpm_step_cost.main(["--models", "pmnist_mlp", "--rounds", "1", "--steps", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "gpm_step_cost.json").read_text())["rows"]
    assert [row["fill"] for row in rows] == list(gpm_step_cost.FILLS)
    assert all(row["naive_ms"] > 0 and row["gpm_ms"] > 0 for row in rows)
    # batch 10 against fc1's 784 x 100 gradient: projecting the 10 input rows is the cheaper path
    assert all(row["paths"]["fc1"] == "inputs" for row in rows)
    assert "pmnist_mlp" in (tmp_path / "gpm_step_cost.md").read_text()
