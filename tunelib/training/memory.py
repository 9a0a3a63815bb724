"""Peak memory, as the user compares it with their GPU's (or machine's) size.

The loop resets the peak when training starts, so the logged figure is training's own, not
the loading's (reading and converting weights, NF4 quantization, tokenizing the data):

- CUDA: the caching allocator's peaks since then, allocated (tensors) and reserved (what the
  process holds from the GPU, which is what runs out).
- CPU: the process's peak resident memory since then, from the kernel's high-water mark
  (VmHWM), reset through /proc/self/clear_refs. It includes what stays resident from before
  training (the weights, the optimizer, the data): on a CPU the model lives in the same memory.
  Where the kernel offers no reset (not Linux), it is the peak since the process started.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

GIB = 1024**3
_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak(device: torch.device) -> bool:
    """Start measuring peaks from now (after model loading, before training).

    Returns:
        True when the peak was reset; False on a CPU whose kernel offers no reset (the peak
        then counts from the process's start).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text("5")  # 5: reset the peak resident set size to the current one
    except OSError:
        return False
    return True


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory in GiB since the last `reset_peak`: allocated and reserved on CUDA, resident
    set size of the process on CPU."""
    if device.type == "cuda":
        return {
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_memory_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
        }
    return {"peak_memory_gib": _host_peak_bytes() / GIB}


def _host_peak_bytes() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # never reset
    return rss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux
