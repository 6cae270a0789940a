"""Per-layer settings of GPM: energy thresholds (one value, one per layer, or a schedule over
tasks) and the number of samples whose inputs form each layer's representation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import TypeVar, Union

LayerThresholds = Union[float, Sequence[float], Mapping[str, float]]
ThresholdSpec = Union[LayerThresholds, Callable[[int], LayerThresholds]]
T = TypeVar("T")


@dataclass(frozen=True)
class LinearSchedule:
    """``start + step * task``: the paper's Split CIFAR-100 schedule is ``LinearSchedule(0.97, 0.003)``.

    :param start: threshold of the first task (task index 0).
    :param step: increase per task.
    """

    start: float
    step: float

    def __call__(self, task: int) -> float:
        return self.start + self.step * task


def _check_value(value: object, where: str) -> float:
    # bool is an int: threshold=True would silently protect all of the energy
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 < float(value) <= 1.0:
        raise ValueError(
            f"GPM threshold{where} is {value!r}; it is the fraction of input energy to protect "
            "and must be a number in (0, 1], e.g. 0.97"
        )
    return float(value)


def check_threshold_spec(spec: ThresholdSpec) -> None:
    """Fail early on a threshold that is invalid whatever the model (schedules are checked per task)."""
    if callable(spec):
        return
    if isinstance(spec, Mapping):
        for name, value in spec.items():
            _check_value(value, f" for layer {name!r}")
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        if len(spec) == 0:
            raise ValueError("GPM threshold sequence is empty; give one value per protected layer")
        for i, value in enumerate(spec):
            _check_value(value, f" at position {i}")
    else:
        _check_value(spec, "")


def per_layer(
    values: object,
    layer_names: Sequence[str],
    check: Callable[[object, str], T],
    what: str,
    context: str = "",
) -> dict[str, T]:
    """Expand a per-layer setting (one value, a sequence in layer order, or a name mapping).

    :param values: the setting.
    :param layer_names: protected layer names in model order.
    :param check: validates and converts one value; gets the value and where it came from.
    :param what: name of the setting, for error messages.
    :param context: where the setting came from (e.g. a schedule's task), for error messages.
    """
    if isinstance(values, Mapping):
        missing = [name for name in layer_names if name not in values]
        unknown = [name for name in values if name not in layer_names]
        if missing or unknown:
            raise ValueError(
                f"{what} mapping{context} must name every protected layer exactly: missing {missing}, "
                f"not protected {unknown}; protected layers are {list(layer_names)}"
            )
        return {name: check(values[name], f"{context} for layer {name!r}") for name in layer_names}
    if isinstance(values, Sequence) and not isinstance(values, str):
        if len(values) != len(layer_names):
            raise ValueError(
                f"{what}{context} has {len(values)} values but {len(layer_names)} layers are protected "
                f"({list(layer_names)}); give one value per layer or a single value"
            )
        return {name: check(value, f"{context} for layer {name!r}") for name, value in zip(layer_names, values)}
    return {name: check(values, context) for name in layer_names}


def resolve_thresholds(spec: ThresholdSpec, task: int, layer_names: Sequence[str]) -> dict[str, float]:
    """Threshold of every protected layer for one task.

    :param spec: a float for every layer; a sequence with one value per protected layer in
        model order; a mapping from layer name to value; or a callable ``task -> any of those``.
    :param task: index of the experience just trained (0 for the first).
    :param layer_names: protected layer names in model order.
    """
    if callable(spec):
        return per_layer(spec(task), layer_names, _check_value, "GPM threshold", f" of the schedule at task {task}")
    return per_layer(spec, layer_names, _check_value, "GPM threshold")


def check_positive_int(value: object, setting: str, hint: str = "") -> int:
    """``value`` if it is an integer of at least 1 (``True`` is not), else a ValueError naming ``setting``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{setting} is {value!r}; it must be a positive integer{hint}")
    return value


def _check_sample_count(value: object, where: str) -> int:
    return check_positive_int(value, f"GPM num_samples{where}")


def resolve_num_samples(spec: int | Sequence[int] | Mapping[str, int], layer_names: Sequence[str]) -> dict[str, int]:
    """Samples whose inputs form each layer's representation (one value, per layer, or by name)."""
    return per_layer(spec, layer_names, _check_sample_count, "GPM num_samples")
