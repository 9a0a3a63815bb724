"""Sampling: greedy is argmax, top-k and top-p keep the right tokens, a seed repeats a draw."""

from __future__ import annotations

import pytest
import torch

from tunelib.errors import ConfigError
from tunelib.generation import Sampling, sample


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor([probs]).log()  # (1, vocab)


def draws(logits: torch.Tensor, sampling: Sampling, n: int = 2000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.stack([sample(logits, sampling, gen) for _ in range(n)]).flatten()


def test_greedy_is_argmax_per_row():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample(logits, Sampling(temperature=0)), logits.argmax(-1))


def test_top_k_keeps_only_the_k_most_likely():
    tokens = draws(logits_of([0.1, 0.4, 0.2, 0.3]), Sampling(temperature=1.0, top_k=2))
    assert set(tokens.tolist()) == {1, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
    # Sorted: 0.4 (token 1), 0.3 (token 3), 0.2, 0.1. Mass 0.4 < 0.65, so token 3 is needed too.
    tokens = draws(logits_of([0.1, 0.4, 0.2, 0.3]), Sampling(temperature=1.0, top_p=0.65))
    assert set(tokens.tolist()) == {1, 3}
    only_top = draws(logits_of([0.1, 0.4, 0.2, 0.3]), Sampling(temperature=1.0, top_p=0.01))
    assert set(only_top.tolist()) == {1}


def test_temperature_one_follows_the_distribution():
    tokens = draws(logits_of([0.1, 0.6, 0.3]), Sampling(temperature=1.0), n=4000)
    freq = torch.bincount(tokens, minlength=3).float() / len(tokens)
    assert torch.allclose(freq, torch.tensor([0.1, 0.6, 0.3]), atol=0.03)


def test_a_seed_repeats_the_draw():
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(2))
    assert torch.equal(draws(logits, Sampling(temperature=1.0), 50), draws(logits, Sampling(temperature=1.0), 50))


@pytest.mark.parametrize("kwargs, word", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 1.0, "top_k": 0}, "top_k"),
    ({"temperature": 1.0, "top_p": 1.5}, "top_p"),
    ({"temperature": 1.0, "top_p": 0}, "top_p"),
])
def test_bad_settings_are_refused(kwargs, word):
    with pytest.raises(ConfigError, match=word):
        Sampling(**kwargs)
