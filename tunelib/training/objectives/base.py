"""The shape every objective has (see tunelib.training.objectives)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from tunelib.models.moe import router_aux_loss


@dataclass
class Terms:
    """What an objective makes of one micro-batch.

    loss: fp32 scalar, the sum over the batch's units (the loop divides by the step's count).
    metrics: more sums over the same units (detached), logged as the step's means.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(Protocol):
    """What the training loop asks of an objective; tunelib.training.objectives explains each part."""

    unit: str  # what `count` counts: "tokens", "pairs"
    needs: tuple[str, ...]  # frozen models setup builds for it

    def count(self, batch: dict[str, torch.Tensor]) -> int: ...

    def host_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Terms: ...


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """The keyword arguments of `model.hidden` that a batch carries besides input_ids."""
    return {"position_ids": batch.get("position_ids"), "document_ids": batch.get("document_ids")}


def router_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """A mixture-of-experts model's load-balancing loss of the forward just run on `batch` (read
    it before another forward of the model), padding left out (the batch's `token_mask`, as
    transformers' attention_mask), or None for a dense model or a 0 `router_aux_loss_coef`."""
    if not getattr(model.config, "router_aux_loss_coef", 0.0):
        return None
    return router_aux_loss(model, batch.get("token_mask"))


def with_router_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], terms: Terms,
                     units: torch.Tensor | int, aux: torch.Tensor | None = None) -> Terms:
    """`terms` plus the load-balancing loss (`aux`, default `router_loss(model, batch)`) times
    `config.router_aux_loss_coef`, counted once per unit so the step's mean carries it once,
    and logged as `router_aux_loss`; `terms` unchanged for a dense model."""
    aux = router_loss(model, batch) if aux is None else aux
    if aux is None:
        return terms
    coef = model.config.router_aux_loss_coef
    return Terms(terms.loss + coef * aux * units, {**terms.metrics, "router_aux_loss": aux.detach() * units})
