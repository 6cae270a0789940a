"""Small seeded benchmarks and evaluation helpers shared by the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing
from avalanche.benchmarks import tensors_benchmark

from gpm_gainlora_experiments.common.evaluation import accuracy_row, quiet_evaluator

__all__ = [
    "accuracy_row",
    "experience_inputs",
    "free_port",
    "gaussian_tasks",
    "kill_once_paused",
    "launch_ranks",
    "quiet_evaluator",
    "without",
]


def gaussian_tasks(
    num_tasks: int,
    shape: tuple[int, ...],
    num_classes: int = 3,
    train_size: int = 60,
    test_size: int = 30,
    seed: int = 0,
    task_labels: bool = False,
):
    """A benchmark whose tasks are learnable: each class of each task is a Gaussian blob."""
    generator = torch.Generator().manual_seed(seed)

    def sample(means: torch.Tensor, size: int):
        labels = torch.randint(0, num_classes, (size,), generator=generator)
        return means[labels] + 0.5 * torch.randn(size, *shape, generator=generator), labels

    train, test = [], []
    for _ in range(num_tasks):
        means = torch.randn(num_classes, *shape, generator=generator)
        train.append(sample(means, train_size))
        test.append(sample(means, test_size))
    labels = list(range(num_tasks)) if task_labels else [0] * num_tasks
    return tensors_benchmark(train_tensors=train, test_tensors=test, task_labels=labels)


def experience_inputs(experience) -> torch.Tensor:
    """All inputs of an experience's dataset, stacked in dataset order."""
    dataset = experience.dataset.eval()
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def kill_once_paused(victim: subprocess.Popen, pause_file: Path, timeout_s: float = 300) -> None:
    """``kill -9`` a resume-test worker once it wrote ``pause_file`` (it has saved a checkpoint)."""
    deadline = time.monotonic() + timeout_s
    while not pause_file.exists():
        assert victim.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, f"no checkpoint after {timeout_s:.0f} s"
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()


def without(record: dict, fields: set[str]) -> dict:
    """``record`` without ``fields`` (e.g. the timings, which differ between equal runs)."""
    return {key: value for key, value in record.items() if key not in fields}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for a test's process group."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_entry(index: int, world_size: int, port: int, main: Callable[[str], None], out: str) -> None:
    os.environ.update(
        RANK=str(index),
        LOCAL_RANK=str(index),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    main(out)


def launch_ranks(main: Callable[[str], None], out: Path, world_size: int = 2) -> None:
    """Run ``main(out)`` in ``world_size`` new processes with the environment torchrun gives its
    workers, so that they join one process group as in a real launch.

    The processes are spawned, not forked: a fork of the test process after it ran multi-threaded
    code (OpenMP, the tokenizers' thread pool) can leave a child waiting forever on a lock.
    ``main`` must be importable (a module-level function). An exception, or a non-zero exit
    (e.g. SIGABRT at exit), in any process raises here.
    """
    torch.multiprocessing.start_processes(
        _rank_entry, args=(world_size, free_port(), main, str(out)), nprocs=world_size, start_method="spawn"
    )

