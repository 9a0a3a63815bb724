"""Components that break on purpose, for the reliability tests (allowed with
TUNELIB_ALLOW_MODULES=support, like any user's own component)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from tunelib.training import HFCheckpointer
from tunelib.training import LinearCrossEntropyLoss


def _rank() -> int:
    return int(os.environ.get("RANK", 0))


class NaNLoss(LinearCrossEntropyLoss):
    """The usual loss, but NaN at the `at_call`-th training micro-batch (1-based) on `rank` (None: all)."""

    def __init__(self, at_call: int, rank: int | None = None, num_output_chunks: int = 8):
        super().__init__(num_output_chunks)
        self.at_call, self.rank, self.calls = at_call, rank, 0

    def __call__(self, model, batch):
        loss = super().__call__(model, batch)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at_call and (self.rank is None or self.rank == _rank()):
                return loss * float("nan")
        return loss


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward; backward turns every gradient into inf (a finite loss, a broken norm)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class InfGradLoss(LinearCrossEntropyLoss):
    """The usual loss, whose gradient is infinite at the `at_call`-th training micro-batch."""

    def __init__(self, at_call: int, num_output_chunks: int = 8):
        super().__init__(num_output_chunks)
        self.at_call, self.calls = at_call, 0

    def __call__(self, model, batch):
        loss = super().__call__(model, batch)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at_call:
                return _InfiniteGradient.apply(loss)
        return loss


class HangingLoss(LinearCrossEntropyLoss):
    """The usual loss, but rank `rank` stops answering at its `at_call`-th training micro-batch."""

    def __init__(self, at_call: int, rank: int, num_output_chunks: int = 8):
        super().__init__(num_output_chunks)
        self.at_call, self.rank, self.calls = at_call, rank, 0

    def __call__(self, model, batch):
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at_call and self.rank == _rank():
                time.sleep(600)
        return super().__call__(model, batch)


class SlowCheckpointer(HFCheckpointer):
    """Writes step `pause_at_step`'s weights, touches `pause_file`, then waits (to be killed mid-save)."""

    def __init__(self, checkpoint_dir: str, output_dir: str, pause_at_step: int, pause_file: str):
        super().__init__(checkpoint_dir, output_dir)
        self.pause_at_step, self.pause_file, self._step = pause_at_step, Path(pause_file), None

    def save(self, model, *, step, **kwargs):
        self._step = step
        return super().save(model, step=step, **kwargs)

    def _write_model(self, model, folder, adapter_only, dist=None):
        super()._write_model(model, folder, adapter_only, dist)
        if self._step == self.pause_at_step:
            self.pause_file.write_text(str(folder))
            time.sleep(600)
