"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelib.errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. `temperature=0` is greedy (argmax); top_k and top_p then do nothing.

    top_k keeps the k most likely tokens, top_p the smallest set of most likely tokens whose
    probability reaches p; both apply after the temperature, top_k first (as transformers does).
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature!r}; use 0 (greedy) or a positive number such as 0.7")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1):
            raise ConfigError(f"top_k={self.top_k!r}; use a positive integer, or null to keep every token")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ConfigError(f"top_p={self.top_p!r}; use a number in (0, 1], or null to keep every token")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# The nucleus is first looked for among this many most likely tokens, then 8 times as many, and
# so on; only a nucleus wider than that sorts the whole vocabulary. A trained model's nucleus is
# usually a few dozen tokens.
_FIRST_CANDIDATES = 64


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from logits (B, vocab).

    Top-k and top-p draw among a few candidates (see `candidates`) instead of the whole
    vocabulary; the distribution is the same as masking the vocabulary's logits.
    """
    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs, ids = candidates(logits, sampling)
    choice = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
    return (choice if ids is None else ids.gather(-1, choice)).squeeze(-1)


def candidates(logits: torch.Tensor, sampling: Sampling) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The tokens a draw may pick and their probabilities, for a non-greedy `sampling`.

    Returns (probs (B, m), ids (B, m)): the vocabulary ids of m candidates, most likely first,
    and each one's probability after temperature, top-k and top-p (0 for a candidate top-p
    drops; unnormalized when top-p drops any). Without top-k and top-p: (probs (B, vocab), None).

    Top-k takes the k largest logits with `topk` (a tie at the k-th keeps every tied token, as
    transformers does: then the vocabulary is sorted). Top-p without top-k takes the 64 most
    likely tokens, then 512, 4096, ... (up to an eighth of the vocabulary) until they hold the
    nucleus, and sorts the whole vocabulary only for a nucleus wider than that.
    """
    logits = logits.float() / sampling.temperature
    vocab = logits.shape[-1]
    top_k = sampling.top_k if sampling.top_k is not None and sampling.top_k < vocab else None
    top_p = sampling.top_p if sampling.top_p is not None and sampling.top_p < 1 else None
    if top_k is not None:
        values, ids = logits.topk(top_k + 1, dim=-1)  # (B, k + 1), descending
        if (values[:, -1] < values[:, -2]).all():  # exactly k tokens reach the k-th logit
            probs, ids = torch.softmax(values[:, :-1], dim=-1), ids[:, :-1]
        else:
            kept = logits.masked_fill(logits < values[:, -2:-1], float("-inf"))  # (B, vocab)
            probs, ids = torch.softmax(kept, dim=-1).sort(dim=-1, descending=True)
    elif top_p is not None:
        probs, ids = _holding(torch.softmax(logits, dim=-1), top_p)
    else:
        return torch.softmax(logits, dim=-1), None
    if top_p is not None:
        probs = probs.masked_fill(_mass_before(probs) >= top_p, 0.0)
    return probs, ids


def _holding(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely tokens (probs (B, m), ids (B, m), descending), enough that the nucleus is among them."""
    vocab, m = probs.shape[-1], _FIRST_CANDIDATES
    # No token holds more than the most likely one, so the nucleus has at least top_p / that many:
    # fewer candidates cannot hold it (a random model's flat logits go straight to the sort).
    fewest = top_p / probs.amax(dim=-1).min().item()
    while m * 8 <= vocab:
        if m > fewest:
            values, ids = probs.topk(m, dim=-1)
            if (_mass_before(values)[:, -1] >= top_p).all():  # even the last candidate falls outside the nucleus
                return values, ids
        m *= 8
    return probs.sort(dim=-1, descending=True)


def _mass_before(sorted_probs: torch.Tensor) -> torch.Tensor:
    """Probability of the tokens ranked above each one (B, m); 0 for the first, so top-p keeps it always."""
    return sorted_probs.cumsum(dim=-1) - sorted_probs
