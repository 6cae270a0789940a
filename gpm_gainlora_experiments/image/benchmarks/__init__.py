"""Registry of benchmarks: how to build each one, its network, and its protocol preset.

A new benchmark registers a :class:`BenchmarkSpec` in :data:`BENCHMARKS`; the runner and the
command line pick it up by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from avalanche.benchmarks.scenarios import CLScenario
from torch import nn

from avalanche_gpm.models import alexnet, pmnist_mlp, reduced_resnet18
from avalanche_gpm.settings import LinearSchedule, ThresholdSpec
from gpm_gainlora_experiments.image.benchmarks.five_datasets import five_datasets
from gpm_gainlora_experiments.image.benchmarks.image_data import ImageBenchmark
from gpm_gainlora_experiments.image.benchmarks.mini_imagenet import mini_imagenet
from gpm_gainlora_experiments.image.benchmarks.permuted_digits import NUM_CLASSES, NUM_FEATURES, permuted_digits
from gpm_gainlora_experiments.image.benchmarks.pmnist import pmnist
from gpm_gainlora_experiments.image.benchmarks.split_cifar import split_cifar10, split_cifar100
from gpm_gainlora_experiments.image.hyperparams import Hyperparams, LRScheduleConfig

#: Builds a benchmark from a seed, an optional folder of local data, and whether to download.
BenchmarkBuilder = Callable[[int, "str | None", bool], CLScenario]


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything the runner needs to know about one benchmark.

    :param build: ``build(seed, data_root, download)`` returns the benchmark (data split and task order
        may depend on the seed).
    :param model: returns a freshly initialised network for the benchmark.
    :param defaults: the benchmark's protocol preset (lr, batch, epochs, strategy options).
    :param description: one line for ``--help``.
    """

    build: BenchmarkBuilder
    model: Callable[[], nn.Module]
    defaults: Hyperparams
    description: str


def _permuted_digits(seed: int, data_root: str | None, download: bool) -> CLScenario:
    del data_root, download  # the digits ship with scikit-learn
    return permuted_digits(num_tasks=10, seed=seed)


def _from_files(name: str, builder: Callable[..., ImageBenchmark], downloadable: bool = True) -> BenchmarkBuilder:
    """Adapt an image-benchmark builder that needs a data root to :data:`BenchmarkBuilder`.

    :param downloadable: whether the builder can let torchvision fetch missing files.
    """

    def build(seed: int, data_root: str | None, download: bool) -> CLScenario:
        if data_root is None:
            raise ValueError(f"benchmark {name!r} reads files: pass --data-root (on these machines ../shared/data)")
        if not downloadable:  # the builder's missing-file error says where to put the files
            return builder(data_root, seed=seed).benchmark
        return builder(data_root, seed=seed, download=download).benchmark

    return build


# The GPM paper's validation schedules (lr /= factor after `patience` epochs without a better
# validation loss, stop below lr_min, keep the best-validation weights of each task).
CIFAR100_SCHEDULE = LRScheduleConfig(factor=2.0, patience=6, lr_min=1e-5)
FIVE_DATASETS_SCHEDULE = LRScheduleConfig(factor=3.0, patience=5, lr_min=1e-3)


def _projection_methods(threshold: ThresholdSpec, num_samples: int | list[int]) -> dict[str, dict]:
    """GPM's options and SGP's (the same plus its paper's importance coefficient alpha = 10)."""
    gpm = {"threshold": threshold, "num_samples": num_samples}
    return {"gpm": gpm, "sgp": {**gpm, "sgp_alpha": 10.0}}


# Baselines' buffer sizes are not in our reference notes of the paper: 1000 samples for
# PMNIST and 100 per task for the image benchmarks are our choice, the same for A-GEM and ER.
def _baselines(ewc: dict, memory: int, tasks: int) -> dict[str, dict]:
    return {
        "ewc": ewc,
        "agem": {"patterns_per_exp": memory // tasks, "sample_size": 64},
        "replay": {"mem_size": memory},
    }


def _alexnet_protocol(*, epochs: int, memory: int, tasks: int) -> Hyperparams:
    """Split CIFAR-100's protocol: lr 0.01, batch 64, thresholds 0.97 + 0.003 t, the AlexNet sample
    counts and the validation schedule, for at most ``epochs`` per task.

    EWC's lambda 300 had the better validation ACC of ``gpm_gainlora_experiments.image.tune`` on Split CIFAR-10 at the
    preset's 5 epochs, against 100 (seed 1; results/tuning/split_cifar10_ewc_5epochs); 1000, first
    with 1 epoch per task, diverged at 5 on a test run. Split CIFAR-100 takes the same value
    untuned (no data here).
    """
    return Hyperparams(
        lr=0.01,
        batch_size=64,
        epochs=epochs,
        eval_batch_size=1000,
        lr_schedule=CIFAR100_SCHEDULE,
        strategy_options={
            **_baselines({"ewc_lambda": 300.0}, memory=memory, tasks=tasks),
            **_projection_methods(LinearSchedule(0.97, 0.003), num_samples=[24, 100, 100, 125, 125]),
        },
    )


def _resnet_protocol(*, threshold: float, memory: int, tasks: int) -> Hyperparams:
    """5-Datasets' protocol (lr 0.1, batch 64, up to 100 epochs, its validation schedule) with a
    fixed GPM threshold; 100 samples per layer is our simplification of the paper's per-layer counts."""
    return Hyperparams(
        lr=0.1,
        batch_size=64,
        epochs=100,
        eval_batch_size=1000,
        lr_schedule=FIVE_DATASETS_SCHEDULE,
        strategy_options={
            **_baselines({"ewc_lambda": 100.0}, memory=memory, tasks=tasks),
            **_projection_methods(threshold, num_samples=100),
        },
    )


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "permuted_digits": BenchmarkSpec(
        build=_permuted_digits,
        model=lambda: pmnist_mlp(in_features=NUM_FEATURES, hidden=100, num_classes=NUM_CLASSES),
        # PMNIST's protocol (lr 0.01, batch 10, 5 epochs, plain SGD, 300 GPM samples) except for
        # two values picked on validation seeds 1 and 2, never on the demo's seed 0. ewc_lambda:
        # best ACC among 1, 10, 30, 100, 300, 1000. GPM thresholds: PMNIST's [0.95, 0.99, 0.99]
        # fill the small input spaces (fc1 holds 80% of its 64 dims after four tasks, fc2 98% of
        # its 100 after ten), so late tasks barely learn and ACC (0.53) is no better than Naive's;
        # [0.85, 0.95, 0.95] had the best mean ACC of the lower settings tried.
        defaults=Hyperparams(
            lr=0.01,
            batch_size=10,
            epochs=5,
            strategy_options={
                # A-GEM and ER: 100 samples per task, as for the image benchmarks (untuned).
                **_baselines({"ewc_lambda": 10.0}, memory=1000, tasks=10),
                **_projection_methods([0.85, 0.95, 0.95], num_samples=300),
            },
        ),
        description="10 tasks of pixel-permuted 8x8 scikit-learn digits, 64-100-100-10 MLP, single head",
    ),
    "pmnist": BenchmarkSpec(
        build=_from_files("pmnist", pmnist),
        model=pmnist_mlp,
        # The paper's PMNIST protocol: lr 0.01, batch 10, 5 epochs, thresholds [0.95, 0.99, 0.99],
        # 300 samples per layer; SGP adds alpha = 10 (its paper's value). EWC: online mode, decay 0.5,
        # lambda 300, the best validation ACC of `gpm_gainlora_experiments.image.tune` over all 10 tasks (1 epoch, seed 1;
        # results/tuning/pmnist_ewc): Avalanche's separate mode peaked at 78.4 % (lambda 100) and
        # diverged at 1000, its penalties adding up over tasks.
        defaults=Hyperparams(
            lr=0.01,
            batch_size=10,
            epochs=5,
            strategy_options={
                **_baselines({"ewc_lambda": 300.0, "mode": "online", "decay_factor": 0.5}, memory=1000, tasks=10),
                **_projection_methods([0.95, 0.99, 0.99], num_samples=300),
            },
        ),
        description="Permuted MNIST, 10 tasks, 784-100-100-10 MLP, single head (GPM paper protocol)",
    ),
    "split_cifar10": BenchmarkSpec(
        build=_from_files("split_cifar10", split_cifar10),
        model=lambda: alexnet(classes_per_task=2),
        # A CPU cap of 5 epochs instead of up to 200: patience 6 never runs out in 5 epochs, so the
        # schedule only keeps each task's best-validation weights.
        defaults=_alexnet_protocol(epochs=5, memory=500, tasks=5),
        description="Split CIFAR-10, 5 tasks x 2 classes, multi-head AlexNet, epochs capped for CPUs",
    ),
    "split_cifar100": BenchmarkSpec(
        build=_from_files("split_cifar100", split_cifar100),
        model=lambda: alexnet(classes_per_task=10),
        defaults=_alexnet_protocol(epochs=200, memory=1000, tasks=10),
        description="Split CIFAR-100, 10 tasks x 10 classes, multi-head AlexNet, lr decay on validation loss",
    ),
    "five_datasets": BenchmarkSpec(
        build=_from_files("five_datasets", five_datasets),
        model=lambda: reduced_resnet18(classes_per_task=10),
        defaults=_resnet_protocol(threshold=0.965, memory=500, tasks=5),
        description="5-Datasets (CIFAR-10, MNIST, SVHN, Fashion-MNIST, notMNIST), reduced ResNet18",
    ),
    "mini_imagenet": BenchmarkSpec(
        build=_from_files("mini_imagenet", mini_imagenet, downloadable=False),
        model=lambda: reduced_resnet18(classes_per_task=5, input_size=84, first_stride=2),
        # Our reference notes give no miniImageNet schedule: 5-Datasets' (same network and lr) is our choice.
        defaults=_resnet_protocol(threshold=0.985, memory=2000, tasks=20),
        description="Split miniImageNet, 20 tasks x 5 classes, 84x84, reduced ResNet18",
    ),
}


def get_benchmark(name: str) -> BenchmarkSpec:
    """The registered benchmark called ``name``.

    :param name: a key of :data:`BENCHMARKS`.
    :raises ValueError: for an unknown name, listing the valid ones.
    """
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; choose one of: {', '.join(sorted(BENCHMARKS))}") from None
