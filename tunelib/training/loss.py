"""Next-token cross-entropy that never holds the logits of a whole batch, and skips what it can.

For a 128k vocabulary, the fp32 logits of 2 x 2048 tokens take 2 GiB, more than the rest of
a LoRA step's activations. Above `max_logits_bytes` the loss runs the output layer over
chunks of the tokens, and each chunk's logits are recomputed in backward instead of being
kept, so at most one chunk of logits is alive at a time. Below it (a small vocabulary or a
short batch) the recompute would cost more time than the memory is worth, so the logits are
computed once and kept for backward.

On CPU the output layer only sees the positions that are trained (label != ignore_index):
the prompt and padding positions contribute nothing to the loss, and skipping them skips
their share of the output layer's matmuls. (On GPU, finding them would stall the host on the
device, so every position goes through.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


class LinearCrossEntropyLoss:
    """Summed cross-entropy over the tokens whose label is not `ignore_index`.

    Args:
        num_output_chunks: how many pieces the tokens are cut into for the output layer, when
            the logits would take more than `max_logits_bytes`.
        ignore_index: the label of positions nothing is learned from.
        max_logits_bytes: the most memory the fp32 logits of one batch may take unchunked
            (default 256 MiB); 0 always chunks.
    """

    def __init__(self, num_output_chunks: int = 8, ignore_index: int = IGNORE_INDEX,
                 max_logits_bytes: int = 256 * 2**20):
        self.num_output_chunks = num_output_chunks
        self.ignore_index = ignore_index
        self.max_logits_bytes = max_logits_bytes

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the summed loss (fp32 scalar) of one batch; divide by the token count yourself.

        Labels are already shifted: `labels[:, i]` is the target of position i.
        """
        hidden = model.hidden(
            batch["input_ids"], position_ids=batch.get("position_ids"), document_ids=batch.get("document_ids")
        )  # (B, T, H)
        # One row per token: chunks of rows are contiguous, so the output layer is one plain matmul.
        hidden, labels = hidden.flatten(0, 1), batch["labels"].flatten()  # (B*T, H), (B*T,)
        if hidden.device.type == "cpu":
            trained = (labels != self.ignore_index).nonzero().squeeze(1)
            hidden, labels = hidden.index_select(0, trained), labels.index_select(0, trained)
        if not (torch.is_grad_enabled() and hidden.requires_grad) or not self._chunked(model, labels.numel()):
            return self._chunk_loss(model, hidden, labels)
        total = hidden.new_zeros((), dtype=torch.float32)
        for h, y in zip(hidden.chunk(self.num_output_chunks), labels.chunk(self.num_output_chunks)):
            total = total + checkpoint(self._chunk_loss, model, h, y, use_reentrant=False)
        return total

    def _chunked(self, model, rows: int) -> bool:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        return vocab is None or rows * vocab * 4 > self.max_logits_bytes

    def _chunk_loss(self, model, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model.logits(hidden).float()  # (n, V)
        return F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="sum")


def count_tokens(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """How many positions of a batch are learned from (no device sync: call it on CPU labels)."""
    return int((labels != ignore_index).sum())
