"""Next-token cross-entropy that never holds the logits of a whole batch, and skips what it can.

For a 128k vocabulary, the fp32 logits of 2 x 2048 tokens take 2 GiB, more than the rest of
a LoRA step's activations. In training, when the output layer is a plain linear layer (no
adapter, bias or soft-cap), the loss runs it over chunks of the tokens and works out each
chunk's gradients right away, in forward: softmax minus the one-hot target, times the
weight (for the hidden states) and times the chunk's hidden states (for the weight). Only
one chunk of logits is alive at a time, none is kept for backward, and none is recomputed;
backward only scales the gradients by the incoming factor. This is exactly the chain rule
autograd would apply, in another order.

Other output layers go through `model.logits`: at once when the logits are small (under
`max_logits_bytes`), else chunk by chunk with each chunk's logits recomputed in backward.

The output layer only sees the positions that are trained (label != ignore_index): the
prompt and padding positions contribute nothing to the loss, and skipping them skips their
share of the output layer's matmuls. The training loop finds them on the host, from the CPU
labels (`host_inputs`), and sends their indices with the batch, so a GPU never stalls the host
for them. Without those indices, a CPU finds them itself and a GPU sends every position through
(finding them there would wait for the device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


class LinearCrossEntropyLoss:
    """Summed cross-entropy over the tokens whose label is not `ignore_index`.

    Args:
        num_output_chunks: how many pieces the tokens are cut into for the output layer.
        ignore_index: the label of positions nothing is learned from.
        max_logits_bytes: for output layers other than a plain linear one, the most memory
            the fp32 logits of one batch may take unchunked (default 256 MiB); 0 always chunks.
    """

    def __init__(self, num_output_chunks: int = 8, ignore_index: int = IGNORE_INDEX,
                 max_logits_bytes: int = 256 * 2**20):
        self.num_output_chunks = num_output_chunks
        self.ignore_index = ignore_index
        self.max_logits_bytes = max_logits_bytes
        self.chunk_cross_entropy = chunk_cross_entropy  # `compile()` swaps in a compiled copy

    def compile(self) -> None:
        """torch.compile the per-chunk cross-entropy of a plain output layer (fp32 log-softmax, loss
        and gradient): fused, it reads each chunk's logits in a few passes instead of ~7 eager ones."""
        self.chunk_cross_entropy = torch.compile(chunk_cross_entropy)

    def host_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the loss needs from a batch that the host can work out before it moves to the
        device: `trained_rows`, the flat (B*T) indices of the positions learned from. Takes
        the CPU batch; returns a dict of CPU tensors to send along with it."""
        return {"trained_rows": (batch["labels"].flatten() != self.ignore_index).nonzero().squeeze(1)}

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the summed loss (fp32 scalar) of one batch; divide by the token count yourself.

        Labels are already shifted: `labels[:, i]` is the target of position i. `trained_rows`
        (from `host_inputs`), when the batch has it, says which positions are learned from.
        """
        hidden = model.hidden(
            batch["input_ids"], position_ids=batch.get("position_ids"), document_ids=batch.get("document_ids")
        )  # (B, T, H)
        return self.from_hidden(model, hidden, batch)

    def from_hidden(self, model, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The summed loss from the model's final hidden states (B, T, H) of `batch`, for objectives
        that use the same forward for more than this loss (distillation)."""
        # One row per token: chunks of rows are contiguous, so the output layer is one plain matmul.
        hidden, labels = hidden.flatten(0, 1), batch["labels"].flatten()  # (B*T, H), (B*T,)
        trained = batch.get("trained_rows")
        if trained is None and hidden.device.type == "cpu":
            trained = self.host_inputs(batch)["trained_rows"]
        if trained is not None:
            hidden, labels = hidden.index_select(0, trained), labels.index_select(0, trained)
        weight = _plain_output_weight(model)
        training = torch.is_grad_enabled() and (hidden.requires_grad or (weight is not None and weight.requires_grad))
        if training and weight is not None:
            return _LinearCrossEntropy.apply(hidden, weight, labels, self.num_output_chunks, self.ignore_index,
                                             self.chunk_cross_entropy)
        if not training or not self._chunked(model, labels.numel()):
            return self._chunk_loss(model, hidden, labels)
        total = hidden.new_zeros((), dtype=torch.float32)
        # Exactly num_output_chunks pieces (maybe empty): under FSDP2 every rank must call the
        # output layer as often as the others, whatever its count of trained positions.
        n = self.num_output_chunks
        for h, y in zip(hidden.tensor_split(n), labels.tensor_split(n)):
            total = total + checkpoint(self._chunk_loss, model, h, y, use_reentrant=False)
        return total

    def _chunked(self, model, rows: int) -> bool:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        return vocab is None or rows * vocab * 4 > self.max_logits_bytes

    def _chunk_loss(self, model, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model.logits(hidden).float()  # (n, V)
        return F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="sum")


def _plain_output_weight(model) -> torch.Tensor | None:
    """The output layer's weight when logits are exactly `hidden @ weight.T`, else None.

    An adapter on the output layer, a bias, Gemma 2's final soft-cap, or a weight that is not
    a plain tensor (NF4, a DTensor shard) leave the logits to `model.logits`.
    """
    head = getattr(model, "lm_head", None)
    if type(head) is not nn.Linear or head.bias is not None:
        return None
    if getattr(getattr(model, "config", None), "final_logit_softcapping", None) is not None:
        return None
    weight = head.weight
    return weight if type(weight) in (torch.Tensor, nn.Parameter) else None


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `labels`, gradients made in forward.

    hidden (n, H), weight (V, H), labels (n,). Per chunk of rows: logits (c, V) in fp32,
    loss = logsumexp - the target's logit, d loss / d logits = softmax - one_hot(target)
    (zero on ignored rows), then d/d hidden = that @ weight and d/d weight += that.T @ hidden,
    in the weight's dtype as autograd would. Backward multiplies them by the incoming
    gradient, in place: like any graph that is freed after backward, it runs once.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunks: int, ignore_index: int, chunk_loss=None):
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None  # (n, H)
        grad_weight = torch.zeros_like(weight) if want_weight else None  # (V, H)
        total = hidden.new_zeros((), dtype=torch.float32)
        start = 0
        for h, y in zip(hidden.chunk(chunks), labels.chunk(chunks)):  # (c, H), (c,)
            loss, grad = (chunk_loss or chunk_cross_entropy)(h @ weight.t(), y, ignore_index, weight.dtype)  # (), (c, V)
            total += loss
            if want_hidden:
                torch.mm(grad, weight, out=grad_hidden[start:start + h.shape[0]])
            if want_weight:
                grad_weight.addmm_(grad.t(), h)
            start += h.shape[0]
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden.mul_(grad_total)
        if grad_weight is not None:
            grad_weight.mul_(grad_total)
        return grad_hidden, grad_weight, None, None, None, None


def chunk_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                        dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of logits (c, V) against labels (c,), and its gradient by the logits.

    Computed in fp32: loss = logsumexp - the target's logit, gradient = softmax - one_hot(target),
    zero on rows labelled `ignore_index`. Returns (fp32 scalar, (c, V) in `dtype`); may overwrite
    fp32 `logits`.
    """
    keep = (labels != ignore_index)[:, None]  # (c, 1)
    target = torch.where(keep, labels[:, None], 0)  # (c, 1); any valid id where ignored
    wide = logits.float()  # (c, V)
    lse = wide.logsumexp(dim=1, keepdim=True)  # (c, 1)
    loss = torch.where(keep, lse - wide.gather(1, target), 0).sum()
    grad = wide.sub_(lse).exp_()  # softmax, in the fp32 logits' memory
    grad.scatter_add_(1, target, torch.full_like(target, -1, dtype=grad.dtype))
    return loss, grad.masked_fill_(~keep, 0).to(dtype)


def count_tokens(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """How many positions of a batch are learned from (no device sync: call it on CPU labels)."""
    return int((labels != ignore_index).sum())
