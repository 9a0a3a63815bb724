"""Learning-rate schedules, named as torchtune and transformers name them.

Each returns a `torch.optim.lr_scheduler.LambdaLR` whose state (the step) is saved with
every checkpoint, so a resumed run continues the same curve rather than starting a new one.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _check_warmup(num_warmup_steps: int) -> None:
    if num_warmup_steps < 0:
        raise ValueError(f"num_warmup_steps={num_warmup_steps}; use 0 or more")


def _cosine(step: int, warmup: int, total: int, cycles: float) -> float:
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * cycles * progress)))


def _linear(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _constant(step: int, warmup: int) -> float:
    return min(1.0, step / max(1, warmup)) if warmup else 1.0


def get_cosine_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
                                    num_cycles: float = 0.5, last_epoch: int = -1) -> LambdaLR:
    """Linear warmup from 0 to the optimizer's lr over `num_warmup_steps`, then cosine decay to 0.

    Raises:
        ValueError: `num_warmup_steps` is negative (as for each schedule here).
    """
    _check_warmup(num_warmup_steps)
    fn = partial(_cosine, warmup=num_warmup_steps, total=num_training_steps, cycles=num_cycles)
    return LambdaLR(optimizer, fn, last_epoch)


def get_linear_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
                                    last_epoch: int = -1) -> LambdaLR:
    """Linear warmup, then linear decay to 0 at `num_training_steps`."""
    _check_warmup(num_warmup_steps)
    return LambdaLR(optimizer, partial(_linear, warmup=num_warmup_steps, total=num_training_steps), last_epoch)


def get_constant_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int = 0,
                                      num_training_steps: int | None = None, last_epoch: int = -1) -> LambdaLR:
    """Linear warmup, then the optimizer's lr unchanged (`num_training_steps` is accepted and unused)."""
    _check_warmup(num_warmup_steps)
    return LambdaLR(optimizer, partial(_constant, warmup=num_warmup_steps), last_epoch)
