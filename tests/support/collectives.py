"""A loss that also records what FSDP2 does between training micro-batches, for the FSDP option
tests (allowed with TUNELIB_ALLOW_MODULES=support, like faults.py).

Each rank writes `record_dir/rank<R>.json`: one entry per training micro-batch, taken as the loss
is called, with the reduce-scatters, all-gathers and all-reduces within a subgroup (HSDP's
all-reduce across replicas) this rank has started so far, and the share of the model's
elements it holds.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from tunelib.training import LinearCrossEntropyLoss

# FSDP2 calls the collectives through `torch.distributed`, so counting there sees every one.
KINDS = {"reduce_scatter": ("reduce_scatter_single", "reduce_scatter_tensor"),
         "all_gather": ("all_gather_single", "all_gather_into_tensor"),
         "all_reduce": ("all_reduce",)}


class CollectiveCountingLoss(LinearCrossEntropyLoss):
    """The usual loss; counts this rank's reduce-scatters and all-gathers into `record_dir`."""

    def __init__(self, record_dir: str, num_output_chunks: int = 8):
        super().__init__(num_output_chunks)
        self.path = Path(record_dir) / f"rank{os.environ.get('RANK', 0)}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.counts = {kind: 0 for kind in KINDS}
        self.entries: list[dict] = []
        for kind, names in KINDS.items():
            for name in names:
                if hasattr(dist, name):
                    setattr(dist, name, self._counting(kind, getattr(dist, name)))

    def _counting(self, kind: str, collective):
        @functools.wraps(collective)
        def counted(*args, **kwargs):
            # The loop's own all-reduces (token counts, losses) use the whole world; FSDP2's
            # gradient all-reduce under HSDP names its replica group.
            if kind != "all_reduce" or kwargs.get("group") is not None:
                self.counts[kind] += 1
            return collective(*args, **kwargs)

        return counted

    def __call__(self, model, batch):
        if torch.is_grad_enabled():
            self.entries.append({**self.counts, "held": _held_share(model)})
            self.path.write_text(json.dumps(self.entries))
        return super().__call__(model, batch)


def _held_share(model: torch.nn.Module) -> float:
    """The share of the model's elements stored on this rank (1.0 unsharded)."""
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
    return local / sum(p.numel() for p in model.parameters())
