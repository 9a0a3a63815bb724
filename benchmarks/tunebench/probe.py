"""What a driver records at the end of each optimizer step, the same way in every library.

Each library calls its metric logger (tunelib, torchtune) or a callback (transformers) right
after the optimizer step; the driver hands that call to `Probe.step`. The probe keeps the
time, the loss, and peak memory. Peak memory covers steps 2..N: after step 1 (when optimizer
state exists) the process's high-water mark is reset, so model loading and imports do not
count; on CUDA the allocator's peak is reset at the same point.
"""

from __future__ import annotations

import json
import re
import resource
import time
from pathlib import Path

GIB = 1024**3


def _rss_peak_bytes() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024


def _reset_rss_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


class Probe:
    """Step times, losses and peak memory of one run; `write` saves them as JSON."""

    def __init__(self, device: str):
        self.device = device
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # CPU seconds of the process, all threads
        self.losses: list[float] = []
        self.extra: dict = {}

    def step(self, loss: float) -> None:
        """Call once per optimizer step, after it, with the step's mean loss per trained token."""
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())
        self.losses.append(float(loss))
        if len(self.times) == 1:
            self._reset_peaks()

    def _reset_peaks(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_rss_peak()

    def memory(self) -> dict[str, float]:
        out = {"process_max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB}
        if self.device == "cuda":
            import torch

            out["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
            out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        else:
            out["peak_rss_gib"] = _rss_peak_bytes() / GIB
        return out

    def write(self, path: Path, **info) -> None:
        Path(path).write_text(json.dumps({"times": self.times, "cpu_times": self.cpu_times, "losses": self.losses, "memory": self.memory(),
                                          **self.extra, **info}, indent=1))
