"""The wheel: what it ships (the three packages and their console scripts) and what it leaves out."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "gpm-gainlora-run": "gpm_gainlora_experiments.image.run:main",
    "gpm-gainlora-report": "gpm_gainlora_experiments.image.report:main",
    "gpm-gainlora-tune": "gpm_gainlora_experiments.image.tune:main",
    "gpm-gainlora-lm-run": "gpm_gainlora_experiments.lm.run:main",
    "gpm-gainlora-lm-report": "gpm_gainlora_experiments.lm.report:main",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    # From a copy: setuptools reuses a source tree's build/ folder, where a moved module would linger.
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "results", "logs", "__pycache__"))
    # torch depends on setuptools, so the test environment can build without fetching it.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_ships_the_packages_and_not_the_repository_tools(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"avalanche_gpm", "avalanche_gainlora", "gpm_gainlora_experiments"}
    names = set(wheel.namelist())
    for module in ("common/records.py", "image/run.py", "image/benchmarks/permuted_digits.py", "lm/instruction/orders.py"):
        assert f"gpm_gainlora_experiments/{module}" in names


def test_the_console_scripts_point_at_main_functions_that_exist(wheel):
    (entry_points,) = [name for name in wheel.namelist() if name.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == SCRIPTS
    for target in SCRIPTS.values():
        module, function = target.split(":")
        assert callable(getattr(__import__(module, fromlist=[function]), function))
