"""Generate one answer and write it to the terminal as it comes: shared by `generate` and `tune chat`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from tunelib.generation.generator import Generator
from tunelib.generation.sampling import Sampling
from tunelib.generation.stream import TextStream


@dataclass
class Reply:
    """What one call produced."""

    text: str
    tokens: list[int]
    seconds: float
    stopped: str  # "stop token", "max_new_tokens", "context" or "interrupted"

    def stats(self) -> str:
        rate = len(self.tokens) / self.seconds if self.seconds > 0 else 0.0
        return f"{len(self.tokens)} tokens in {self.seconds:.2f} s ({rate:.1f} tokens/s), ended by {self.stopped}"


def stream_reply(generator: Generator, tokenizer, prompt: list[int], *, max_new_tokens: int, sampling: Sampling,
                 rng: torch.Generator | None, write: Callable[[str], None]) -> Reply:
    """Generate after `prompt`, passing each new piece of text to `write` at once.

    Ctrl-C (KeyboardInterrupt) ends the answer early and returns what was generated so far.
    """
    text = TextStream(tokenizer)
    budget = generator.budget(len(prompt), max_new_tokens)
    start, stopped = time.perf_counter(), "stop token"
    try:
        for token in generator.stream(prompt, max_new_tokens=max_new_tokens, stop_tokens=tokenizer.stop_tokens,
                                      sampling=sampling, generator=rng):
            write(text.push(token))
    except KeyboardInterrupt:
        stopped = "interrupted"
    else:
        if len(text.tokens) == budget:  # no stop token came before the budget ran out
            stopped = "max_new_tokens" if budget == max_new_tokens else "context"
    write(text.flush())
    return Reply(text.text, text.tokens, time.perf_counter() - start, stopped)


def seeded_rng(seed: int | None, device: torch.device) -> tuple[torch.Generator, int]:
    """A random generator on `device` and its seed (a fresh one when `seed` is None, printed so a run can be repeated)."""
    import random

    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    return torch.Generator(device=device).manual_seed(seed), seed
