"""Permuted MNIST (PMNIST) with the GPM paper's protocol, read through torchvision.

Ten tasks by default, each the whole of MNIST seen through its own fixed pixel permutation (the first
task is permuted too). Images are scaled to [0, 1], normalised with MNIST's mean 0.1307 and std
0.3081 and flattened to 784 features. The first 10% of the training file is the validation set
(54k train / 6k validation / 10k test per task). Single head: every task has task label 0.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import MNIST

from gpm_gainlora_experiments.image.benchmarks.permuted import PermutedSplits, permuted_benchmark
from gpm_gainlora_experiments.image.benchmarks.image_data import (
    ImageBenchmark,
    RawImages,
    SizeCaps,
    TaskSplits,
    VALID_STREAM,
    Split,
    normalise,
    require_files,
    subsample,
)

NUM_FEATURES = 784
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def load_mnist(data_root: str | Path, *, download: bool = False, dataset_class: type[MNIST] = MNIST) -> RawImages:
    """Read MNIST, or a data set torchvision stores the same way (``FashionMNIST``), as uint8 images.

    :param data_root: folder holding ``<dataset_class name>/raw/*-ubyte`` (torchvision's layout).
    :param download: let torchvision download the files when they are missing.
    :param dataset_class: the torchvision class, ``MNIST`` or a subclass such as ``FashionMNIST``.
    :return: ``(N, 1, 28, 28)`` images with labels 0..9.
    :raises FileNotFoundError: when files are missing and ``download`` is false.
    :raises ValueError: when a file is truncated or corrupt.
    """
    name = dataset_class.__name__
    if not download:
        require_files(
            [Path(data_root) / name / "raw" / file for file in _IDX_FILES],
            f"<data_root>/{name}/raw/{{{','.join(_IDX_FILES)}}} (torchvision's {name} layout)",
            downloadable=True,
        )
    try:
        train = dataset_class(root=str(data_root), train=True, download=download)
        test = dataset_class(root=str(data_root), train=False)
    except RuntimeError as error:  # torchvision's parser on a file of the wrong size
        raise ValueError(
            f"the {name} files under {Path(data_root) / name / 'raw'} are truncated or corrupt ({error}); "
            "replace them (or delete them and pass --download)"
        ) from None
    return RawImages(
        train_x=train.data.unsqueeze(1),
        train_y=train.targets,
        test_x=test.data.unsqueeze(1),
        test_y=test.targets,
        classes=tuple(train.classes),
    )


def pixel_permutations(num_tasks: int, seed: int = 0) -> list[Tensor]:
    """One fixed permutation of the 784 pixels per task (the first task is permuted too).

    :param num_tasks: number of tasks.
    :param seed: seed of the permutations.
    """
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(NUM_FEATURES, generator=generator) for _ in range(num_tasks)]


def pmnist_tasks(
    data_root: str | Path,
    num_tasks: int = 10,
    seed: int = 0,
    *,
    val_fraction: float = 0.1,
    train_size_per_task: int | None = None,
    val_size_per_task: int | None = None,
    test_size_per_task: int | None = None,
    download: bool = False,
) -> list[TaskSplits]:
    """The tensors of Permuted MNIST, task by task (what :func:`pmnist` wraps into a benchmark).

    Every task holds its own permuted float32 copy of the data, about 220 MB per task at full size
    (2.2 GB for ten), as research code stores it; :func:`pmnist` builds the benchmark from one shared
    copy instead. The caps pick the same images for every task, so tasks differ only by their
    permutation.

    :param data_root: folder holding ``MNIST/raw/*-ubyte`` (torchvision's layout).
    :param num_tasks: number of tasks.
    :param seed: seed of the permutations and of the capped subsets.
    :param val_fraction: leading share of the training file used for validation.
    :param train_size_per_task: optional cap on the training samples of each task.
    :param val_size_per_task: optional cap on the validation samples of each task.
    :param test_size_per_task: optional cap on the test samples of each task.
    :param download: let torchvision download MNIST when it is missing.
    :return: train, validation and test tensors of every task (inputs ``(N, 784)``, labels 0..9).
    """
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be at least 1, got {num_tasks!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    flat, permutations = _shared_splits(
        data_root, num_tasks, seed, val_fraction, SizeCaps(train_size_per_task, val_size_per_task, test_size_per_task),
        download,
    )  # fmt: skip
    return [TaskSplits(*((x[:, perm], y) for x, y in flat)) for perm in permutations]


def _shared_splits(
    data_root: str | Path, num_tasks: int, seed: int, val_fraction: float, caps: SizeCaps, download: bool
) -> tuple[list[Split], list[Tensor]]:
    """The unpermuted, normalised, flattened train/validation/test splits and each task's permutation."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be at least 1, got {num_tasks!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    raw = load_mnist(data_root, download=download)
    num_val = max(1, int(val_fraction * len(raw.train_y)))
    # The protocol holds out the *first* 10% of the file, not a random 10%.
    splits = (
        (raw.train_x[num_val:], raw.train_y[num_val:]),
        (raw.train_x[:num_val], raw.train_y[:num_val]),
        (raw.test_x, raw.test_y),
    )
    generator = torch.Generator().manual_seed(seed)
    mean, std = torch.tensor(MNIST_MEAN), torch.tensor(MNIST_STD)
    flat = [
        (normalise(x, mean, std).flatten(1), y)
        for x, y in (subsample(split, cap, generator) for split, cap in zip(splits, caps))
    ]
    return flat, pixel_permutations(num_tasks, seed)


def pmnist(
    data_root: str | Path,
    num_tasks: int = 10,
    seed: int = 0,
    *,
    val_fraction: float = 0.1,
    train_size_per_task: int | None = None,
    val_size_per_task: int | None = None,
    test_size_per_task: int | None = None,
    download: bool = False,
) -> ImageBenchmark:
    """Permuted MNIST as an Avalanche benchmark holding one copy of MNIST (arguments of :func:`pmnist_tasks`).

    The experiences permute the shared tensors when read (:mod:`.permuted`), about 220 MB for any
    number of tasks; their samples equal :func:`pmnist_tasks`' stored copies.

    :return: the benchmark (inputs ``(N, 784)``, labels 0..9, task label 0) and its validation tensors.
    """
    caps = SizeCaps(train_size_per_task, val_size_per_task, test_size_per_task)
    (train, val, test), permutations = _shared_splits(data_root, num_tasks, seed, val_fraction, caps, download)
    benchmark = permuted_benchmark({"train": train, "test": test, VALID_STREAM: val}, permutations)
    return ImageBenchmark(benchmark=benchmark, val=PermutedSplits(val, permutations))
