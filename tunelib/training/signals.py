"""Preemption: on SIGTERM or SIGINT, finish the current step, save, and exit 143 or 130.

Clusters send SIGTERM some seconds before they kill a job; Ctrl-C sends SIGINT. Either sets a
flag the loop reads at the end of each optimizer step (all ranks agree through the step's one
all-reduce), so every rank saves the same step and stops together. A second Ctrl-C stops at once.
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
        """True once this process got a signal (the loop makes every rank agree, in the
        reduction it does once per step anyway)."""
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + the signal number (143 for SIGTERM, 130 for SIGINT), as shells report it."""
        return 128 + int(self.signum or signal.SIGTERM)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TermDuringSetup:
    """While a run is set up, SIGTERM raises SystemExit instead of ending the process at once.

    Under torchrun, a rank that refuses the run (a bad weight file, bad data) makes torchrun
    stop the others with SIGTERM; raised here, it lets each of them take back what it made in
    output_dir (its folders, rank 0's lock) on the way out. `end()` puts the previous handler
    back before `StopOnSignal` takes over for training.
    """

    def __enter__(self) -> "TermDuringSetup":
        self._previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    def ignore(self) -> None:
        """From now until `end()`, SIGTERM does nothing (a refused run is cleaning up)."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def end(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def __exit__(self, *exc) -> None:
        self.end()

    @staticmethod
    def _raise(signum, frame):
        raise SystemExit(128 + signum)
