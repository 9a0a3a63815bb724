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


def test_padding_is_left_out_of_the_router_loss_as_transformers_attention_mask_does(moe):
    from support.models import make_hf_model

    b = batch(moe.config.vocab_size)
    b["token_mask"] = torch.ones_like(b["input_ids"], dtype=torch.bool)
    b["token_mask"][1, 6:] = False  # row 1 is 6 tokens long, then padding (right-padded, as collate pads)
    b["labels"][1, 5:] = -100
    terms = NextToken(LinearCrossEntropyLoss())(moe, b)
    tokens = (b["labels"] != -100).sum()
    hf = make_hf_model("qwen3_moe")  # the weights of the folder `moe` was read from
    with torch.no_grad():
        theirs = hf(b["input_ids"], attention_mask=b["token_mask"].long(), output_router_logits=True).aux_loss
    torch.testing.assert_close(terms.metrics["router_aux_loss"] / tokens, theirs, atol=1e-6, rtol=0)
    unmasked = NextToken(LinearCrossEntropyLoss())(moe, {k: v for k, v in b.items() if k != "token_mask"})
    assert abs(unmasked.metrics["router_aux_loss"] / tokens - theirs) > 1e-4  # what counting the padding gave


def test_a_zero_coefficient_leaves_the_cross_entropy_alone(moe, monkeypatch):
    b = batch(moe.config.vocab_size)
    monkeypatch.setattr(moe, "config", dataclasses.replace(moe.config, router_aux_loss_coef=0.0))
    terms = NextToken(LinearCrossEntropyLoss())(moe, b)
    torch.testing.assert_close(terms.loss, LinearCrossEntropyLoss()(moe, b))
    assert "router_aux_loss" not in terms.metrics
