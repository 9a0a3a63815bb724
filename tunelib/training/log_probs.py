"""Log-probabilities of whole sequences, for preference losses, without the logits of a batch.

DPO and its relatives score a sequence by the sum of log p(label) over its trained tokens.
Computed from full logits, the fp32 logits alone of 2 pairs of 2048 tokens at a 128k vocabulary
take 3.9 GiB, and backward would keep their log-softmax as well. Here the
output layer runs over chunks of the trained positions, each inside `torch.utils.checkpoint`,
so forward keeps only one chunk's logits at a time and backward recomputes each chunk's
logits when it reaches it. Any output layer works (`model.logits`: adapters, soft-cap).

`chunk_positions` is shared with the distillation losses: it picks the positions a loss
looks at and says which row each came from.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def sequence_log_probs(model, hidden: torch.Tensor, labels: torch.Tensor, *, chunks: int = 8,
                       ignore_index: int = IGNORE_INDEX,
                       trained_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(label) over each row's trained positions, and how many there are.

    Args:
        model: has `logits(hidden)` (lm_head plus any soft-cap), as tunelib's CausalLM.
        hidden: (N, T, H) final hidden states from `model.hidden(...)`.
        labels: (N, T) already shifted (`labels[:, i]` is the target of position i);
            `ignore_index` where nothing is scored.
        chunks: how many pieces the trained positions are cut into for the output layer.
        trained_rows: optional flat (N*T) indices of the trained positions, found on the host
            (`LinearCrossEntropyLoss.host_inputs`); without them a CPU finds them itself and a
            GPU scores every position (finding them there would wait for the device).

    Returns:
        (sums (N,) fp32, counts (N,) int64). Gradients flow to `hidden` and to the output
        layer's parameters; under `torch.no_grad()` nothing is kept.
    """
    n = labels.shape[0]
    flat, targets, rows = chunk_positions(hidden, labels, ignore_index, trained_rows)
    token_log_probs = []
    grad = torch.is_grad_enabled()
    # Exactly `chunks` pieces (some maybe empty): under FSDP2 every rank must call the output
    # layer as often as the others, whatever its count of trained positions.
    for h, y in zip(flat.tensor_split(chunks), targets.tensor_split(chunks)):
        if grad:
            token_log_probs.append(checkpoint(_label_log_probs, model, h, y, ignore_index, use_reentrant=False))
        else:
            token_log_probs.append(_label_log_probs(model, h, y, ignore_index))
    scores = torch.cat(token_log_probs) if token_log_probs else flat.new_zeros(0, dtype=torch.float32)
    sums = scores.new_zeros(n).index_add(0, rows, scores)
    return sums, (labels != ignore_index).sum(dim=1)


def chunk_positions(hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                    trained_rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positions a loss scores: (hidden (n, H), labels (n,), row of each (n,)).

    The trained positions when known (`trained_rows`, or found here on a CPU); on a GPU
    without them, every position (ignored ones keep `ignore_index` and count for nothing).
    """
    t = labels.shape[1]
    flat_hidden, flat_labels = hidden.flatten(0, 1), labels.flatten()  # (N*T, H), (N*T,)
    if trained_rows is None and flat_labels.device.type == "cpu":
        trained_rows = (flat_labels != ignore_index).nonzero().squeeze(1)
    if trained_rows is None:
        return flat_hidden, flat_labels, torch.arange(flat_labels.numel(), device=flat_labels.device) // t
    trained_rows = trained_rows.to(flat_labels.device)
    return flat_hidden.index_select(0, trained_rows), flat_labels.index_select(0, trained_rows), trained_rows // t


def _label_log_probs(model, hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """log p(label) (n,) fp32 for hidden rows (n, H); 0 where the label is ignored."""
    logits = model.logits(hidden).float()  # (n, V)
    keep = labels != ignore_index
    target = torch.where(keep, labels, 0)[:, None]  # (n, 1); any valid id where ignored
    picked = logits.gather(1, target).squeeze(1) - logits.logsumexp(dim=1)
    return torch.where(keep, picked, 0.0)
