"""Command lines end on bad input with one line naming the problem, and keep tracebacks for bugs."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from gpm_gainlora_experiments.image import report, run
from gpm_gainlora_experiments.common.cli_errors import exit_on_user_error
from gpm_gainlora_experiments.common.devices import resolve_device


def test_our_check_becomes_a_one_line_exit(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: no run records .* in ") as caught:
        report.main([str(tmp_path)])
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_under_python_m_too(tmp_path):
    """``python -m`` runs the module as ``__main__``: its own errors must still count as ours."""
    done = subprocess.run(
        [sys.executable, "-m", "gpm_gainlora_experiments.image.report", str(tmp_path)], capture_output=True, text=True, timeout=120
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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "-1"], r"argument --seeds: a seed must be an integer from 0 to 2\*\*32 - 1, got -1"),
        (["--device", "bogus"], r"argument --device: not a device; use cpu, cuda or cuda:N"),
    ],
)
def test_a_bad_seed_or_device_is_an_argument_error(argv, message, capsys):
    with pytest.raises(SystemExit):
        run.parse_args(argv)
    assert re.search(message, capsys.readouterr().err)


def test_a_device_this_machine_lacks_is_refused_before_anything_is_built(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"--device cuda: torch sees no CUDA device on this machine; use --device cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


def test_truncated_mnist_files_are_named(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        # a valid idx header claiming 60000 items, then far too few bytes
        dims = (60000, 28, 28) if "images" in name else (60000,)
        header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
        (raw / name).write_bytes(header + bytes(100))
    argv = ["--benchmark", "pmnist", "--strategies", "naive", "--data-root", str(tmp_path), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"error: the MNIST files under .*MNIST/raw are truncated or corrupt"):
        run.main(argv)


def test_a_model_path_that_does_not_exist_is_named():
    from gpm_gainlora_experiments.lm.models import resolve_model

    with pytest.raises(FileNotFoundError, match=r"--model /nonexistent/model: no such folder; .*smollm2-135m-instruct"):
        resolve_model("/nonexistent/model")


def test_an_empty_or_truncated_task_file_is_named(tmp_path):
    from gpm_gainlora_experiments.lm.instruction.files import read_task_file

    for content in ("", '{"Definition": ["x"], "Instances": [{"input": "a", "out'):
        path = tmp_path / "train.json"
        path.write_text(content)
        with pytest.raises(ValueError, match=r"train.json is not a JSON task file \(.*\); restore it"):
            read_task_file(path)


def test_a_folder_that_is_not_a_checkpoint_is_named(tmp_path):
    from gpm_gainlora_experiments.lm.models import load_model_and_tokenizer

    with pytest.raises(ValueError, match=rf"cannot load --model {re.escape(str(tmp_path))} \(.*config.json.*\); give a local"):
        load_model_and_tokenizer(str(tmp_path))
