"""A weight whose shape and dtype are known now and whose values are computed when asked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class PendingWeight:
    """What a writer needs to plan a file (shape, dtype) before it computes the values (`make()`)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]
