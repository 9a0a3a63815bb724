"""Generation with a KV cache, and packed documents, against plain forward passes."""

from __future__ import annotations

import pytest
import torch

from tunelib.checkpoint import from_pretrained
from tunelib.models.attention import build_mask

# Families whose attention differs: RoPE scaling, sliding windows (all layers, alternating,
# from a layer on), soft-capping, q/k norms, fused checkpoint projections, a RoPE base per layer type.
VARIED = ["llama3_1", "mistral", "qwen2_5", "gemma2", "gemma3", "qwen3", "phi3"]


@pytest.mark.parametrize("family", VARIED)
def test_cached_decoding_equals_full_forward(family, hf_folder, token_ids):
    model = from_pretrained(hf_folder(family))
    cache = model.new_cache(batch_size=2, max_len=12)
    with torch.no_grad():
        full = model(token_ids)
        steps = [model(token_ids[:, :5], cache=cache)]  # a prompt, then one token at a time
        steps += [model(token_ids[:, t:t + 1], cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == 12


def test_cache_refuses_more_tokens_than_it_holds(hf_folder, token_ids):
    model = from_pretrained(hf_folder("llama3"))
    cache = model.new_cache(batch_size=2, max_len=8)
    with torch.no_grad(), pytest.raises(ValueError, match="holds 8 tokens"):
        model(token_ids, cache=cache)


def packed(lengths: list[int], ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """document_ids and restarting position_ids (1, T) for documents of `lengths` laid end to end."""
    docs = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    assert docs.shape[1] == ids.shape[1]
    return docs, positions


@pytest.mark.parametrize("family", ["llama3", "mistral", "gemma2", "gemma3"])
def test_packed_documents_equal_separate_runs(family, hf_folder, token_ids):
    model = from_pretrained(hf_folder(family))
    ids = token_ids[:1]  # (1, 12): documents of 5, 4 and 3 tokens
    docs, positions = packed([5, 4, 3], ids)
    with torch.no_grad():
        together = model(ids, position_ids=positions, document_ids=docs)
        implied = model(ids, document_ids=docs)  # positions restart per document by default
        apart = torch.cat([model(ids[:, :5]), model(ids[:, 5:9]), model(ids[:, 9:])], dim=1)
        unmasked = model(ids, position_ids=positions)
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=0)
    torch.testing.assert_close(implied, apart, atol=1e-5, rtol=0)
    assert not torch.allclose(unmasked, apart, atol=1e-3)  # without the mask documents would leak


def test_packed_rows_of_a_batch_are_independent(hf_folder, token_ids):
    model = from_pretrained(hf_folder("qwen2"))
    docs = torch.tensor([[0] * 7 + [1] * 5, [0] * 3 + [1] * 9])
    with torch.no_grad():
        batch = model(token_ids, document_ids=docs)
        row1 = torch.cat([model(token_ids[1:, :3]), model(token_ids[1:, 3:])], dim=1)
    torch.testing.assert_close(batch[1:], row1, atol=1e-5, rtol=0)


def test_plain_causal_attention_keeps_the_fast_path():
    # No mask means SDPA runs with is_causal=True (flash / memory-efficient kernels).
    assert build_mask(12, 12, document_ids=None, window=None, device="cpu") is None
    assert build_mask(12, 12, document_ids=None, window=4096, device="cpu") is None  # window longer than keys
    assert build_mask(12, 12, document_ids=None, window=4, device="cpu") is not None
    assert build_mask(12, 12, document_ids=torch.zeros(1, 12), window=None, device="cpu") is not None
