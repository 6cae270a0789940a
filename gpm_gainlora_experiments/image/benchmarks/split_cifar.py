"""Split CIFAR-10 and Split CIFAR-100: tasks of consecutive classes, one head per task.

CIFAR-10 is read from either of two layouts under the data root:

* ``cifar10-jpg.tar.xz`` holding ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (the offline
  copy in ``../shared/data``): decoded once with PIL and cached as a ``.pt`` file outside the data
  root, keyed by the archive's SHA-256, so later runs load in about a second;
* ``cifar-10-batches-py/`` (torchvision's layout), which ``download=True`` fetches.

Class order is the archive's class folders sorted by name (airplane, automobile, bird, cat, deer,
dog, frog, horse, ship, truck), which is torchvision's label order too.

CIFAR-100 is read from ``cifar-100-python/`` (torchvision's layout). The pickles are parsed here
rather than by torchvision's classes, which refuse any file whose MD5 differs from the official one
(and so every test fixture); torchvision is only used to download.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from gpm_gainlora_experiments.image.benchmarks.image_data import (
    ImageBenchmark,
    RawImages,
    SizeCaps,
    decode_image,
    default_cache_dir,
    require_files,
    split_by_classes,
    stack_images,
)

CIFAR10_ARCHIVE = "cifar10-jpg.tar.xz"
_CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR100_FOLDER = "cifar-100-python"
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
_HASH_BLOCK = 1 << 20


def _read_cifar_pickles(
    folder: Path, train_files: Sequence[str], test_file: str, label_key: str, meta_file: str, names_key: str
) -> RawImages:
    """Parse CIFAR's python pickles (rows of 3072 bytes, channel-major) into uint8 images."""

    def load(name: str) -> dict:
        with open(folder / name, "rb") as file:
            return pickle.load(file, encoding="latin1")

    def images_and_labels(names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [load(name) for name in names]
        data = np.concatenate([np.asarray(batch["data"], dtype=np.uint8) for batch in batches])
        labels = np.concatenate([np.asarray(batch[label_key], dtype=np.int64) for batch in batches])
        return torch.from_numpy(data).reshape(-1, 3, 32, 32), torch.from_numpy(labels)

    train_x, train_y = images_and_labels(train_files)
    test_x, test_y = images_and_labels([test_file])
    return RawImages(train_x, train_y, test_x, test_y, tuple(load(meta_file)[names_key]))


def _decode_archive(archive: Path) -> RawImages:
    """Decode a ``{train,test}/<class>/<image>`` tar archive, classes and files sorted by name."""
    entries: dict[str, list[tuple[str, str, np.ndarray]]] = {"train": [], "test": []}
    with tarfile.open(archive) as tar:
        for member in tar:  # one sequential pass: random access into an .xz stream is slow
            parts = PurePosixPath(member.name).parts
            if (
                not member.isfile()
                or len(parts) < 3
                or parts[-3] not in entries
                or parts[-1].startswith(".")
                or PurePosixPath(parts[-1]).suffix.lower() not in _IMAGE_SUFFIXES
            ):
                continue
            split, label, name = parts[-3:]
            image = decode_image(io.BytesIO(tar.extractfile(member).read()), "RGB")
            entries[split].append((label, name, image))
    classes = tuple(sorted({label for label, _, _ in entries["train"]}))
    if not classes or not {label for label, _, _ in entries["test"]} <= set(classes):
        raise ValueError(f"{archive} must hold train/<class>/<image> and test/<class>/<image> for the same classes")
    index = {label: i for i, label in enumerate(classes)}

    def stack(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        ordered = sorted(entries[split], key=lambda entry: entry[:2])
        labels = torch.tensor([index[label] for label, _, _ in ordered], dtype=torch.long)
        return stack_images([image for _, _, image in ordered]), labels

    return RawImages(*stack("train"), *stack("test"), classes=classes)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def load_archive_cached(archive: Path, cache_dir: str | Path | None = None) -> RawImages:
    """Decode an image archive once and keep the uint8 tensors in a cache file.

    The cache file is named after the archive's SHA-256, so a changed archive is decoded again.
    It is written to a temporary name and renamed, so concurrent runs never read half a file.

    :param archive: a ``{train,test}/<class>/<image>`` tar archive.
    :param cache_dir: cache folder; defaults to :func:`~gpm_gainlora_experiments.image.benchmarks.image_data.default_cache_dir`.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = archive.name.split(".")[0]
    cache = cache_dir / f"{stem}-{_sha256(archive)[:16]}.pt"
    if cache.exists():
        stored = torch.load(cache, weights_only=True)
        return RawImages(**{**stored, "classes": tuple(stored["classes"])})
    raw = _decode_archive(archive)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    fields = {"train_x": raw.train_x, "train_y": raw.train_y, "test_x": raw.test_x, "test_y": raw.test_y}
    torch.save({**fields, "classes": list(raw.classes)}, partial)
    partial.replace(cache)
    return raw


def load_cifar10(
    data_root: str | Path, *, download: bool = False, cache_dir: str | Path | None = None
) -> RawImages:
    """Read CIFAR-10 as uint8 ``(N, 3, 32, 32)`` images, from the JPEG archive if there is one.

    :param data_root: folder holding ``cifar10-jpg.tar.xz`` or ``cifar-10-batches-py/``.
    :param download: let torchvision download ``cifar-10-batches-py/`` when neither layout exists.
    :param cache_dir: where the decoded archive is cached (see :func:`load_archive_cached`).
    :raises FileNotFoundError: when neither layout exists and ``download`` is false.
    """
    root = Path(data_root)
    archive, folder = root / CIFAR10_ARCHIVE, root / _CIFAR10_FOLDER
    if archive.exists():
        return load_archive_cached(archive, cache_dir)
    if download and not folder.exists():
        CIFAR10(root=str(root), download=True)
    layout = (
        f"<data_root>/{CIFAR10_ARCHIVE} (train/<class>/*.jpg, test/<class>/*.jpg) or "
        f"<data_root>/{_CIFAR10_FOLDER}/{{data_batch_1..5,test_batch,batches.meta}} (torchvision's layout)"
    )
    required = [folder / name for name in (*_CIFAR10_TRAIN, "test_batch", "batches.meta")]
    require_files(required if folder.exists() else [archive], layout, downloadable=True)
    return _read_cifar_pickles(folder, _CIFAR10_TRAIN, "test_batch", "labels", "batches.meta", "label_names")


def load_cifar100(data_root: str | Path, *, download: bool = False) -> RawImages:
    """Read CIFAR-100 (fine labels) as uint8 ``(N, 3, 32, 32)`` images.

    :param data_root: folder holding ``cifar-100-python/{train,test,meta}`` (torchvision's layout).
    :param download: let torchvision download the files when they are missing.
    :raises FileNotFoundError: when files are missing and ``download`` is false.
    """
    folder = Path(data_root) / _CIFAR100_FOLDER
    if download and not folder.exists():
        CIFAR100(root=str(data_root), download=True)
    require_files(
        [folder / name for name in ("train", "test", "meta")],
        f"<data_root>/{_CIFAR100_FOLDER}/{{train,test,meta}} (torchvision's layout)",
        downloadable=True,
    )
    return _read_cifar_pickles(folder, ["train"], "test", "fine_labels", "meta", "fine_label_names")


def split_cifar10(
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
    """Build Split CIFAR-10: 5 tasks of 2 consecutive classes, one head per task.

    Full size, the float32 tensors take about 740 MB.

    :param data_root: folder holding ``cifar10-jpg.tar.xz`` or ``cifar-10-batches-py/``.
    :param seed: seed of the validation splits and of the caps.
    :param val_fraction: share of each task's training samples held out for validation.
    :param train_size_per_task: optional cap on the training samples of each task.
    :param val_size_per_task: optional cap on the validation samples of each task.
    :param test_size_per_task: optional cap on the test samples of each task.
    :param download: let torchvision download CIFAR-10 when neither layout exists.
    :param cache_dir: where the decoded JPEG archive is cached; defaults to ``~/.cache/avalanche_gpm``.
    :return: the benchmark (inputs ``(N, 3, 32, 32)``, labels 0..1, task labels 0..4) and its
        validation tensors.
    """
    raw = load_cifar10(data_root, download=download, cache_dir=cache_dir)
    caps = SizeCaps(train_size_per_task, val_size_per_task, test_size_per_task)
    return split_by_classes(raw, 5, seed=seed, val_fraction=val_fraction, caps=caps)


def split_cifar100(
    data_root: str | Path,
    num_tasks: int = 10,
    seed: int = 0,
    val_fraction: float = 0.05,
    *,
    train_size_per_task: int | None = None,
    val_size_per_task: int | None = None,
    test_size_per_task: int | None = None,
    download: bool = False,
) -> ImageBenchmark:
    """Build Split CIFAR-100 as in GPM: 10 tasks of 10 consecutive classes, one head per task.

    No augmentation. Full size, the float32 tensors take about 740 MB.

    :param data_root: folder holding ``cifar-100-python/``.
    :param num_tasks: number of tasks; must divide 100.
    :param seed: seed of the validation splits and of the caps.
    :param val_fraction: share of each task's training samples held out for validation.
    :param train_size_per_task: optional cap on the training samples of each task.
    :param val_size_per_task: optional cap on the validation samples of each task.
    :param test_size_per_task: optional cap on the test samples of each task.
    :param download: let torchvision download CIFAR-100 when it is missing.
    :return: the benchmark (inputs ``(N, 3, 32, 32)``, labels ``0..100/num_tasks-1``, task labels
        ``0..num_tasks-1``) and its validation tensors.
    """
    raw = load_cifar100(data_root, download=download)
    caps = SizeCaps(train_size_per_task, val_size_per_task, test_size_per_task)
    return split_by_classes(raw, num_tasks, seed=seed, val_fraction=val_fraction, caps=caps)
