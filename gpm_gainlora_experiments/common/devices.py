"""The training device a user asked for, checked before anything is built."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """``torch.device(name)``, refused in one line when it is not a device or not on this machine.

    :param name: e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
    :raises ValueError: for an unknown device type or a CUDA/MPS device this machine lacks.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: torch sees no CUDA device on this machine; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return device
