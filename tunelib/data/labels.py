"""Labels for next-token prediction, shifted in the data so the loss needs no shift."""

from __future__ import annotations

IGNORE_INDEX = -100


def shift_labels(tokens: list[int], mask: list[bool]) -> list[int]:
    """labels[i] is the target of position i: tokens[i + 1] when that token is trained
    (mask False), else IGNORE_INDEX. The last position predicts nothing."""
    labels = [t if not m else IGNORE_INDEX for t, m in zip(tokens[1:], mask[1:])]
    return labels + [IGNORE_INDEX] if tokens else []
