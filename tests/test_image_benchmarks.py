"""Image benchmark builders, on tiny data sets generated in every on-disk format they read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpm_gainlora_experiments.image.benchmarks import split_cifar
from gpm_gainlora_experiments.image.benchmarks.five_datasets import five_datasets
from gpm_gainlora_experiments.image.benchmarks.image_data import ImageBenchmark, RawImages, SizeCaps, split_by_classes
from gpm_gainlora_experiments.image.benchmarks.mini_imagenet import mini_imagenet
from gpm_gainlora_experiments.image.batched_data import tensor_source
from gpm_gainlora_experiments.image.benchmarks.pmnist import MNIST_MEAN, MNIST_STD, pmnist, pmnist_tasks
from gpm_gainlora_experiments.image.benchmarks.split_cifar import split_cifar10, split_cifar100
from tests.image_fixtures import (
    random_images,
    write_cifar10_archive,
    write_cifar10_pickles,
    write_cifar100,
    write_mini_imagenet_folder,
    write_mini_imagenet_pickles,
    write_mnist,
    write_notmnist,
    write_svhn,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data root holding every format (the CIFAR-10 archive, not the pickles)."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root, "MNIST", train=30, test=10, seed=0)
    write_mnist(root, "FashionMNIST", train=40, test=20, seed=1)
    write_cifar10_archive(root)
    write_cifar100(root)
    write_svhn(root)
    write_notmnist(root)
    write_mini_imagenet_pickles(root)
    return root


# ---- helpers --------------------------------------------------------------------------------------


def _stream(result: ImageBenchmark, name: str) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """``(inputs, labels, task label)`` of every experience of a stream."""
    experiences = getattr(result.benchmark, f"{name}_stream")
    out = []
    for exp in experiences:
        samples = [exp.dataset[i] for i in range(len(exp.dataset))]
        out.append((torch.stack([s[0] for s in samples]), torch.tensor([int(s[1]) for s in samples]), exp.task_label))
    return out


def _check_shapes(
    result: ImageBenchmark, shape: tuple[int, ...], sizes: tuple[int, int, int], num_labels: int, task_labels: list[int]
) -> None:
    for name, size in zip(("train", "valid", "test"), sizes):
        stream = _stream(result, name)
        assert [task for _, _, task in stream] == task_labels
        for x, y, _ in stream:
            assert x.dtype == torch.float32 and tuple(x.shape) == (size, *shape)
            assert y.min() >= 0 and y.max() < num_labels
    assert [len(y) for _, y in result.val] == [sizes[1]] * len(task_labels)


# ---- PMNIST ---------------------------------------------------------------------------------------


def test_pmnist_shapes_labels_and_validation(data_root: Path) -> None:
    result = pmnist(data_root, num_tasks=3)
    _check_shapes(result, (784,), (27, 3, 10), 10, [0, 0, 0])
    # Validation is the first 10% of the training file; inputs undo to integer pixels.
    val_x, val_y = result.val[0]
    assert val_y.tolist() == [0, 1, 2]
    pixels = (val_x * MNIST_STD + MNIST_MEAN) * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)


def test_pmnist_permutations(data_root: Path) -> None:
    first, again, other = (_stream(pmnist(data_root, num_tasks=2, seed=s), "train") for s in (0, 0, 1))
    (x0, y0, _), (x1, y1, _) = first
    assert torch.equal(x0, again[0][0]) and torch.equal(x1, again[1][0])
    assert not torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(x0, other[0][0])
    # Every task shows the same images, only with its pixels permuted (the first task too).
    assert torch.equal(x0.sort(dim=1).values, x1.sort(dim=1).values)
    # The fixture's training images (seed 0 + 30 images) after the 3 validation ones, unpermuted.
    unpermuted = torch.from_numpy(random_images(30, (28, 28), 30)[3:].reshape(27, -1)).float()
    assert not torch.allclose((x0 * MNIST_STD + MNIST_MEAN) * 255, unpermuted, atol=1e-3)


def test_pmnist_caps(data_root: Path) -> None:
    result = pmnist(data_root, num_tasks=2, train_size_per_task=5, val_size_per_task=2, test_size_per_task=4)
    _check_shapes(result, (784,), (5, 2, 4), 10, [0, 0])
    (x0, y0, _), (x1, y1, _) = _stream(result, "train")
    assert torch.equal(y0, y1) and torch.equal(x0.sort(dim=1).values, x1.sort(dim=1).values)


def test_pmnist_benchmark_shares_one_copy_and_equals_the_stored_tasks(data_root: Path) -> None:
    caps = {"train_size_per_task": 6, "val_size_per_task": 3, "test_size_per_task": 4}
    lazy, stored = pmnist(data_root, num_tasks=3, **caps), pmnist_tasks(data_root, num_tasks=3, **caps)
    for name, field in (("train", "train"), ("valid", "val"), ("test", "test")):
        for (x, y, t), task in zip(_stream(lazy, name), stored):
            assert torch.equal(x, getattr(task, field)[0]) and torch.equal(y, getattr(task, field)[1]) and t == 0
    assert all(torch.equal(a[0], b.val[0]) for a, b in zip(lazy.val, stored))
    leaves = [tensor_source([exp.dataset]).gatherers[0].__self__ for exp in lazy.benchmark.train_stream]
    assert len({leaf.features.data_ptr() for leaf in leaves}) == 1


@pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists(),
    reason=f"the offline MNIST copy is not at {SHARED_DATA}/MNIST/raw",
)
def test_pmnist_reads_the_shared_mnist() -> None:
    result = pmnist(SHARED_DATA, num_tasks=2, train_size_per_task=100, val_size_per_task=20, test_size_per_task=50)
    assert [len(e.dataset) for e in result.benchmark.train_stream] == [100, 100]
    assert [len(y) for _, y in result.val] == [20, 20]
    assert result.val[0][0].shape == (20, 784)


# ---- Split CIFAR ----------------------------------------------------------------------------------


def test_split_cifar10_from_archive_and_cache(data_root: Path, tmp_path: Path, monkeypatch) -> None:
    result = split_cifar10(data_root, cache_dir=tmp_path)
    _check_shapes(result, (3, 32, 32), (5, 1, 6), 2, [0, 1, 2, 3, 4])
    assert len(list(tmp_path.glob("cifar10-*.pt"))) == 1
    # Classes follow the sorted folder names: task 0 is airplane (0) vs automobile (1), whose
    # fixture colours are 0..2 and 25..27 in the red channel.
    x, y, _ = _stream(result, "test")[0]
    red = x[:, 0].mean(dim=(1, 2))
    assert (red[y == 0] < red[y == 1].min()).all()

    def no_decode(archive: Path):
        raise AssertionError("the cached copy should have been used")

    monkeypatch.setattr(split_cifar, "_decode_archive", no_decode)
    cached = split_cifar10(data_root, cache_dir=tmp_path)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(result.val, cached.val))


def test_split_cifar10_seeds_and_caps(data_root: Path, tmp_path: Path) -> None:
    first, other = (split_cifar10(data_root, seed=s, cache_dir=tmp_path) for s in (0, 1))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first.val, other.val))
    capped = split_cifar10(data_root, cache_dir=tmp_path, train_size_per_task=2, test_size_per_task=3)
    _check_shapes(capped, (3, 32, 32), (2, 1, 3), 2, [0, 1, 2, 3, 4])


def test_split_cifar10_from_torchvision_pickles(tmp_path: Path) -> None:
    write_cifar10_pickles(tmp_path)
    result = split_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    assert len(result.benchmark.train_stream) == 5
    assert not (tmp_path / "cache").exists()
    # 50 training images, 5 per class, 2 classes per task: 9 to train and 1 to validate.
    assert [len(e.dataset) for e in result.benchmark.train_stream] == [9] * 5
    assert [len(e.dataset) for e in result.benchmark.test_stream] == [2] * 5


def test_split_cifar100(data_root: Path) -> None:
    result = split_cifar100(data_root)
    _check_shapes(result, (3, 32, 32), (19, 1, 10), 10, list(range(10)))
    for _, y, _ in _stream(result, "test"):
        assert sorted(y.tolist()) == list(range(10))
    assert len(split_cifar100(data_root, num_tasks=20).benchmark.train_stream) == 20
    with pytest.raises(ValueError, match="divide"):
        split_cifar100(data_root, num_tasks=3)


# ---- 5-Datasets -----------------------------------------------------------------------------------


def test_five_datasets(data_root: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="unreadable"):
        result = five_datasets(data_root, cache_dir=tmp_path)
    stream = _stream(result, "train")
    assert [task for _, _, task in stream] == [0, 1, 2, 3, 4]
    # CIFAR-10 30 train, MNIST 30, SVHN 40, Fashion-MNIST 40, notMNIST 40 (the broken PNG skipped).
    assert [len(y) for _, y, _ in stream] == [29, 29, 38, 38, 38]
    assert [len(y) for _, y in result.val] == [1, 1, 2, 2, 2]
    assert [len(e.dataset) for e in result.benchmark.test_stream] == [30, 10, 20, 20, 20]
    for x, y, _ in stream:
        assert x.shape[1:] == (3, 32, 32) and set(y.tolist()) <= set(range(10))
    assert set(stream[2][1].tolist()) == set(range(10))  # SVHN's label 10 became 0
    mnist = stream[1][0]
    assert torch.equal(mnist[:, 0], mnist[:, 2])  # grey copied to three channels
    border = torch.cat([mnist[:, :, :2].flatten(), mnist[:, :, -2:].flatten(), mnist[:, :, :, :2].flatten()])
    assert torch.allclose(border, border[0].expand_as(border))  # zero padding, normalised
    assert border[0] < mnist.min() + 1e-6


# ---- miniImageNet ---------------------------------------------------------------------------------


def test_mini_imagenet_from_pickles(data_root: Path) -> None:
    result = mini_imagenet(data_root, num_tasks=2, test_per_class=1)
    _check_shapes(result, (3, 84, 84), (24, 1, 5), 5, [0, 1])
    # Classes are sorted by name, so task 0 holds classes n..0 to n..4, whose images are darker.
    tests = _stream(result, "test")
    assert tests[0][0].mean() < tests[1][0].mean()
    assert sorted(tests[0][1].tolist()) == list(range(5))
    same, other = (mini_imagenet(data_root, num_tasks=2, test_per_class=1, seed=s) for s in (0, 1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(result.val, same.val))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(result.val, other.val))


def test_mini_imagenet_from_image_folders(tmp_path: Path) -> None:
    write_mini_imagenet_folder(tmp_path)
    result = mini_imagenet(tmp_path, num_tasks=5, test_per_class=1)
    _check_shapes(result, (3, 84, 84), (3, 1, 2), 2, [0, 1, 2, 3, 4])


# ---- missing files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "names"),
    [
        (pmnist, ["MNIST/raw/train-images-idx3-ubyte", "--download"]),
        (split_cifar10, ["cifar10-jpg.tar.xz", "cifar-10-batches-py", "--download"]),
        (split_cifar100, ["cifar-100-python/train", "--download"]),
        (five_datasets, ["cifar10-jpg.tar.xz", "MNIST/raw", "train_32x32.mat", "FashionMNIST/raw", "notMNIST/train"]),
        (mini_imagenet, ["mini-imagenet-cache-train.pkl", "images/<class>", "cannot download"]),
    ],
)
def test_missing_files_are_named(build, names: list[str], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        build(tmp_path)
    for name in names:
        assert name in str(error.value)


def test_tasks_cut_from_class_sorted_files_have_mixed_class_batches():
    # Files listed class by class (like the CIFAR-10 JPEG archive) must not give single-class
    # evaluation batches: the paper's networks normalise with batch statistics in eval mode.
    labels = torch.arange(4).repeat_interleave(40)
    images = torch.randint(0, 256, (160, 1, 2, 2), dtype=torch.uint8)
    raw = RawImages(images, labels, images.clone(), labels.clone(), classes=("a", "b", "c", "d"))
    benchmark = split_by_classes(raw, 2, seed=0, val_fraction=0.25, caps=SizeCaps())
    for stream in (benchmark.benchmark.train_stream, benchmark.benchmark.valid_stream, benchmark.benchmark.test_stream):
        for experience in stream:
            first_half = [experience.dataset[i][1] for i in range(len(experience.dataset) // 2)]
            assert set(first_half) == {0, 1}
    test = benchmark.benchmark.test_stream[0].dataset
    assert sorted(test[i][1] for i in range(len(test))) == [0] * 40 + [1] * 40  # a permutation, nothing lost
