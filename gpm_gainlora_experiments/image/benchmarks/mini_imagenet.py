"""miniImageNet as in GPM: 100 classes in 20 tasks of 5, 84x84 RGB, one head per task.

GPM pools the 100 classes of the usual few-shot train/val/test class splits and divides each class's
600 images into 500 for training and 100 for testing (seeded here). Two layouts are read:

* ``miniImageNet/mini-imagenet-cache-{train,val,test}.pkl``: pickled dicts with ``image_data``
  (uint8 ``(N, 84, 84, 3)``) and ``class_dict`` (``{class name: [indices into image_data]}``);
* ``miniImageNet/images/<class>/*.jpg``: one folder per class, resized to 84x84 (bilinear).

Classes are ordered by name (WordNet ids for the real data), so task ``t`` holds the classes
``5t..5t+4`` of that order whatever the seed; the seed picks the train/test and validation splits.
torchvision cannot download miniImageNet.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gpm_gainlora_experiments.image.benchmarks.image_data import (
    ImageBenchmark,
    RawImages,
    SizeCaps,
    read_image_folder,
    require_files,
    split_by_classes,
)

IMAGE_SIZE = 84
_PICKLES = tuple(f"mini-imagenet-cache-{split}.pkl" for split in ("train", "val", "test"))
_LAYOUT = (
    "<data_root>/miniImageNet/{mini-imagenet-cache-train.pkl,mini-imagenet-cache-val.pkl,"
    "mini-imagenet-cache-test.pkl} or <data_root>/miniImageNet/images/<class>/*.jpg"
)


def _read_pickles(folder: Path) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """Pool the classes of the three pickles; classes sorted by name."""
    arrays, names_per_image = [], []
    for name in _PICKLES:
        with open(folder / name, "rb") as file:
            content = pickle.load(file)
        images = np.asarray(content["image_data"], dtype=np.uint8)
        for class_name, indices in content["class_dict"].items():
            arrays.append(images[np.asarray(indices, dtype=np.int64)])
            names_per_image += [class_name] * len(indices)
        del content, images  # keep one pickle in memory at a time
    classes = tuple(sorted(set(names_per_image)))
    index = {name: i for i, name in enumerate(classes)}
    images = torch.from_numpy(np.concatenate(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([index[name] for name in names_per_image], dtype=torch.long), classes


def _split_per_class(
    images: Tensor, labels: Tensor, classes: tuple[str, ...], test_per_class: int, generator: torch.Generator
) -> RawImages:
    """Hold out ``test_per_class`` random images of every class for testing."""
    train_parts, test_parts = [], []
    for label in range(len(classes)):
        members = (labels == label).nonzero().flatten()
        if len(members) <= test_per_class:
            raise ValueError(f"class {classes[label]} has {len(members)} images: too few to hold out {test_per_class}")
        shuffled = members[torch.randperm(len(members), generator=generator)]
        test_parts.append(shuffled[:test_per_class])
        train_parts.append(shuffled[test_per_class:])
    train, test = torch.cat(train_parts).sort().values, torch.cat(test_parts).sort().values
    return RawImages(images[train], labels[train], images[test], labels[test], classes)


def load_mini_imagenet(data_root: str | Path, *, test_per_class: int = 100, seed: int = 0) -> RawImages:
    """Read miniImageNet's 100 classes and split each class's images into train and test.

    :param data_root: folder holding ``miniImageNet/`` in either layout (pickles take precedence).
    :param test_per_class: images of each class held out (seeded) for testing; the rest train.
    :param seed: seed of the train/test split.
    :return: uint8 ``(N, 3, 84, 84)`` images with labels indexing the sorted class names.
    :raises FileNotFoundError: when neither layout exists.
    """
    folder = Path(data_root) / "miniImageNet"
    pickles = [folder / name for name in _PICKLES]
    has_pickles = all(path.exists() for path in pickles)
    if not has_pickles and not (folder / "images").is_dir():
        require_files(pickles, _LAYOUT, downloadable=False)
    images, labels, classes = (
        _read_pickles(folder)
        if has_pickles
        else read_image_folder(folder / "images", "RGB", (IMAGE_SIZE, IMAGE_SIZE))
    )
    generator = torch.Generator().manual_seed(seed)
    return _split_per_class(images, labels, classes, test_per_class, generator)


def mini_imagenet(
    data_root: str | Path,
    num_tasks: int = 20,
    seed: int = 0,
    val_fraction: float = 0.05,
    *,
    test_per_class: int = 100,
    train_size_per_task: int | None = None,
    val_size_per_task: int | None = None,
    test_size_per_task: int | None = None,
) -> ImageBenchmark:
    """Build miniImageNet: ``num_tasks`` tasks of consecutive (sorted) classes, one head per task.

    Images are normalised with the per-channel mean and std of the pooled training images. The
    reference protocol names no validation share; 5% of each task's training images, as in the other
    GPM benchmarks, is our choice. Full size, the float32 tensors take about 5.1 GB, and reading the
    pickles holds up to about 3 GB of uint8 copies for a while; the size caps shrink only the former.

    :param data_root: folder holding ``miniImageNet/`` (see the module docstring).
    :param num_tasks: number of tasks; must divide the number of classes (100).
    :param seed: seed of the train/test split, the validation splits and the caps.
    :param val_fraction: share of each task's training images held out for validation.
    :param test_per_class: test images per class (GPM: 100 of 600).
    :param train_size_per_task: optional cap on the training samples of each task.
    :param val_size_per_task: optional cap on the validation samples of each task.
    :param test_size_per_task: optional cap on the test samples of each task.
    :return: the benchmark (inputs ``(N, 3, 84, 84)``, labels ``0..classes/num_tasks-1``, task labels
        ``0..num_tasks-1``) and its validation tensors.
    """
    raw = load_mini_imagenet(data_root, test_per_class=test_per_class, seed=seed)
    caps = SizeCaps(train_size_per_task, val_size_per_task, test_size_per_task)
    return split_by_classes(raw, num_tasks, seed=seed, val_fraction=val_fraction, caps=caps)
