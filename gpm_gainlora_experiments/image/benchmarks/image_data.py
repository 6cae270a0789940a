"""Plumbing shared by the image benchmarks: raw images in, an Avalanche benchmark with validation out.

Every builder (:mod:`~gpm_gainlora_experiments.image.benchmarks.pmnist`, :mod:`~gpm_gainlora_experiments.image.benchmarks.split_cifar`,
:mod:`~gpm_gainlora_experiments.image.benchmarks.five_datasets`, :mod:`~gpm_gainlora_experiments.image.benchmarks.mini_imagenet`) reads
its files into :class:`RawImages` (uint8, ``(N, C, H, W)``), cuts them into one :class:`TaskSplits`
per task with :func:`make_task` (:func:`split_by_classes` does both for tasks of consecutive
classes), and hands the tasks to :func:`make_benchmark`, which returns an :class:`ImageBenchmark`:
the Avalanche benchmark plus the validation tensors of every task.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch
from avalanche.benchmarks import GenericCLScenario, tensors_benchmark
from PIL import Image, UnidentifiedImageError
from torch import Tensor

Split = tuple[Tensor, Tensor]
"""Inputs and integer labels of one split of one task."""

VALID_STREAM = "valid"
"""Name of the validation stream (``benchmark.valid_stream``), as in Avalanche's own validation helpers."""


@dataclass(frozen=True)
class RawImages:
    """One data set as read from disk, before any split or normalisation.

    :param train_x: training images, uint8 ``(N, C, H, W)``.
    :param train_y: training labels, int64 ``(N,)``, indices into ``classes``.
    :param test_x: test images, uint8 ``(M, C, H, W)``.
    :param test_y: test labels, int64 ``(M,)``.
    :param classes: class names in label order.
    """

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: tuple[str, ...]


@dataclass(frozen=True)
class TaskSplits:
    """Normalised train, validation and test tensors of one task."""

    train: Split
    val: Split
    test: Split


@dataclass(frozen=True)
class ImageBenchmark:
    """An Avalanche benchmark and the validation data of each of its tasks.

    :param benchmark: the benchmark; its ``train_stream``, ``valid_stream`` and ``test_stream`` have one
        experience per task, in task order.
    :param val: validation ``(x, y)`` of each task, the same tensors as ``benchmark.valid_stream``, for
        code that checks validation loss outside Avalanche (early stopping, learning-rate schedules).
    """

    benchmark: GenericCLScenario
    val: Sequence[Split]


class SizeCaps(NamedTuple):
    """Optional caps on the samples of each task (a seeded random subset), for tests and CPU budgets."""

    train: int | None = None
    val: int | None = None
    test: int | None = None


def default_cache_dir() -> Path:
    """Where decoded data sets are cached unless a builder is given ``cache_dir``."""
    return Path.home() / ".cache" / "avalanche_gpm"


def require_files(paths: Sequence[Path], layout: str, downloadable: bool) -> None:
    """Raise :class:`FileNotFoundError` if any of ``paths`` is missing.

    :param paths: files (or folders) a loader needs.
    :param layout: the expected layout under the data root, quoted in the message.
    :param downloadable: whether torchvision can fetch the files, i.e. whether ``--download`` helps.
    :raises FileNotFoundError: naming every missing path.
    """
    missing = [str(p) for p in paths if not p.exists()]
    if not missing:
        return
    hint = (
        "pass download=True (--download on the command line) to let torchvision fetch them"
        if downloadable
        else "torchvision cannot download this data set: place the files there yourself"
    )
    raise FileNotFoundError(f"missing {', '.join(missing)}; expected layout: {layout}; {hint}")


def decode_image(source: Path | BinaryIO, mode: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image file into a uint8 array.

    :param source: a path or an open binary file.
    :param mode: PIL mode to convert to, ``"RGB"`` or ``"L"``.
    :param size: ``(width, height)`` to resize to (bilinear) when the image has another size.
    :return: ``(H, W, 3)`` for RGB, ``(H, W)`` for greyscale.
    """
    with Image.open(source) as image:
        image = image.convert(mode)
        if size is not None and image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(image)


def stack_images(arrays: Sequence[np.ndarray]) -> Tensor:
    """Stack decoded ``(H, W)`` or ``(H, W, C)`` uint8 arrays into a ``(N, C, H, W)`` tensor."""
    images = torch.from_numpy(np.stack(arrays))
    return images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2).contiguous()


def read_image_folder(
    folder: Path, mode: str, size: tuple[int, int] | None = None
) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """Decode every image of a ``folder/<class>/<image>`` tree, classes and files sorted by name.

    Files PIL cannot read (notMNIST ships a few broken PNGs) are skipped with one warning.

    :param folder: the root of the tree.
    :param mode: PIL mode to convert to, ``"RGB"`` or ``"L"``.
    :param size: ``(width, height)`` every image is resized to, when it differs.
    :return: ``(images, labels, classes)``: uint8 ``(N, C, H, W)``, int64 indices into ``classes``.
    """
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    arrays, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            try:
                arrays.append(decode_image(path, mode, size))
            except (UnidentifiedImageError, OSError):
                skipped.append(path.name)
                continue
            labels.append(label)
    if skipped:
        examples = ", ".join(skipped[:5])
        warnings.warn(f"skipped {len(skipped)} unreadable images under {folder}: {examples}", stacklevel=2)
    if not arrays:
        raise FileNotFoundError(f"no readable images under {folder}/<class>/")
    return stack_images(arrays), torch.tensor(labels, dtype=torch.long), classes


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation of uint8 images, on the [0, 1] scale.

    Computed exactly from a 256-bin histogram per channel, which is fast and never copies the
    images to float.

    :param images: uint8 ``(N, C, H, W)``.
    :return: ``(mean, std)``, float32 tensors of shape ``(C,)``.
    """
    counts = torch.stack(
        [torch.bincount(images[:, c].reshape(-1), minlength=256) for c in range(images.shape[1])]
    ).double()
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(dim=1)
    mean = counts @ values / total
    std = (counts @ values.square() / total - mean.square()).clamp_min(0.0).sqrt()
    return mean.float(), std.float()


def normalise(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Scale uint8 images to [0, 1] and standardise each channel.

    :param images: uint8 ``(N, C, H, W)``.
    :param mean: per-channel mean ``(C,)`` on the [0, 1] scale (or a scalar tensor).
    :param std: per-channel standard deviation, same shape as ``mean``.
    :return: float32 images of the same shape.
    """
    shape = (1, -1, 1, 1) if mean.dim() else ()
    scale, shift = 1.0 / (255.0 * std), -mean / std  # (x / 255 - mean) / std in one multiply-add
    return images.float().mul_(scale.reshape(shape)).add_(shift.reshape(shape))


def subsample(split: Split, size: int | None, generator: torch.Generator) -> Split:
    """A seeded random subset of ``size`` samples (kept in their original order), or the split itself.

    :param split: ``(x, y)``.
    :param size: number of samples to keep; ``None`` or at least ``len(y)`` keeps everything.
    :param generator: source of randomness.
    """
    if size is not None and size < 1:
        raise ValueError(f"a size cap must be at least 1, got {size!r}")
    x, y = split
    if size is None or size >= len(y):
        return split
    keep = torch.randperm(len(y), generator=generator)[:size].sort().values
    return x[keep], y[keep]


def shuffle(split: Split, generator: torch.Generator) -> Split:
    """The samples of ``split`` in a seeded random order."""
    x, y = split
    order = torch.randperm(len(y), generator=generator)
    return x[order], y[order]


def split_validation(split: Split, val_fraction: float, generator: torch.Generator) -> tuple[Split, Split]:
    """Carve a seeded random validation set out of a training split.

    :param split: ``(x, y)`` training data.
    :param val_fraction: share of the samples to hold out, in (0, 1); at least one sample is held out.
    :param generator: source of randomness.
    :return: ``(train, val)``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    x, y = split
    num_val = max(1, int(val_fraction * len(y)))
    if num_val >= len(y):
        raise ValueError(f"{len(y)} training samples are too few to hold out a validation set")
    order = torch.randperm(len(y), generator=generator)
    val, train = order[:num_val].sort().values, order[num_val:].sort().values
    return (x[train], y[train]), (x[val], y[val])


def select_classes(x: Tensor, y: Tensor, classes: Sequence[int]) -> Split:
    """The samples of some classes, relabelled ``0..len(classes)-1`` in the order given.

    :param x: inputs.
    :param y: int64 labels.
    :param classes: labels to keep; ``classes[i]`` becomes label ``i``.
    """
    lookup = torch.full((max(int(y.max()), *classes) + 1,), -1, dtype=torch.long)
    lookup[torch.as_tensor(list(classes), dtype=torch.long)] = torch.arange(len(classes))
    new_y = lookup[y]
    keep = new_y >= 0
    return x[keep], new_y[keep]


def make_task(
    raw: RawImages,
    classes: Sequence[int],
    *,
    val_fraction: float,
    mean: Tensor,
    std: Tensor,
    caps: SizeCaps,
    generator: torch.Generator,
) -> TaskSplits:
    """Cut one task out of a data set: select and relabel classes, hold out validation, cap, shuffle, normalise.

    Every split is shuffled because files often list images class by class (the CIFAR-10 JPEG
    archive does) and evaluation does not shuffle: the paper's networks normalise with batch
    statistics even in eval mode, and a batch holding a single class is normalised into noise
    (Split CIFAR-10 tested at chance level before this shuffle).

    Normalising last means only the samples kept are ever converted to float.

    :param raw: the data set.
    :param classes: the task's classes, relabelled ``0..len(classes)-1`` in this order.
    :param val_fraction: share of the task's training samples held out for validation.
    :param mean: per-channel mean used by :func:`normalise`.
    :param std: per-channel standard deviation used by :func:`normalise`.
    :param caps: optional caps on the samples of each split.
    :param generator: source of randomness for the validation split and the caps.
    """
    train, val = split_validation(select_classes(raw.train_x, raw.train_y, classes), val_fraction, generator)
    test = select_classes(raw.test_x, raw.test_y, classes)
    splits = [shuffle(subsample(s, cap, generator), generator) for s, cap in zip((train, val, test), caps)]
    train, val, test = ((normalise(x, mean, std), y) for x, y in splits)
    return TaskSplits(train=train, val=val, test=test)


def make_benchmark(tasks: Sequence[TaskSplits], task_labels: Sequence[int]) -> ImageBenchmark:
    """Wrap per-task tensors into an Avalanche benchmark with train, valid and test streams.

    The tensors are used as they are (Avalanche does not copy them).

    :param tasks: the tasks, in training order; every validation set must be non-empty.
    :param task_labels: task label of each task (all 0 for a single-head benchmark).
    """
    val = [task.val for task in tasks]
    benchmark = tensors_benchmark(
        train_tensors=[task.train for task in tasks],
        test_tensors=[task.test for task in tasks],
        other_streams_tensors={VALID_STREAM: val},
        task_labels=list(task_labels),
    )
    return ImageBenchmark(benchmark=benchmark, val=val)


def split_by_classes(
    raw: RawImages, num_tasks: int, *, seed: int, val_fraction: float, caps: SizeCaps
) -> ImageBenchmark:
    """Tasks of consecutive classes with task labels ``0..num_tasks-1`` and labels remapped per task.

    Images are normalised with the per-channel mean and std of the whole training split.

    :param raw: the data set.
    :param num_tasks: number of tasks; must divide the number of classes.
    :param seed: seed of the validation splits and of the caps.
    :param val_fraction: share of each task's training samples held out (seeded) for validation.
    :param caps: optional caps on the samples of each task.
    """
    num_classes = len(raw.classes)
    if num_tasks < 1 or num_classes % num_tasks:
        raise ValueError(f"num_tasks must divide the {num_classes} classes, got {num_tasks!r}")
    per_task = num_classes // num_tasks
    mean, std = channel_stats(raw.train_x)
    generator = torch.Generator().manual_seed(seed)
    tasks = [
        make_task(
            raw,
            range(task * per_task, (task + 1) * per_task),
            val_fraction=val_fraction,
            mean=mean,
            std=std,
            caps=caps,
            generator=generator,
        )
        for task in range(num_tasks)
    ]
    return make_benchmark(tasks, list(range(num_tasks)))
