"""On CPU, packed documents are attended one at a time; that must equal the document mask."""

from __future__ import annotations

import pytest
import torch

from tunelib.checkpoint import from_pretrained
from tunelib.models import decoder
from tunelib.models.attention import Attention, document_lengths


def _counting(method, calls: list):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return method(*args, **kwargs)

    return wrapped


def test_document_lengths_reads_runs_and_refuses_split_documents():
    docs = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 1, 1, 1, 1, 1]])
    assert document_lengths(docs) == [[3, 2, 1], [1, 5]]
    # Document 0 comes back after document 1: only the mask can say that.
    assert document_lengths(torch.tensor([[0, 0, 1, 1, 0, 0]])) is None


# gemma2: soft-capped scores, and sliding windows (4 or 6) that cut no document only in rows
# of at most 4 tokens; qwen3: q/k norms.
@pytest.mark.parametrize(("family", "docs"), [
    ("llama3", [[0] * 5 + [1] * 4 + [2] * 3, [0] * 2 + [1] * 10]),
    ("qwen3", [[0] * 5 + [1] * 4 + [2] * 3, [0] * 2 + [1] * 10]),
    ("gemma2", [[0, 0, 1, 1], [0, 1, 1, 1]]),
])
def test_per_document_attention_equals_the_mask(family, docs, hf_folder, token_ids, monkeypatch):
    model = from_pretrained(hf_folder(family)).float()
    docs = torch.tensor(docs)
    token_ids = token_ids[:, :docs.shape[1]]
    calls = []
    monkeypatch.setattr(Attention, "attend_documents", _counting(Attention.attend_documents, calls))

    def run():
        model.zero_grad()
        out = model(token_ids, document_ids=docs)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    split_out, split_grads = run()
    assert calls, "the per-document path was not taken"
    monkeypatch.setattr(decoder, "document_lengths", lambda ids: None)  # force the mask
    mask_out, mask_grads = run()
    torch.testing.assert_close(split_out, mask_out, atol=1e-5, rtol=0)
    for a, b in zip(split_grads, mask_grads, strict=True):
        # Summed in another order; how far that moves a gradient depends on the CPU's kernels
        # (1.3e-5 seen on a gradient of 0.02 with AVX-512), so the bound scales with the gradient.
        torch.testing.assert_close(a, b, atol=1e-3 * float(b.abs().max()), rtol=1e-4)
