"""Command lines end on bad input with one line naming the problem, and keep tracebacks for bugs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from experiments import report, run
from experiments.cli_errors import exit_on_user_error


def test_our_check_becomes_a_one_line_exit(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: no run records .* in ") as caught:
        report.main([str(tmp_path)])
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_under_python_m_too(tmp_path):
    """``python -m`` runs the module as ``__main__``: its own errors must still count as ours."""
    done = subprocess.run(
        [sys.executable, "-m", "experiments.report", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: no run records")


def test_missing_data_files_are_named_without_a_traceback(tmp_path):
    argv = ["--benchmark", "split_cifar100", "--strategies", "naive", "--data-root", str(tmp_path), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="error: missing .*cifar-100-python"):
        run.main(argv)


def test_an_error_raised_inside_a_library_keeps_its_traceback():
    with pytest.raises(json.JSONDecodeError):
        with exit_on_user_error():
            json.loads("{")
