"""Preemption: on SIGTERM or SIGINT, finish the current step, save, and exit 143 or 130.

Clusters send SIGTERM some seconds before they kill a job; Ctrl-C sends SIGINT. Either sets a
flag the loop reads after each optimizer step (all ranks agree through one collective), so
every rank saves the same step and stops together. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal

from tunelib.training.distributed import Dist


class StopOnSignal:
    """Install the handlers; `requested()` tells the loop to save and stop."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, dist: Dist):
        self.dist = dist
        self.signum: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\nReceived {signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
              "(Ctrl-C again to stop at once)", flush=True)

    def requested(self) -> bool:
        """True on every rank once any rank got a signal."""
        return self.dist.max(1.0 if self.signum is not None else 0.0) > 0

    @property
    def exit_code(self) -> int:
        """128 + the signal number (143 for SIGTERM, 130 for SIGINT), as shells report it."""
        return 128 + int(self.signum or signal.SIGTERM)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
