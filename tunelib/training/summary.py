"""What a run did, in numbers: printed when it ends and written to `output_dir/summary.json`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FILENAME = "summary.json"


@dataclass
class RunSummary:
    """Counted by the loop as it goes. Losses are per optimizer step, as logged; a resumed run
    counts its own steps, time and speed, and says which step it started from."""

    start_step: int = 0
    steps: int = 0  # optimizer steps done, the resumed ones included
    trained_tokens: int = 0  # tokens the loss counted, all ranks, the resumed ones included
    seconds: float = 0.0  # wall time of this process's training, saves included
    trained_tokens_per_second: float = 0.0  # of this process's steps
    peak_memory_gib: float | None = None  # the fullest device (RSS of the largest process on CPU)
    first_loss: float | None = None  # of this process's first step
    last_loss: float | None = None
    best_loss: float | None = None
    best_step: int | None = None
    val_loss: float | None = None  # the last evaluation's
    _t0: float = field(default=0.0, repr=False)
    _start_tokens: int = field(default=0, repr=False)

    def begin(self, step: int, tokens: int) -> None:
        """Training starts (or resumes) at optimizer step `step` with `tokens` already trained."""
        self.start_step = self.steps = step
        self._start_tokens = self.trained_tokens = tokens
        self._t0 = time.perf_counter()

    def add_step(self, step: int, loss: float, tokens: int) -> None:
        """Optimizer step `step` is done; `loss` is its mean loss, `tokens` the run's total so far."""
        self.steps, self.trained_tokens, self.last_loss = step, tokens, loss
        if self.first_loss is None:
            self.first_loss = loss
        if self.best_loss is None or loss < self.best_loss:
            self.best_loss, self.best_step = loss, step

    def end(self, peak_memory_gib: float | None) -> None:
        """Training is over (finished, or stopped and saved)."""
        self.seconds = time.perf_counter() - self._t0
        self.trained_tokens_per_second = (self.trained_tokens - self._start_tokens) / max(self.seconds, 1e-9)
        self.peak_memory_gib = peak_memory_gib

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def write(self, output_dir: Path, outputs: dict[str, str]) -> Path:
        """Write summary.json (the numbers, plus `outputs`: what was written where); return its path."""
        path = Path(output_dir) / FILENAME
        path.write_text(json.dumps({**self.as_dict(), "outputs": outputs}, indent=2) + "\n")
        return path

    def lines(self) -> list[str]:
        """The summary as a few lines for the terminal."""
        resumed = f" (resumed at step {self.start_step})" if self.start_step else ""
        memory = f", peak memory {self.peak_memory_gib:.2f} GiB" if self.peak_memory_gib is not None else ""
        out = [f"Summary: {self.steps} steps{resumed}, {self.trained_tokens:,} trained tokens in "
               f"{_duration(self.seconds)} ({self.trained_tokens_per_second:,.0f}/s){memory}"]
        if self.first_loss is not None:
            out.append(f"  loss: first {self.first_loss:.4f}, last {self.last_loss:.4f}, "
                       f"best {self.best_loss:.4f} (step {self.best_step})")
        if self.val_loss is not None:
            out.append(f"  val_loss: {self.val_loss:.4f}")
        return out


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
