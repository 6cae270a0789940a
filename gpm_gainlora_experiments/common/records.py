"""Run records on disk: where they live, how they are read, written and guarded.

Every run writes one JSON record, ``<out>/<name>_seed<seed>.json``. Writes go through a
temporary file of their own and an atomic rename, so a reader never sees half a record; a run
holds a lock on its record for as long as it trains (``<out>/checkpoints/<name>_seed<seed>.lock``,
released when the process ends, however it ends), so two processes started on the same record
cannot both train it and overwrite each other.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import filelock

#: Free space an output folder needs before a run starts: records and plots take far less, the
#: per-experience checkpoints of a run some megabytes.
MIN_FREE_BYTES = 100 * 2**20


def result_path(out_dir: str | os.PathLike, name: str, seed: int) -> Path:
    """Where the record of one run lives.

    :param out_dir: output folder of the sweep.
    :param name: the strategy or method name (or a tuning point's record name).
    :param seed: the run's seed.
    """
    return Path(out_dir) / f"{name}_seed{seed}.json"


def check_output_folder(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and make sure records can be written there, before any training.

    :raises ValueError: when ``out_dir`` is a file, cannot be created or written, or its disk has
        less than :data:`MIN_FREE_BYTES` free.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose a folder for the records")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as error:
        raise ValueError(
            f"cannot write records into --out {out} ({error.strerror}); choose a writable folder"
        ) from None
    free = shutil.disk_usage(out).free
    if free < MIN_FREE_BYTES:
        raise ValueError(
            f"the disk of --out {out} has {free / 2**20:.0f} MiB free, less than the {MIN_FREE_BYTES // 2**20} MiB "
            "a run needs for its record and checkpoints; free some space or choose another folder"
        )
    return out


def read_record(path: Path) -> dict[str, Any]:
    """The record at ``path``.

    :raises ValueError: naming the file when it is not a complete JSON record.
    """
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} is not a complete run record ({error}); delete it, or rerun with --force to replace it"
        ) from None
    if not isinstance(record, dict) or "config" not in record:
        raise ValueError(f"{path} is not a run record (no 'config'); delete it or move it out of the folder")
    return record


def existing_record(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The record at ``path``, which must have been made with ``config`` (else a ValueError says how to rerun)."""
    record = read_record(path)
    # Compare in JSON form: tuples in the preset are lists in the file.
    if record["config"] != json.loads(json.dumps(config)):
        raise ValueError(
            f"{path} holds a run with another configuration ({record['config']}, now {config}); "
            "pass force=True (--force) to overwrite it or choose another output folder"
        )
    return record


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: JSON has neither, and
    ``json.dumps`` would write ``NaN``, which strict readers (and ``jq``) reject."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO]:
    """An open temporary file of its own beside ``path`` that replaces ``path`` when the block
    ends, or is removed when the block raises; the folder is created if needed.

    :param mode: ``"w"`` for text, ``"wb"`` for bytes.
    """
    # An interrupted write must not leave a truncated file that later runs would read.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, mode) as file:
            yield file
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def write_atomically(path: Path, record: dict[str, Any]) -> None:
    """Write a run record as strict JSON through :func:`atomic_file`."""
    text = json.dumps(json_safe(record), indent=2, allow_nan=False)
    with atomic_file(path) as file:
        file.write(text)


@contextlib.contextmanager
def record_lock(path: Path, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of the record at ``path`` for the duration of the block.

    :param enabled: False on the processes of a distributed run that do not write the record.
    :raises ValueError: at once when another process holds it (it is training the same run).
    """
    if not enabled:
        yield
        return
    lock_path = path.parent / "checkpoints" / f"{path.stem}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise ValueError(
            f"another process is running the same run into {path} (it holds {lock_path}); wait for it to "
            "finish or choose another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()
