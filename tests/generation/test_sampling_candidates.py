"""Top-k and top-p among a few candidates: the same distribution as masking and sorting the whole
vocabulary (the sampler before this change, kept below as the reference), and no sort of the
vocabulary when the nucleus is small."""

from __future__ import annotations

import pytest
import torch

from tunelib.generation import Sampling, sample
from tunelib.generation.sampling import candidates

VOCAB = 5000


def reference_probs(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """(B, vocab) probabilities the way tunelib sampled before: mask the logits below the k-th,
    softmax over the vocabulary, sort it all and zero what lies beyond top_p's mass."""
    logits = logits.float() / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p is not None and sampling.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= sampling.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return probs


def candidate_probs(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """`candidates` spread back over the vocabulary and normalized: (B, vocab)."""
    probs, ids = candidates(logits, sampling)
    if ids is not None:
        probs = torch.zeros(logits.shape).scatter(-1, ids, probs)
    return probs / probs.sum(-1, keepdim=True)


def model_like_logits(rows: int, spread: float, seed: int = 0) -> torch.Tensor:
    """(rows, VOCAB) logits shaped like a language model's: a few likely tokens, a long tail.
    A larger `spread` makes the distribution more peaked."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, VOCAB + 1).float()
    logits = -spread * ranks.log() + 0.3 * torch.randn(rows, VOCAB, generator=g)  # Zipf-like
    return logits[:, torch.randperm(VOCAB, generator=g)]  # likely tokens anywhere in the vocabulary


# Peaked logits put top_p=0.9's nucleus within the first 64 candidates, top_p=0.99's within 512,
# top_p=0.999's beyond (the vocabulary is sorted then).
SETTINGS = [Sampling(temperature=0.7, top_k=40), Sampling(temperature=0.7, top_p=0.9),
            Sampling(temperature=1.0, top_p=0.99), Sampling(temperature=1.3, top_k=200, top_p=0.8),
            Sampling(temperature=1.0, top_p=0.999),
            Sampling(temperature=1.0, top_k=VOCAB - 1), Sampling(temperature=0.5)]


@pytest.mark.parametrize("sampling", SETTINGS, ids=repr)
@pytest.mark.parametrize("spread", [2.0, 0.5, 0.0], ids=["peaked", "wide", "flat"])  # flat: random logits only
def test_candidates_give_the_full_vocabulary_distribution(sampling, spread):
    logits = model_like_logits(3, spread)
    expected = reference_probs(logits, sampling)
    expected = expected / expected.sum(-1, keepdim=True)
    got = candidate_probs(logits, sampling)
    assert torch.equal(got > 0, expected > 0)  # the very same tokens can be drawn
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-9)


def test_every_token_tied_at_the_kth_logit_is_kept_as_transformers_does():
    logits = torch.tensor([[4.0, 1.0, 3.0, 3.0, 3.0, 0.5]])  # k=2: 4.0, then three tied at 3.0
    sampling = Sampling(temperature=1.0, top_k=2)
    torch.testing.assert_close(candidate_probs(logits, sampling), reference_probs(logits, sampling))
    assert (candidate_probs(logits, sampling) > 0).sum() == 4


def test_draws_follow_the_candidate_distribution():
    logits = model_like_logits(1, 1.5, seed=4)[:, :50]  # a small vocabulary, so frequencies converge fast
    sampling = Sampling(temperature=1.0, top_k=20, top_p=0.9)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, sampling, gen) for _ in range(6000)]).flatten()
    freq = torch.bincount(draws, minlength=50).float() / len(draws)
    expected = reference_probs(logits, sampling)[0]
    expected = expected / expected.sum()
    assert set(draws.tolist()) <= set(expected.nonzero().flatten().tolist())
    assert (freq - expected).abs().max() < 0.02


def test_a_small_nucleus_is_found_without_sorting_the_vocabulary(monkeypatch):
    sorts = []
    original = torch.Tensor.sort
    monkeypatch.setattr(torch.Tensor, "sort",
                        lambda self, *a, **k: sorts.append(self.shape[-1]) or original(self, *a, **k))
    peaked = model_like_logits(2, 2.0)
    for sampling in (Sampling(temperature=0.7, top_p=0.9), Sampling(temperature=1.0, top_p=0.99),
                     Sampling(temperature=0.7, top_k=50, top_p=0.9)):
        sample(peaked, sampling, torch.Generator().manual_seed(0))
    assert sorts == []
    # Random logits spread the nucleus over most of the vocabulary: then it is sorted.
    sample(model_like_logits(2, 0.0), Sampling(temperature=1.0, top_p=0.9), torch.Generator().manual_seed(0))
    assert sorts == [VOCAB]
