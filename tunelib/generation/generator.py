"""The generation loop: feed the prompt once, then one token at a time through the KV cache.

    gen = Generator(model)
    for token in gen.stream(prompt_ids, max_new_tokens=256, stop_tokens=tok.stop_tokens,
                            sampling=Sampling(temperature=0.7, top_p=0.9)):
        ...

The cache is kept between calls. A chat renders the whole conversation again each turn; the
tokens it shares with what the cache already holds (the earlier turns) are not computed again.

`Generator(model, compile=True)` runs on a static cache with the one-token step compiled
(`tunelib.generation.static`); the default runs the model eagerly on its own KV cache, whose
one-token steps attend to exactly the tokens stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from tunelib.errors import DataError
from tunelib.generation.sampling import Sampling, sample
from tunelib.generation.static import StaticRun

# The cache holds a power of two of at least this many tokens: a chat does not reallocate every
# turn, and a compiled step meets few cache sizes (each one is compiled once).
_MIN_CACHE = 256


class Generator:
    """Generates from one model (batch size 1) with a KV cache kept between calls.

    `context` caps prompt plus answer (default: the model's max_position_embeddings).
    `compile=True` compiles the one-token step (fixed shapes, static cache): the first answer
    waits for the compile, and a cache that grows past a size not seen before compiles again.
    """

    def __init__(self, model, *, context: int | None = None, compile: bool = False):
        self.model = model
        self.context = context or model.config.max_position_embeddings
        self.compile = compile
        self.run: CacheRun | StaticRun | None = None  # the model over its cache: run(ids, start) -> logits
        self.cached: list[int] = []  # the tokens whose keys and values the cache holds, in order

    @property
    def cache(self):
        """The KV cache (None before the first call); `max_len` tokens fit in it."""
        return self.run.cache if self.run is not None else None

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
        # Rewinding is just forgetting: later writes overwrite the rest. If this forward is
        # interrupted (Ctrl-C in a chat), some layers will have overwritten the slots after
        # `keep`: only the first `keep` tokens can be trusted then.
        self.cached = self.cached[:keep]
        logits = self.run(torch.tensor([tokens[keep:]], device=self.run.device), keep)  # (1, T) in
        self.cached = list(tokens)
        return logits

    def _step(self, token: int) -> torch.Tensor:
        """Append one token to the cache; return the logits (vocab,) after it."""
        logits = self.run(torch.tensor([[token]], device=self.run.device), len(self.cached))  # (1, 1) in
        self.cached.append(token)
        return logits

    def _reserve(self, length: int) -> None:
        """Make sure the cache holds `length` tokens, keeping what it already has."""
        if self.run is not None and self.run.max_len >= length:
            return
        size = min(self.context, max(_MIN_CACHE, 1 << (length - 1).bit_length()))  # a power of two
        new = StaticRun(self.model, size, compile=True) if self.compile else CacheRun(self.model, size)
        if self.run is not None:
            _copy_prefix(self.run.cache, new.cache, len(self.cached))
        self.run = new

    def reset(self) -> None:
        """Forget the cached tokens (the memory is kept for the next call)."""
        self.cached = []


class CacheRun:
    """The model run eagerly on its own `KVCache` of `max_len` tokens: each forward attends to
    exactly the tokens stored before it (no mask for a single token). Same call as `StaticRun`."""

    def __init__(self, model, max_len: int):
        self.model = model
        self.cache = model.new_cache(1, max_len)
        self.device = self.cache.keys[0].device
        self.max_len = max_len

    def __call__(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Logits (vocab,) float after the last of `ids` (1, T), whose tokens go at start..start+T-1."""
        self.cache.length = start
        hidden = self.model.hidden(ids, cache=self.cache)  # (1, T, hidden)
        return self.model.logits(hidden[0, -1]).float()  # only the last position's logits are needed


def _copy_prefix(old, new, length: int) -> None:
    """The first `length` tokens' keys and values of cache `old` into the larger cache `new`."""
    for old_t, new_t in zip(old.keys + old.values, new.keys + new.values):  # (1, KV, max_len, D) each
        new_t[:, :, :length] = old_t[:, :, :length]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
