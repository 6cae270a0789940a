"""One run: a strategy trained experience by experience on a benchmark, saved as a JSON record.

The ``joint`` strategy (the multitask upper bound) instead trains once on all experiences; its
record holds a single row of final accuracies, and no BWT.

Records are named ``<strategy>_seed<seed>.json`` (see :mod:`gpm_gainlora_experiments.common.records`); a run whose
record exists is skipped (and its record returned), so an interrupted sweep goes on where it
stopped. Within a run, a checkpoint after every experience (the whole strategy, see
:mod:`gpm_gainlora_experiments.image.checkpoints`) lets a killed run resume after its last finished experience.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from avalanche.benchmarks.scenarios import CLScenario, CLStream
from avalanche.training import JointTraining
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from tqdm.auto import tqdm

from avalanche_gpm.distributed import DistributedHelper, distributed_accuracy_row, unwrap_from_ddp, wrap_for_ddp
from gpm_gainlora_experiments.image.benchmarks import get_benchmark
from gpm_gainlora_experiments.common.checkpoints import checkpoint_path
from gpm_gainlora_experiments.common.devices import resolve_device
from gpm_gainlora_experiments.common.evaluation import accuracy_row, image_evaluator
from gpm_gainlora_experiments.common.loggers import close_loggers, loggers_for_run
from gpm_gainlora_experiments.image.hyperparams import Hyperparams
from gpm_gainlora_experiments.image.checkpoints import RunProgress, data_tensors, resume_strategy, save_strategy_checkpoint
from gpm_gainlora_experiments.common.metrics import acc_bwt
from gpm_gainlora_experiments.image.plugins import BatchedLoading, DivergenceMonitor, EpochProgress, ValidationLRSchedule
from gpm_gainlora_experiments.common.provenance import process_commit, record_provenance, reset_cuda_peak, source_fingerprint
from gpm_gainlora_experiments.common.records import check_output_folder, existing_record, record_lock, result_path, write_atomically
from gpm_gainlora_experiments.image.strategies import STRATEGIES, build_strategy, check_strategy


#: Strategies whose plugins keep every rank identical under DDP (A-GEM's and EWC's would compute
#: their reference gradients / importances from each rank's own samples, JointTraining has no
#: per-experience sharding).
DISTRIBUTED_STRATEGIES: tuple[str, ...] = ("naive", "gpm", "sgp", "replay")

#: Streams an accuracy matrix can be measured on: the test split, or the validation split for tuning.
EVAL_STREAMS: tuple[str, ...] = ("test", "valid")


def run(
    benchmark_name: str,
    strategy_name: str,
    seed: int,
    out_dir: str | os.PathLike,
    *,
    hyperparams: Hyperparams | None = None,
    num_tasks: int | None = None,
    data_root: str | None = None,
    download: bool = False,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    eval_stream: str = "test",
    record_name: str | None = None,
    loggers: Sequence[str] = (),
    log_dir: str | os.PathLike | None = None,
    batched_loading: bool = True,
) -> dict[str, Any]:
    """Train and evaluate one (benchmark, strategy, seed) and write its record.

    After each training experience the model is evaluated on the whole test stream (the validation
    stream when tuning), which gives one row of the accuracy matrix ``A[t, j]``. Experiences whose
    training loss became NaN or infinite are listed in ``diverged_experiences`` (and warned about). A joint run is
    trained once on all experiences and evaluated once: its matrix is that single row, its ``bwt``
    is None and ``joint`` is true.

    :param benchmark_name: registered benchmark name.
    :param strategy_name: registered strategy name.
    :param seed: seeds torch, numpy and random, the benchmark, the model initialisation and GPM's
        memory samples.
    :param out_dir: folder of the JSON record (created if needed).
    :param hyperparams: the protocol; default the benchmark's preset.
    :param num_tasks: train and evaluate on the first ``num_tasks`` experiences only (smoke runs);
        default all.
    :param data_root: folder of local data for benchmarks that need files.
    :param download: let torchvision download missing files where it can.
    :param device: training device, e.g. ``"cpu"`` or ``"cuda"``.
    :param force: rerun and overwrite an existing record.
    :param progress: show a progress bar over experiences, and say when a run is skipped (on the
        main process only under DDP).
    :param eval_stream: ``"test"``, or ``"valid"`` to fill the accuracy matrix from the validation
        split when choosing hyper-parameters (see :mod:`gpm_gainlora_experiments.image.tune`).
    :param record_name: stem of the record's file name instead of the strategy name (one record per
        option setting when tuning).
    :param loggers: Avalanche loggers by name (see :mod:`gpm_gainlora_experiments.common.loggers`),
        on the main process only; they change no result.
    :param log_dir: folder of the runs' logs, one subfolder ``<record name>_seed<seed>`` per run;
        default ``<out_dir>/logs``.
    :param batched_loading: serve mini-batches by tensor gathers where that is provably identical
        to Avalanche's loader (:class:`~gpm_gainlora_experiments.image.plugins.BatchedLoading`);
        false keeps Avalanche's per-sample loader. It changes no result, only the time.
    :return: the record (also when it was read back from an existing file).
    :raises ValueError: for unknown names, when an existing record was made with another
        configuration (rerun with ``force`` or use another ``out_dir``), or when the preset has a
        learning-rate schedule or ``eval_stream="valid"`` and the benchmark lacks a validation stream.
    """
    spec = get_benchmark(benchmark_name)
    check_strategy(strategy_name)
    if eval_stream not in EVAL_STREAMS:
        raise ValueError(f"eval_stream must be one of {', '.join(EVAL_STREAMS)}, got {eval_stream!r}")
    if hyperparams is None:
        hyperparams = spec.defaults
    if STRATEGIES[strategy_name] is JointTraining and hyperparams.lr_schedule is not None:
        # The schedule validates one task at a time; joint training has no per-task phases, so it
        # trains the preset's (maximum) epochs at the base lr. The record's config says so.
        hyperparams = hyperparams.replace(lr_schedule=None)
    config = {
        "benchmark": benchmark_name,
        "strategy": strategy_name,
        "seed": seed,
        "num_tasks": num_tasks,
        "hyperparams": hyperparams.to_dict(strategy_name),
    }
    if eval_stream != "test":  # test-set records keep the configuration they were written with
        config["eval_stream"] = eval_stream
    world_size = DistributedHelper.world_size if DistributedHelper.is_distributed else 1
    progress = progress and DistributedHelper.is_main_process  # one bar, not one per rank
    if world_size > 1:
        _check_distributed(strategy_name, hyperparams, world_size)
        config["world_size"] = world_size  # batch_size stays the global batch
    path = result_path(out_dir, record_name or strategy_name, seed)
    check_output_folder(out_dir)  # a bad --out or --device found now, not after the training
    torch_device = resolve_device(device)
    # Held until the record is written: a second process on the same record stops at once.
    with record_lock(path, enabled=DistributedHelper.is_main_process):
        if path.exists() and not force:
            record = existing_record(path, config)
            if progress:
                tqdm.write(f"{strategy_name} seed {seed}: {path} exists, skipped (force to rerun)")
            return record

        commit = process_commit()  # the code that runs, even if the checkout moves on during a long run
        source = source_fingerprint()
        RNGManager.set_random_seeds(seed)
        benchmark = spec.build(seed, data_root, download)
        train_stream, evaluated = benchmark.train_stream, _evaluation_stream(benchmark, benchmark_name, eval_stream)
        if num_tasks is not None:
            if not 1 <= num_tasks <= len(train_stream):
                raise ValueError(f"num_tasks must be in 1..{len(train_stream)} for {benchmark_name}, got {num_tasks}")
            train_stream, evaluated = train_stream[:num_tasks], evaluated[:num_tasks]
        joint = STRATEGIES[strategy_name] is JointTraining
        # One process: resume after the last experience a killed run finished (DDP and joint runs start afresh).
        resumable = world_size == 1 and not joint
        checkpoint = checkpoint_path(out_dir, record_name or strategy_name, seed) if resumable else None
        if checkpoint is not None and force:
            checkpoint.unlink(missing_ok=True)
        run_loggers = loggers_for_run(
            loggers, out_dir=out_dir, log_dir=log_dir, run_name=f"{record_name or strategy_name}_seed{seed}",
            project=benchmark_name, resume=checkpoint is not None and checkpoint.exists(),
        )  # fmt: skip
        strategy = build_strategy(
            strategy_name,
            model=spec.model(),
            # Under DDP each rank takes its share of the global batch.
            hyperparams=hyperparams.replace(batch_size=hyperparams.batch_size // world_size),
            evaluator=image_evaluator(run_loggers),
            device=torch_device,
            plugins=[
                *_schedule_plugins(benchmark, benchmark_name, hyperparams, len(train_stream)),
                DivergenceMonitor(),
                *([BatchedLoading()] if batched_loading else []),
            ],
            seed=seed,
        )
        wrap_for_ddp(strategy, experiences=train_stream)
        shared = data_tensors(benchmark) if checkpoint is not None else []  # the data, as built
        resumed = resume_strategy(checkpoint, config, strategy, shared) if checkpoint is not None else None
        resumed_after = None if resumed is None else len(resumed.matrix)

        reset_cuda_peak(torch_device)
        on_end = None
        if checkpoint is not None:
            on_end = functools.partial(
                save_strategy_checkpoint, checkpoint, config, strategy=strategy, shared=shared
            )
        done = _train_and_evaluate(
            strategy, train_stream, evaluated, f"{strategy_name} seed {seed}", progress, joint,
            resumed=resumed, on_experience_end=on_end,
        )  # fmt: skip
        close_loggers(run_loggers)
        matrix = done.matrix
        unwrap_from_ddp(strategy)
        # A joint run has only the final row: ACC is its mean, and BWT (forgetting) is undefined.
        acc, bwt = (sum(matrix[0]) / len(matrix[0]), None) if joint else acc_bwt(matrix)
        gpm = getattr(strategy, "gpm", None)
        record = {
            "config": config,
            "accuracy_matrix": matrix,
            "acc": acc,
            "bwt": bwt,
            "joint": joint,
            "wall_time_s": done.wall_s,
            "train_time_s": done.train_s,
            "resumed_after_experience": resumed_after,
            "gpm_usage_history": None if gpm is None else gpm.usage_history,
            # the monitor in the strategy: a resumed strategy holds the one its checkpoint saved
            "diverged_experiences": next(p for p in strategy.plugins if isinstance(p, DivergenceMonitor)).diverged,
            **record_provenance(torch_device, commit, source),
        }
        if DistributedHelper.is_main_process:
            write_atomically(path, record)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        return record


def _evaluation_stream(benchmark: CLScenario, benchmark_name: str, eval_stream: str) -> CLStream:
    """The stream that fills the accuracy matrix: the test stream, or the validation stream."""
    if eval_stream == "test":
        return benchmark.test_stream
    stream = getattr(benchmark, "valid_stream", None)
    if stream is None:
        raise ValueError(
            f"benchmark {benchmark_name!r} has no validation stream to evaluate on; "
            "tune on a benchmark with a validation split (pmnist, split_cifar10, ...)"
        )
    return stream


def _schedule_plugins(
    benchmark: CLScenario, benchmark_name: str, hyperparams: Hyperparams, num_tasks: int
) -> list[SupervisedPlugin]:
    """The validation learning-rate schedule of the preset, if it has one.

    :param benchmark: the built benchmark; needs a ``valid_stream`` when the preset has a schedule.
    :param benchmark_name: quoted in errors.
    :param hyperparams: the run's protocol.
    :param num_tasks: number of training experiences of the run.
    :raises ValueError: when the benchmark has no validation stream, or a shorter one.
    """
    schedule = hyperparams.lr_schedule
    if schedule is None:
        return []
    valid_stream = getattr(benchmark, "valid_stream", None)
    if valid_stream is None or len(valid_stream) < num_tasks:
        found = "none" if valid_stream is None else f"{len(valid_stream)} experiences"
        raise ValueError(
            f"the learning-rate schedule needs a validation stream with one experience per task; "
            f"{benchmark_name} has {found} for {num_tasks} tasks (drop lr_schedule from the hyperparameters)"
        )
    return [
        ValidationLRSchedule(
            valid_stream[:num_tasks],
            factor=schedule.factor,
            patience=schedule.patience,
            lr_min=schedule.lr_min,
            eval_mb_size=hyperparams.eval_batch_size,
        )
    ]


def _check_distributed(strategy_name: str, hyperparams: Hyperparams, world_size: int) -> None:
    if strategy_name not in DISTRIBUTED_STRATEGIES:
        raise ValueError(
            f"strategy {strategy_name!r} cannot run on several processes (its plugin would differ between "
            f"ranks); distributed runs support {', '.join(DISTRIBUTED_STRATEGIES)}"
        )
    if hyperparams.batch_size % world_size:
        raise ValueError(
            f"the global batch {hyperparams.batch_size} does not split over {world_size} processes; "
            "launch a number of processes that divides it"
        )


def _train_and_evaluate(
    strategy: SupervisedTemplate,
    train_stream: CLStream,
    test_stream: CLStream,
    label: str,
    progress: bool,
    joint: bool = False,
    *,
    resumed: RunProgress | None = None,
    on_experience_end: Callable[[RunProgress], None] | None = None,
) -> RunProgress:
    """Train experience by experience, evaluating the whole test stream after each.

    :param joint: train once on the whole stream instead (``JointTraining`` concatenates the
        experiences itself and refuses a second ``train``), which gives a single row.
    :param resumed: what a killed run finished (its experiences are skipped), or None.
    :param on_experience_end: called with the progress after every experience (the checkpoint).
    :return: the accuracy matrix and the times of the whole run.
    """
    done = resumed or RunProgress()
    start = time.perf_counter() - done.wall_s
    steps = [train_stream] if joint else train_stream
    bar = tqdm(
        steps[len(done.matrix) :], desc=label, unit="run" if joint else "task", disable=not progress,
        total=len(steps), initial=len(done.matrix),
    )  # fmt: skip
    epochs = EpochProgress(bar, strategy.train_epochs)
    strategy.plugins.append(epochs)
    for step in bar:
        train_start = time.perf_counter()
        strategy.train(step)
        done.train_s += time.perf_counter() - train_start
        if DistributedHelper.is_distributed:
            # Avalanche's evaluation reports each rank's shard: reduce over the whole test set instead.
            batch_size = strategy.eval_mb_size
            done.matrix.append(
                distributed_accuracy_row(strategy.model, test_stream, batch_size=batch_size, device=strategy.device)
            )
        else:
            done.matrix.append(accuracy_row(strategy.eval(test_stream), len(test_stream), test_stream.name))
        seen = done.matrix[-1] if joint else done.matrix[-1][: len(done.matrix)]
        epochs.show(acc_seen=f"{sum(seen) / len(seen):.3f}")
        done.wall_s = time.perf_counter() - start
        if on_experience_end is not None:
            strategy.plugins.remove(epochs)  # its progress bar is not part of the run's state
            on_experience_end(done)
            strategy.plugins.append(epochs)
    strategy.plugins.remove(epochs)
    done.wall_s = time.perf_counter() - start
    return done
