"""O-LoRA's orthogonality penalty (Wang et al., 2023)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def orthogonality_penalty(old_downs: Sequence[Mapping[str, Tensor]], new_down: Mapping[str, Tensor]) -> Tensor:
    """``sum_{i<t} sum_layers sum |A_i A_t^T|``: zero when the new branch's rows are orthogonal to every old one's.

    :param old_downs: ``A_i`` (``r x in``) of each old branch, by layer name.
    :param new_down: ``A_t`` of the branch being trained, by layer name.
    """
    terms = [(old[name] @ new.T).abs().sum() for old in old_downs for name, new in new_down.items()]
    if not terms:
        return torch.zeros((), device=next(iter(new_down.values())).device)
    return torch.stack(terms).sum()
