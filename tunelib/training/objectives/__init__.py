"""Objectives: what turns a batch into a loss, inside the one training loop.

What is trained (every weight, LoRA/DoRA, a LLaMA-Adapter) is one choice, made by the model
config; what it is trained towards is another, the objective:

    NextToken     supervised fine-tuning: cross-entropy of the answer tokens (per token)
    Preference    DPO, IPO, hinge, SimPO, ORPO on chosen/rejected pairs (per pair)
    Distillation  cross-entropy mixed with a divergence from a frozen teacher (per token)

An objective has four parts the loop uses:

    count(batch)        on the CPU batch, before it moves: how many units (tokens, pairs) it holds
    host_inputs(batch)  what the host can work out for it before the batch moves (may be {})
    objective(model, batch) -> Terms(loss, metrics)
                        the loss SUMMED over the batch's units, and metrics summed the same way
    needs               the frozen models it needs besides the trained one ("reference", "teacher")

The loop adds up `count` over a step's micro-batches and all ranks, and divides every sum by
that total, so gradient accumulation and any number of processes give the mean over the whole
step, exactly, whatever the unit. Logged metrics are those means (`loss` is always logged).
docs/architecture.md says how to add an objective.
"""

from tunelib.training.objectives.base import Objective, Terms
from tunelib.training.objectives.distillation import Distillation
from tunelib.training.objectives.next_token import NextToken
from tunelib.training.objectives.preference import Preference

__all__ = ["Distillation", "NextToken", "Objective", "Preference", "Terms"]
