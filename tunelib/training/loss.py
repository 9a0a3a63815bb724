"""Next-token cross-entropy that never holds the logits of a whole batch.

For a 128k vocabulary, the fp32 logits of 2 x 2048 tokens take 2 GiB, more than the rest of
a LoRA step's activations. The loss runs the output layer over chunks of the sequence, and
each chunk's logits are recomputed in backward instead of being kept, so at most one chunk of
logits is alive at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


class LinearCrossEntropyLoss:
    """Summed cross-entropy over the tokens whose label is not `ignore_index`.

    Args:
        num_output_chunks: how many pieces the sequence is cut into for the output layer.
        ignore_index: the label of positions nothing is learned from.
    """

    def __init__(self, num_output_chunks: int = 8, ignore_index: int = IGNORE_INDEX):
        self.num_output_chunks = num_output_chunks
        self.ignore_index = ignore_index

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the summed loss (fp32 scalar) of one batch; divide by the token count yourself.

        Labels are already shifted: `labels[:, i]` is the target of position i.
        """
        hidden = model.hidden(
            batch["input_ids"], position_ids=batch.get("position_ids"), document_ids=batch.get("document_ids")
        )  # (B, T, H)
        labels = batch["labels"]
        total = hidden.new_zeros((), dtype=torch.float32)
        for h, y in zip(hidden.chunk(self.num_output_chunks, dim=1), labels.chunk(self.num_output_chunks, dim=1)):
            if torch.is_grad_enabled() and h.requires_grad:
                total = total + checkpoint(self._chunk_loss, model, h, y, use_reentrant=False)
            else:
                total = total + self._chunk_loss(model, h, y)
        return total

    def _chunk_loss(self, model, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model.logits(hidden).float()  # (B, t, V)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=self.ignore_index, reduction="sum")


def count_tokens(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """How many positions of a batch are learned from (no device sync: call it on CPU labels)."""
    return int((labels != ignore_index).sum())
