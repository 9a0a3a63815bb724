"""The generation loop: feed the prompt once, then one token at a time through the KV cache.

    gen = Generator(model)
    for token in gen.stream(prompt_ids, max_new_tokens=256, stop_tokens=tok.stop_tokens,
                            sampling=Sampling(temperature=0.7, top_p=0.9)):
        ...

The cache is kept between calls. A chat renders the whole conversation again each turn; the
tokens it shares with what the cache already holds (the earlier turns) are not computed again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from tunelib.errors import DataError
from tunelib.generation.sampling import Sampling, sample

# The cache grows in steps of at least this many tokens, so a chat does not reallocate every turn.
_MIN_CACHE = 256


class Generator:
    """Generates from one model (batch size 1) with a KV cache kept between calls.

    `context` caps prompt plus answer (default: the model's max_position_embeddings).
    """

    def __init__(self, model, *, context: int | None = None):
        self.model = model
        self.context = context or model.config.max_position_embeddings
        self.cache = None
        self.cached: list[int] = []  # the tokens whose keys and values the cache holds, in order

    def budget(self, prompt_len: int, max_new_tokens: int) -> int:
        """How many tokens may follow a prompt of `prompt_len` (the context caps it).

        Raises:
            DataError: the prompt alone fills the context.
        """
        if prompt_len == 0:
            raise DataError("the prompt is empty; give some text (or a tokenizer that adds a BOS token)")
        if prompt_len >= self.context:
            raise DataError(f"the prompt has {prompt_len} tokens but the model's context holds {self.context}; "
                            "shorten it")
        return min(max_new_tokens, self.context - prompt_len)

    @torch.inference_mode()
    def stream(self, prompt: list[int], *, max_new_tokens: int, stop_tokens: Iterable[int] = (),
               sampling: Sampling = Sampling(), generator: torch.Generator | None = None) -> Iterator[int]:
        """Yield new tokens one by one until a stop token (not yielded) or the budget is spent.

        The cache then holds the prompt and every yielded token but the last: feeding the last
        one would cost a forward pass whose logits nobody reads, and the next call, whose prompt
        usually starts with this answer, feeds it anyway. Stopping early (breaking out of the
        loop) leaves the cache in the same state.
        """
        budget = self.budget(len(prompt), max_new_tokens)
        stop = set(stop_tokens)
        self._reserve(len(prompt) + budget)
        logits = self._feed(prompt)
        for step in range(budget):
            token = int(sample(logits[None], sampling, generator)[0])
            if token in stop:
                return
            yield token
            if step + 1 < budget:
                logits = self._step(token)

    def _feed(self, tokens: list[int]) -> torch.Tensor:
        """Bring the cache to exactly `tokens`; return the logits (vocab,) after the last one."""
        keep = _common_prefix(self.cached, tokens)
        keep = min(keep, len(tokens) - 1)  # at least one token must run, to give logits
        self.cache.length = keep  # rewinding is just forgetting: later writes overwrite the rest
        # If this forward is interrupted (Ctrl-C in a chat), some layers will have overwritten
        # the slots after `keep`: only the first `keep` tokens can be trusted then.
        self.cached = self.cached[:keep]
        new = torch.tensor([tokens[keep:]], device=self.cache.keys[0].device)  # (1, T)
        hidden = self.model.hidden(new, cache=self.cache)  # (1, T, hidden)
        self.cached = list(tokens)
        return self.model.logits(hidden[0, -1]).float()  # only the last position's logits are needed

    def _step(self, token: int) -> torch.Tensor:
        """Append one token to the cache; return the logits (vocab,) after it."""
        new = torch.tensor([[token]], device=self.cache.keys[0].device)  # (1, 1)
        hidden = self.model.hidden(new, cache=self.cache)  # (1, 1, hidden)
        self.cached.append(token)
        return self.model.logits(hidden[0, -1]).float()

    def _reserve(self, length: int) -> None:
        """Make sure the cache holds `length` tokens, keeping what it already has."""
        if self.cache is not None and self.cache.max_len >= length:
            return
        size = min(self.context, max(length, _MIN_CACHE, 2 * (self.cache.max_len if self.cache else 0)))
        new = self.model.new_cache(1, size)
        if self.cache is not None:
            n = self.cache.length
            for old_k, old_v, k, v in zip(self.cache.keys, self.cache.values, new.keys, new.values):
                k[:, :, :n] = old_k[:, :, :n]
                v[:, :, :n] = old_v[:, :, :n]
            new.length = n
        self.cache = new

    def reset(self) -> None:
        """Forget the cached tokens (the memory is kept for the next call)."""
        self.cached = []
        if self.cache is not None:
            self.cache.reset()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
