"""Preference optimisation: DPO and its relatives on chosen/rejected pairs, per pair.

A batch of B pairs is 2B rows (tunelib.data.preference_dataset's collate): rows 0..B-1 the
chosen answers, B..2B-1 the rejected ones, so both go through the model in one forward. The
policy's log-probability of each answer (summed over its trained tokens) goes to the loss with
the reference model's, when the loss has one (DPO, IPO, hinge; SimPO and ORPO have none).

Where the reference log-probs come from (tunelib.training.objectives.reference): the policy with
its adapters switched off (LoRA/DoRA: no second copy), a frozen copy of the starting weights
(full fine-tuning), or a table computed once before training and kept with the run.
"""

from __future__ import annotations

from typing import Callable

import torch

from tunelib.training.log_probs import sequence_log_probs
from tunelib.training.objectives.base import Terms, model_inputs, router_loss, with_router_loss

# torchtune's and TRL's metric names.
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "log_probs/chosen", "log_probs/rejected")


class Preference:
    """A preference loss on pairs: the loop averages it over the step's pairs.

    Args:
        loss: a preference loss component (tunelib.training.DPOLoss, IPOLoss, HingeLoss,
            SimPOLoss, ORPOLoss): `loss(policy_chosen, policy_rejected, reference_chosen,
            reference_rejected, chosen_tokens=, rejected_tokens=, chosen_nll=)` on per-answer
            log-prob sums, returning per-pair `losses`, `chosen_rewards`, `rejected_rewards`.
        reference: `reference(model, batch)` -> the reference log-prob sums of the batch's 2B
            rows; None when the loss needs none.
        num_output_chunks: pieces the answer tokens are cut into for the output layer.
    """

    unit = "pairs"

    def __init__(self, loss, reference: Callable | None, num_output_chunks: int = 8):
        self.loss, self.reference, self.chunks = loss, reference, num_output_chunks

    @property
    def needs(self) -> tuple[str, ...]:
        return ("reference",) if self.loss.needs_reference else ()

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2

    def host_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Terms:
        hidden = model.hidden(batch["input_ids"], **model_inputs(batch))  # (2B, T, H)
        logps, tokens = sequence_log_probs(model, hidden, batch["labels"], chunks=self.chunks)  # (2B,), (2B,)
        chosen, rejected = logps.chunk(2)
        chosen_tokens, rejected_tokens = tokens.chunk(2)
        aux = router_loss(model, batch)  # of the policy's forward, before a reference forward replaces it
        ref_chosen = ref_rejected = None
        if self.loss.needs_reference:
            ref_chosen, ref_rejected = self.reference(model, batch).chunk(2)
        terms = self.loss(chosen, rejected, ref_chosen, ref_rejected, chosen_tokens=chosen_tokens,
                          rejected_tokens=rejected_tokens, chosen_nll=-chosen / chosen_tokens.clamp(min=1))
        good, bad = terms.chosen_rewards.detach(), terms.rejected_rewards.detach()
        sums = (good.sum(), bad.sum(), (good > bad).float().sum(), (good - bad).sum(),
                chosen.detach().sum(), rejected.detach().sum())
        return with_router_loss(model, batch, Terms(terms.losses.sum(), dict(zip(METRICS, sums))), chosen.shape[0],
                                aux)
