"""Output safety: the output folder is checked before training, records are locked, written
atomically under names of their own, strict JSON, and a broken record is named in one line."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from collections import namedtuple

import pytest

from gpm_gainlora_experiments.common import records
from gpm_gainlora_experiments.image.benchmarks import BENCHMARKS
from gpm_gainlora_experiments.common.records import check_output_folder, read_record, record_lock, result_path, write_atomically
from gpm_gainlora_experiments.common.results import load_records
from gpm_gainlora_experiments.image.runner import run


def test_an_output_folder_that_is_a_file_or_under_one_is_refused(tmp_path):
    file = tmp_path / "results.txt"
    file.write_text("not a folder")
    with pytest.raises(ValueError, match=r"--out .*results.txt is a file, not a folder"):
        check_output_folder(file)
    with pytest.raises(ValueError, match=r"cannot write records into --out .*results.txt/sub"):
        check_output_folder(file / "sub")


def test_an_output_folder_on_a_full_disk_is_refused(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(ValueError, match=r"has 1 MiB free, less than the 100 MiB"):
        check_output_folder(tmp_path)


def test_a_run_into_a_bad_folder_fails_before_it_builds_anything(tmp_path, monkeypatch):
    file = tmp_path / "out"
    file.write_text("")
    spec, built = BENCHMARKS["permuted_digits"], []

    def recording_build(*args):
        built.append(args)
        return spec.build(*args)

    monkeypatch.setitem(BENCHMARKS, "permuted_digits", dataclasses.replace(spec, build=recording_build))
    with pytest.raises(ValueError, match="is a file"):
        run("permuted_digits", "naive", 0, file, num_tasks=1, progress=False)
    assert not built
    run("permuted_digits", "naive", 0, tmp_path / "good", num_tasks=1, progress=False)
    assert len(built) == 1  # the recording build is the one the runner calls


def test_a_second_process_on_the_same_record_stops_at_once(tmp_path):
    path = result_path(tmp_path, "naive", 0)
    with record_lock(path):  # as a process training naive seed 0 into tmp_path holds it
        with pytest.raises(ValueError, match=r"another process is running the same run into .*naive_seed0.json"):
            run("permuted_digits", "naive", 0, tmp_path, num_tasks=1, progress=False)
    assert not path.exists()
    run("permuted_digits", "naive", 0, tmp_path, num_tasks=1, progress=False)  # released: the run goes ahead
    assert read_record(path)["config"]["strategy"] == "naive"


@pytest.mark.parametrize("content", ['{"config": {"strategy": "na', "", "[1, 2]"])
def test_a_truncated_or_foreign_record_is_named_in_one_line(tmp_path, content):
    path = result_path(tmp_path, "naive", 0)
    path.write_text(content)
    with pytest.raises(ValueError, match=r"naive_seed0.json is not a (complete )?run record") as error:
        run("permuted_digits", "naive", 0, tmp_path, num_tasks=1, progress=False)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"naive_seed0.json is not a (complete )?run record"):
        load_records(tmp_path)


def test_records_are_strict_json_with_null_for_nan_and_infinity(tmp_path):
    path = tmp_path / "r.json"
    write_atomically(path, {"config": {}, "acc": float("nan"), "rows": [[1.0, float("inf")], (float("-inf"),)]})
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {"config": {}, "acc": None, "rows": [[1.0, None], [None]]}


def test_concurrent_writers_never_show_a_reader_half_a_record(tmp_path):
    path = tmp_path / "r.json"
    big = {"config": {}, "rows": [[float(i)] * 50 for i in range(400)]}
    write_atomically(path, big)
    stop, seen_broken = threading.Event(), []

    def write_many():
        for _ in range(30):
            write_atomically(path, big)

    def read_until_stopped():
        while not stop.is_set():
            try:
                json.loads(path.read_text())
            except json.JSONDecodeError:
                seen_broken.append(True)

    writers = [threading.Thread(target=write_many) for _ in range(3)]
    reader = threading.Thread(target=read_until_stopped)
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    reader.join()
    assert not seen_broken
    assert not list(tmp_path.glob("*.partial"))  # every temporary file was renamed or removed


def test_a_failed_write_leaves_no_temporary_file_and_the_old_record(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_atomically(path, {"config": {"v": 1}})

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(records.os, "replace", fail)
    with pytest.raises(OSError):
        write_atomically(path, {"config": {"v": 2}})
    assert read_record(path) == {"config": {"v": 1}}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
