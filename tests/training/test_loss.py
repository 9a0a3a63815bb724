"""LinearCrossEntropyLoss: every path gives cross_entropy(model(x)) and its gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunelib.checkpoint import from_pretrained
from tunelib.training.loss import LinearCrossEntropyLoss, _LinearCrossEntropy, _plain_output_weight


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(1))
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    labels[0, :4] = -100  # a prompt
    return {"input_ids": ids, "labels": labels}


def _reference(model, batch):
    logits = model(batch["input_ids"]).float()
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum")


def _loss_and_grads(fn, model, batch):
    model.zero_grad()
    loss = fn(model, batch)
    (loss * 0.3).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("family", "fused"), [("llama3", True), ("llama3_2", True), ("gemma2", False)])
@pytest.mark.parametrize("chunks", [1, 3])
def test_loss_and_gradients_equal_plain_cross_entropy(family, fused, chunks, hf_folder):
    # llama3_2 ties the output layer to the embedding; gemma2's soft-cap takes the model.logits path.
    model = from_pretrained(hf_folder(family)).float()
    assert (_plain_output_weight(model) is not None) == fused
    batch = _batch(model.config.vocab_size)
    want, want_grads = _loss_and_grads(lambda m, b: _reference(m, b), model, batch)
    got, got_grads = _loss_and_grads(LinearCrossEntropyLoss(num_output_chunks=chunks, max_logits_bytes=0), model, batch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got_grads.keys() == want_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_frozen_output_layer_gets_no_gradient(hf_folder):
    model = from_pretrained(hf_folder("llama3")).float()
    model.lm_head.weight.requires_grad_(False)
    batch = _batch(model.config.vocab_size)
    _, grads = _loss_and_grads(LinearCrossEntropyLoss(), model, batch)
    assert "lm_head.weight" not in grads and "model.norm.weight" in grads


def test_ignored_rows_count_for_nothing():
    # On GPU no rows are dropped beforehand: the fused function itself must skip ignored labels.
    h = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(20, 8, requires_grad=True)
    y = torch.tensor([3, -100, 5, -100, -100, 0, 19, -100, 7, 1])
    keep = y != -100
    loss = _LinearCrossEntropy.apply(h, w, y, 4, -100)
    loss.backward()
    ref = F.cross_entropy(h[keep] @ w.t(), y[keep], reduction="sum")
    torch.testing.assert_close(loss, ref)
    assert (h.grad[~keep] == 0).all()


def test_evaluation_needs_no_gradients(hf_folder):
    model = from_pretrained(hf_folder("llama3")).float()
    batch = _batch(model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(LinearCrossEntropyLoss()(model, batch), _reference(model, batch), rtol=1e-5, atol=1e-5)
