"""What the user watches during training: a progress bar, or one line per log step.

In a terminal a tqdm bar shows step/total, loss (and a DPO run's reward accuracy and margin, a
distillation's kd_loss), lr, tokens/s, memory and ETA. When output
goes to a file (a batch job, CI), a bar would write carriage returns, so one plain line per
logged step is printed instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any


# Shown when a step logs them: the loss, what tells a DPO or distillation run is learning (the
# rest of an objective's metrics are in the metrics file), the learning rate, speed and memory.
SHOWN = ("loss", "rewards/accuracies", "rewards/margins", "kd_loss", "lr", "tokens_per_second", "peak_memory_gib")


class Progress:
    """Progress of `total` optimizer steps, starting at `start` (after a resume)."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True):
        self.total, self.start, self.enabled = total, start, enabled
        self._t0 = time.perf_counter()
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        """Show the metrics of optimizer step `step`."""
        if not self.enabled:
            return
        shown = {k: _short(metrics[k]) for k in SHOWN if k in metrics}
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(shown, refresh=False)
            return
        eta = self._eta(step)
        text = " ".join(f"{k}={v}" for k, v in shown.items())
        print(f"step {step}/{self.total} {text} eta={eta}", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _eta(self, step: int) -> str:
        done = step - self.start
        if done <= 0:
            return "?"
        seconds = (time.perf_counter() - self._t0) / done * (self.total - step)
        return time.strftime("%H:%M:%S", time.gmtime(seconds))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)
