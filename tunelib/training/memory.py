"""Peak memory, as the user compares it with their GPU's size."""

from __future__ import annotations

import resource
import sys

import torch

GIB = 1024**3


def reset_peak(device: torch.device) -> None:
    """Start measuring peaks from now (after model loading, before training)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory in GiB: allocated and reserved on CUDA, resident set size of the process on CPU."""
    if device.type == "cuda":
        return {
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_memory_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"peak_memory_gib": rss * scale / GIB}
