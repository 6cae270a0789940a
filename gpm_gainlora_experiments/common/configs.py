"""Comparing run configurations: which of their (nested) fields differ."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def differing_fields(configs: Sequence[Mapping[str, Any]], ignore: Sequence[str] = ()) -> list[str]:
    """Dotted names of the fields whose values are not the same in every configuration.

    A field missing from some configurations counts as differing from those that have it.

    :param configs: configurations, possibly nested (``{"hyperparams": {"epochs": 5}}``).
    :param ignore: dotted names left out of the comparison with every field under them, e.g.
        ``("seed", "settings.method_options")``.
    """
    flat = [_flatten(config) for config in configs]
    names = {name for name in set().union(*flat) if not any(name == i or name.startswith(f"{i}.") for i in ignore)}
    return sorted(name for name in names if len({json.dumps(f.get(name), sort_keys=True) for f in flat}) > 1)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for name, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat
