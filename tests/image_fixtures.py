"""Tiny data sets in every on-disk format the image benchmarks read (torchvision's layouts, the
JPEG archive, the miniImageNet pickles), written by the tests into temporary folders."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def random_images(count: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, *shape), dtype=np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX as torchvision reads it: magic 0x08 (uint8) << 8 | number of dimensions, then big-endian sizes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, name: str, train: int, test: int, seed: int) -> None:
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", train), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", random_images(count, (28, 28), seed + count))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)


def jpeg_bytes(colour: int, size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (colour, 255 - colour, colour // 2)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_cifar10_archive(root: Path, per_class: int = 3) -> None:
    with tarfile.open(root / "cifar10-jpg.tar.xz", "w:xz") as tar:
        for split in ("train", "test"):
            for label, name in enumerate(reversed(CIFAR10_CLASSES)):  # stored out of order on purpose
                for i in range(per_class):
                    data = jpeg_bytes(25 * (len(CIFAR10_CLASSES) - 1 - label) + i)
                    member = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))


def write_pickle(path: Path, content: dict) -> None:
    with open(path, "wb") as file:
        pickle.dump(content, file)


def write_cifar10_pickles(root: Path, per_file: int = 10) -> None:
    """torchvision's CIFAR-10 layout: five training files and a test file of ``per_file`` images each."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = [i % 10 for i in range(per_file)]
    for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        write_pickle(folder / name, {"data": random_images(per_file, (3072,), i), "labels": labels})
    write_pickle(folder / "batches.meta", {"label_names": list(CIFAR10_CLASSES)})


def write_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, per_class in (("train", 2), ("test", 1)):
        labels = [c for c in range(100) for _ in range(per_class)]
        content = {"data": random_images(len(labels), (3072,), per_class), "fine_labels": labels, "coarse_labels": labels}
        write_pickle(folder / name, content)
    write_pickle(folder / "meta", {"fine_label_names": [f"class{c:03d}" for c in range(100)]})


def write_svhn(root: Path) -> None:
    for name, count in (("train_32x32.mat", 40), ("test_32x32.mat", 20)):
        digits = np.arange(count) % 10
        labels = np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8)
        images = random_images(count, (32, 32, 3), count).transpose(1, 2, 3, 0)  # SVHN stores (H, W, C, N)
        scipy.io.savemat(root / name, {"X": images, "y": labels})


def write_notmnist(root: Path) -> None:
    for split, per_class in (("train", 4), ("test", 2)):
        for letter in "ABCDEFGHIJ":
            folder = root / "notMNIST" / split / letter
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("L", (28, 28), 20 * i).save(folder / f"{letter}{i}.png")
    (root / "notMNIST" / "train" / "A" / "broken.png").write_bytes(b"not a png")


def write_mini_imagenet_pickles(root: Path, per_class: int = 6) -> None:
    folder = root / "miniImageNet"
    folder.mkdir(parents=True)
    # 10 classes over the three few-shot splits, listed out of name order on purpose.
    splits = {"train": [9, 3, 0, 7, 5, 1], "val": [8, 2], "test": [6, 4]}
    for split, classes in splits.items():
        images = np.stack([np.full((84, 84, 3), 20 * c + i, np.uint8) for c in classes for i in range(per_class)])
        class_dict = {f"n{c:08d}": list(range(k * per_class, (k + 1) * per_class)) for k, c in enumerate(classes)}
        write_pickle(folder / f"mini-imagenet-cache-{split}.pkl", {"image_data": images, "class_dict": class_dict})


def write_mini_imagenet_folder(root: Path) -> None:
    for c in range(10):
        folder = root / "miniImageNet" / "images" / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(3):
            (folder / f"{i}.jpg").write_bytes(jpeg_bytes(20 * c, size=(100, 90)))
