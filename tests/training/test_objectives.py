"""The objectives' own arithmetic: SFT adds a mixture-of-experts model's load-balancing loss once per
token, so the step's mean is transformers' mean loss + coef * aux."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from support.models import make_hf_model_folder
from tunelib.checkpoint import from_pretrained
from tunelib.models.moe import router_aux_loss
from tunelib.training import LinearCrossEntropyLoss
from tunelib.training.objectives import NextToken


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    folder = make_hf_model_folder(tmp_path_factory.mktemp("moe") / "qwen3_moe", "qwen3_moe")
    return from_pretrained(folder, dtype=torch.float32)


def batch(vocab: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.roll(-1, dims=1)
    labels[:, :3] = -100  # a prompt nothing is learned from
    return {"input_ids": ids, "labels": labels}


def test_sft_adds_the_router_loss_once_per_trained_token(moe):
    b = batch(moe.config.vocab_size)
    objective = NextToken(LinearCrossEntropyLoss())
    terms = objective(moe, b)
    aux = router_aux_loss(moe)
    cross_entropy = LinearCrossEntropyLoss()(moe, b)
    tokens = objective.count(b)
    coef = moe.config.router_aux_loss_coef
    assert coef > 0 and aux > 0
    torch.testing.assert_close(terms.loss, cross_entropy + coef * aux * tokens)
    # Divided by the tokens, as the loop does: transformers' mean loss + coef * aux.
    torch.testing.assert_close(terms.metrics["router_aux_loss"] / tokens, aux)


def test_a_zero_coefficient_leaves_the_cross_entropy_alone(moe, monkeypatch):
    b = batch(moe.config.vocab_size)
    monkeypatch.setattr(moe, "config", dataclasses.replace(moe.config, router_aux_loss_coef=0.0))
    terms = NextToken(LinearCrossEntropyLoss())(moe, b)
    torch.testing.assert_close(terms.loss, LinearCrossEntropyLoss()(moe, b))
    assert "router_aux_loss" not in terms.metrics
