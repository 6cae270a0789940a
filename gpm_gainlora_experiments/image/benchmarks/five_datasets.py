"""5-Datasets as in GPM: CIFAR-10, MNIST, SVHN, Fashion-MNIST and notMNIST, one task each.

Every task has 10 classes and its own head (task labels 0..4). Images are ``(3, 32, 32)``: the
28x28 greyscale sets are zero-padded by 2 pixels and their single channel is repeated three times.
Each data set is normalised with the per-channel mean and std of its own (padded) training split,
and 5% of each training split is held out (seeded) for validation.

Files expected under the data root:

* CIFAR-10: ``cifar10-jpg.tar.xz`` or ``cifar-10-batches-py/`` (see :mod:`.split_cifar`);
* MNIST: ``MNIST/raw/*-ubyte``; Fashion-MNIST: ``FashionMNIST/raw/*-ubyte`` (torchvision's layout);
* SVHN: ``train_32x32.mat`` and ``test_32x32.mat`` (torchvision's layout);
* notMNIST: ``notMNIST/{train,test}/<A..J>/*.png``, 28x28 greyscale (torchvision has no notMNIST, so
  nothing downloads it; classes are the letter folders sorted by name).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.io
import torch
import torch.nn.functional as F
from torchvision.datasets import SVHN, FashionMNIST

from gpm_gainlora_experiments.image.benchmarks.image_data import (
    ImageBenchmark,
    RawImages,
    SizeCaps,
    TaskSplits,
    channel_stats,
    make_benchmark,
    make_task,
    read_image_folder,
    require_files,
)
from gpm_gainlora_experiments.image.benchmarks.pmnist import load_mnist
from gpm_gainlora_experiments.image.benchmarks.split_cifar import load_cifar10

TASK_NAMES = ("cifar10", "mnist", "svhn", "fashion_mnist", "notmnist")
IMAGE_SIZE = 32
_NOTMNIST_SIZE = (28, 28)
_SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def load_svhn(data_root: str | Path, *, download: bool = False) -> RawImages:
    """Read SVHN's ``.mat`` files as uint8 ``(N, 3, 32, 32)`` images, digit 0 as label 0.

    The files are parsed here (torchvision refuses any file whose MD5 differs from the official one);
    torchvision only downloads.

    :param data_root: folder holding ``train_32x32.mat`` and ``test_32x32.mat``.
    :param download: let torchvision download missing files.
    :raises FileNotFoundError: when files are missing and ``download`` is false.
    """
    root = Path(data_root)
    if download:
        for split, name in _SVHN_FILES.items():
            if not (root / name).exists():
                SVHN(root=str(root), split=split, download=True)
    require_files(
        [root / name for name in _SVHN_FILES.values()],
        "<data_root>/{train_32x32.mat,test_32x32.mat} (torchvision's SVHN layout)",
        downloadable=True,
    )

    def read(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        mat = scipy.io.loadmat(root / name)
        images = torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)))  # (H, W, C, N) -> NCHW
        labels = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1))
        return images, labels % 10  # SVHN stores the digit 0 as label 10

    return RawImages(*read(_SVHN_FILES["train"]), *read(_SVHN_FILES["test"]), classes=tuple(str(d) for d in range(10)))


def load_notmnist(data_root: str | Path) -> RawImages:
    """Read notMNIST from PNG folders as uint8 ``(N, 1, 28, 28)`` images.

    :param data_root: folder holding ``notMNIST/{train,test}/<letter>/*.png``.
    :raises FileNotFoundError: when a split folder is missing.
    """
    folder = Path(data_root) / "notMNIST"
    require_files(
        [folder / "train", folder / "test"],
        "<data_root>/notMNIST/{train,test}/<A..J>/*.png",
        downloadable=False,
    )
    train_x, train_y, classes = read_image_folder(folder / "train", "L", _NOTMNIST_SIZE)
    test_x, test_y, test_classes = read_image_folder(folder / "test", "L", _NOTMNIST_SIZE)
    if test_classes != classes:
        raise ValueError(f"{folder}/test has classes {test_classes}, {folder}/train has {classes}")
    return RawImages(train_x, train_y, test_x, test_y, classes)


def _pad_to_32(raw: RawImages) -> RawImages:
    """Zero-pad smaller images evenly to 32x32 (2 pixels each side for 28x28)."""
    pad = (IMAGE_SIZE - raw.train_x.shape[-1]) // 2

    def padded(images: torch.Tensor) -> torch.Tensor:
        return F.pad(images, (pad, pad, pad, pad)) if pad else images

    return RawImages(padded(raw.train_x), raw.train_y, padded(raw.test_x), raw.test_y, raw.classes)


def _as_rgb(task: TaskSplits) -> TaskSplits:
    """Repeat a greyscale task's channel three times as a view, without copying."""
    train, val, test = ((x.expand(-1, 3, -1, -1), y) for x, y in (task.train, task.val, task.test))
    return TaskSplits(train=train, val=val, test=test)


def five_datasets(
    data_root: str | Path,
    seed: int = 0,
    val_fraction: float = 0.05,
    *,
    train_size_per_task: int | None = None,
    val_size_per_task: int | None = None,
    test_size_per_task: int | None = None,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> ImageBenchmark:
    """Build 5-Datasets: CIFAR-10, MNIST, SVHN, Fashion-MNIST, notMNIST (in this order).

    Greyscale tasks are stored as one channel expanded to three (a read-only view), which saves
    about 1.2 GB; at full size the float32 tensors take about 2.7 GB.

    :param data_root: folder holding the five data sets (see the module docstring).
    :param seed: seed of the validation splits and of the caps.
    :param val_fraction: share of each task's training samples held out for validation.
    :param train_size_per_task: optional cap on the training samples of each task.
    :param val_size_per_task: optional cap on the validation samples of each task.
    :param test_size_per_task: optional cap on the test samples of each task.
    :param download: let torchvision download what it can (all but notMNIST).
    :param cache_dir: where the decoded CIFAR-10 JPEG archive is cached.
    :return: the benchmark (inputs ``(N, 3, 32, 32)``, labels 0..9, task labels 0..4) and its
        validation tensors.
    :raises FileNotFoundError: listing every data set whose files are missing.
    """
    loaders: list[Callable[[], RawImages]] = [
        lambda: load_cifar10(data_root, download=download, cache_dir=cache_dir),
        lambda: load_mnist(data_root, download=download),
        lambda: load_svhn(data_root, download=download),
        lambda: load_mnist(data_root, download=download, dataset_class=FashionMNIST),
        lambda: load_notmnist(data_root),
    ]
    raws, missing = [], []
    for name, load in zip(TASK_NAMES, loaders):
        try:
            raws.append(load())
        except FileNotFoundError as error:  # gather them all, so one run names every missing data set
            missing.append(f"{name}: {error}")
    if missing:
        raise FileNotFoundError("5-Datasets is incomplete:\n" + "\n".join(missing))
    caps = SizeCaps(train_size_per_task, val_size_per_task, test_size_per_task)
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    for raw in map(_pad_to_32, raws):
        mean, std = channel_stats(raw.train_x)
        task = make_task(
            raw, range(len(raw.classes)), val_fraction=val_fraction, mean=mean, std=std, caps=caps, generator=generator
        )
        tasks.append(_as_rgb(task) if raw.train_x.shape[1] == 1 else task)
    return make_benchmark(tasks, list(range(len(tasks))))
