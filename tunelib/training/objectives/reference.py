"""Where a preference objective's reference log-probs come from.

Each is `reference(model, batch)` -> the log-prob sums (2B,) of the batch's answers under the
reference model, without gradients.
"""

from __future__ import annotations

from typing import Callable

import torch

from tunelib.peft import adapters_disabled
from tunelib.training.log_probs import sequence_log_probs
from tunelib.training.objectives.base import model_inputs


class AdaptersOff:
    """The reference of an adapter run: the policy itself with its adapters switched off, so
    the frozen base is the reference and no second copy of it exists."""

    def __init__(self, num_output_chunks: int = 8):
        self.chunks = num_output_chunks

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with adapters_disabled(model):
            return _log_probs(model, batch, self.chunks)


class FrozenModel:
    """A frozen copy of the starting weights (full fine-tuning), sharded like the policy."""

    def __init__(self, reference: torch.nn.Module, num_output_chunks: int = 8):
        self.model, self.chunks = reference, num_output_chunks

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return _log_probs(self.model, batch, self.chunks)


class Precomputed:
    """Reference log-probs worked out once before training, one (chosen, rejected) row per
    dataset pair, looked up by the batch's `pair_index` (its pairs' dataset indices)."""

    def __init__(self, table: torch.Tensor):
        self.table = table  # (pairs, 2) fp32, on the training device

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = self.table.index_select(0, batch["pair_index"])  # (B, 2)
        return torch.cat([rows[:, 0], rows[:, 1]])


def _log_probs(model: torch.nn.Module, batch: dict[str, torch.Tensor], chunks: int) -> torch.Tensor:
    hidden = model.hidden(batch["input_ids"], **model_inputs(batch))
    return sequence_log_probs(model, hidden, batch["labels"], chunks=chunks)[0]


@torch.no_grad()
def precompute(reference: Callable[[dict], torch.Tensor], batches, pairs: int, device: torch.device) -> torch.Tensor:
    """The (pairs, 2) table of `reference(batch)`'s log-probs (chosen, rejected) of every pair in
    `batches`, by `pair_index`. Pairs not in `batches` stay 0, so summing the tables of all
    processes, each given its share, gives the whole one."""
    table = torch.zeros(pairs, 2, dtype=torch.float32, device=device)
    for batch in batches:
        chosen, rejected = reference(batch).float().chunk(2)
        table.index_copy_(0, batch["pair_index"], torch.stack([chosen, rejected], dim=1))
    return table
