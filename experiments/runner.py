"""One run: a strategy trained experience by experience on a benchmark, saved as a JSON record.

Records are named ``<strategy>_seed<seed>.json``; a run whose record exists is skipped (and its
record returned), so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from avalanche.benchmarks.scenarios import CLStream
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.templates import SupervisedTemplate
from tqdm.auto import tqdm

from experiments.benchmarks import get_benchmark
from experiments.evaluation import accuracy_row, quiet_evaluator
from experiments.hyperparams import Hyperparams
from experiments.metrics import acc_bwt
from experiments.provenance import cuda_peak_mib, git_commit, max_rss_mib, package_versions, reset_cuda_peak
from experiments.strategies import build_strategy, check_strategy


def result_path(out_dir: str | os.PathLike, strategy_name: str, seed: int) -> Path:
    """Where the record of one run lives.

    :param out_dir: output folder of the sweep.
    :param strategy_name: registered strategy name.
    :param seed: the run's seed.
    """
    return Path(out_dir) / f"{strategy_name}_seed{seed}.json"


def run(
    benchmark_name: str,
    strategy_name: str,
    seed: int,
    out_dir: str | os.PathLike,
    *,
    hyperparams: Hyperparams | None = None,
    num_tasks: int | None = None,
    data_root: str | None = None,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate one (benchmark, strategy, seed) and write its record.

    After each training experience the model is evaluated on the whole test stream, which gives
    one row of the accuracy matrix ``A[t, j]``.

    :param benchmark_name: registered benchmark name.
    :param strategy_name: registered strategy name.
    :param seed: seeds torch, numpy and random, the benchmark and the model initialisation.
    :param out_dir: folder of the JSON record (created if needed).
    :param hyperparams: the protocol; default the benchmark's preset.
    :param num_tasks: train and evaluate on the first ``num_tasks`` experiences only (smoke runs);
        default all.
    :param data_root: folder of local data for benchmarks that need files.
    :param device: training device, e.g. ``"cpu"`` or ``"cuda"``.
    :param force: rerun and overwrite an existing record.
    :param progress: show a progress bar over experiences, and say when a run is skipped.
    :return: the record (also when it was read back from an existing file).
    :raises ValueError: for unknown names, or when an existing record was made with another
        configuration (rerun with ``force`` or use another ``out_dir``).
    """
    spec = get_benchmark(benchmark_name)
    check_strategy(strategy_name)
    if hyperparams is None:
        hyperparams = spec.defaults
    config = {
        "benchmark": benchmark_name,
        "strategy": strategy_name,
        "seed": seed,
        "num_tasks": num_tasks,
        "hyperparams": hyperparams.to_dict(strategy_name),
    }
    path = result_path(out_dir, strategy_name, seed)
    if path.exists() and not force:
        record = _existing_record(path, config)
        if progress:
            tqdm.write(f"{strategy_name} seed {seed}: {path} exists, skipped (force to rerun)")
        return record

    RNGManager.set_random_seeds(seed)
    benchmark = spec.build(seed, data_root)
    train_stream, test_stream = benchmark.train_stream, benchmark.test_stream
    if num_tasks is not None:
        if not 1 <= num_tasks <= len(train_stream):
            raise ValueError(f"num_tasks must be in 1..{len(train_stream)} for {benchmark_name}, got {num_tasks}")
        train_stream, test_stream = train_stream[:num_tasks], test_stream[:num_tasks]
    torch_device = torch.device(device)
    strategy = build_strategy(
        strategy_name, model=spec.model(), hyperparams=hyperparams, evaluator=quiet_evaluator(), device=torch_device
    )

    reset_cuda_peak(torch_device)
    matrix, wall_time, train_time = _train_and_evaluate(
        strategy, train_stream, test_stream, f"{strategy_name} seed {seed}", progress
    )
    acc, bwt = acc_bwt(matrix)
    gpm = getattr(strategy, "gpm", None)
    record = {
        "config": config,
        "accuracy_matrix": matrix,
        "acc": acc,
        "bwt": bwt,
        "wall_time_s": wall_time,
        "train_time_s": train_time,
        "peak_memory": {"max_rss_mib": max_rss_mib(), "cuda_max_allocated_mib": cuda_peak_mib(torch_device)},
        "gpm_usage_history": None if gpm is None else gpm.usage_history,
        "environment": {"device": str(torch_device), "packages": package_versions(), "git_commit": git_commit()},
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_atomically(path, record)
    return record


def _train_and_evaluate(
    strategy: SupervisedTemplate, train_stream: CLStream, test_stream: CLStream, label: str, progress: bool
) -> tuple[list[list[float]], float, float]:
    """Train experience by experience, evaluating the whole test stream after each.

    :return: the accuracy matrix, the wall time of the loop and the time spent training.
    """
    matrix: list[list[float]] = []
    train_time = 0.0
    start = time.perf_counter()
    bar = tqdm(train_stream, desc=label, unit="task", disable=not progress)
    for experience in bar:
        train_start = time.perf_counter()
        strategy.train(experience)
        train_time += time.perf_counter() - train_start
        matrix.append(accuracy_row(strategy.eval(test_stream), len(test_stream)))
        seen = matrix[-1][: len(matrix)]
        bar.set_postfix(acc_seen=f"{sum(seen) / len(seen):.3f}")
    return matrix, time.perf_counter() - start, train_time


def _existing_record(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    record = json.loads(path.read_text())
    # Compare in JSON form: tuples in the preset are lists in the file.
    if record["config"] != json.loads(json.dumps(config)):
        raise ValueError(
            f"{path} holds a run with another configuration ({record['config']}, now {config}); "
            "pass force=True (--force) to overwrite it or choose another output folder"
        )
    return record


def _write_atomically(path: Path, record: dict[str, Any]) -> None:
    # An interrupted write must not leave a truncated record that later sweeps would skip.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2))
    os.replace(partial, path)
