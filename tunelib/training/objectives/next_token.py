"""Supervised fine-tuning: next-token cross-entropy of the trained (answer) tokens."""

from __future__ import annotations

import torch

from tunelib.training.loss import count_tokens
from tunelib.training.objectives.base import Terms, with_router_loss


class NextToken:
    """Cross-entropy summed over the tokens whose label is not ignored, per token.

    Args:
        loss: the cross-entropy component (`loss` in the config; default
            tunelib.training.LinearCrossEntropyLoss): `loss(model, batch)` returns the summed
            loss, `loss.host_inputs(batch)` and `loss.compile()` are used when it has them.
    """

    unit = "tokens"
    needs = ()

    def __init__(self, loss):
        self.loss = loss

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return count_tokens(batch["labels"])

    def host_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        host = getattr(self.loss, "host_inputs", None)
        return host(batch) if host is not None else {}

    def compile(self) -> None:
        if hasattr(self.loss, "compile"):
            self.loss.compile()

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Terms:
        trained = (batch["labels"] != -100).sum()  # on the device: no host read
        return with_router_loss(model, batch, Terms(self.loss(model, batch)), trained)
