"""Registry of benchmarks: how to build each one, its network, and its protocol preset.

A new benchmark registers a :class:`BenchmarkSpec` in :data:`BENCHMARKS`; the runner and the
command line pick it up by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from avalanche.benchmarks.scenarios import CLScenario
from torch import nn

from avalanche_gpm.models import pmnist_mlp
from experiments.benchmarks.permuted_digits import NUM_CLASSES, NUM_FEATURES, permuted_digits
from experiments.hyperparams import Hyperparams

#: Builds a benchmark from a seed and an optional folder of local data.
BenchmarkBuilder = Callable[[int, str | None], CLScenario]


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything the runner needs to know about one benchmark.

    :param build: ``build(seed, data_root)`` returns the benchmark (data split and task order
        may depend on the seed).
    :param model: returns a freshly initialised network for the benchmark.
    :param defaults: the benchmark's protocol preset (lr, batch, epochs, strategy options).
    :param description: one line for ``--help``.
    """

    build: BenchmarkBuilder
    model: Callable[[], nn.Module]
    defaults: Hyperparams
    description: str


def _permuted_digits(seed: int, data_root: str | None) -> CLScenario:
    del data_root  # the digits ship with scikit-learn
    return permuted_digits(num_tasks=10, seed=seed)


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
                "ewc": {"ewc_lambda": 10.0},
                "gpm": {"threshold": [0.85, 0.95, 0.95], "num_samples": 300},
            },
        ),
        description="10 tasks of pixel-permuted 8x8 scikit-learn digits, 64-100-100-10 MLP, single head",
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
