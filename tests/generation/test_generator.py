"""The cached generation loop against plain full forwards, cache reuse between calls, limits."""

from __future__ import annotations

import pytest
import torch

from tunelib.errors import DataError
from tunelib.generation import Generator, Sampling


def uncached_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding the slow way: the whole sequence through the model for every token."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def greedy(gen: Generator, prompt: list[int], steps: int, stop=()) -> list[int]:
    return list(gen.stream(prompt, max_new_tokens=steps, stop_tokens=stop, sampling=Sampling(temperature=0)))


# llama3_2: tied embeddings and llama3 RoPE; gemma2: soft-caps and a sliding window of 4;
# qwen2_5: a sliding window on one layer only. 12 new tokens pass every window.
@pytest.mark.parametrize("family", ["llama3_2", "gemma2", "qwen2_5"])
def test_greedy_with_the_cache_equals_argmax_of_full_forwards(tiny_models, family):
    model = tiny_models(family)
    prompt = [5, 17, 42, 9, 88]
    assert greedy(Generator(model), prompt, 12) == uncached_greedy(model, prompt, 12)


def test_a_stop_token_ends_generation_and_is_not_returned(tiny_models):
    model = tiny_models()
    prompt = [3, 1, 4, 1, 5]
    full = greedy(Generator(model), prompt, 8)
    assert greedy(Generator(model), prompt, 8, stop=[full[3]]) == full[:full.index(full[3])]


def test_a_second_call_reuses_the_shared_prefix(tiny_models, monkeypatch):
    model = tiny_models()
    gen = Generator(model)
    first = [7, 7, 2, 30, 11]
    answer = greedy(gen, first, 6)
    follow_up = first + answer + [60, 61]
    fed = []
    hidden = model.hidden
    monkeypatch.setattr(model, "hidden", lambda ids, **kw: fed.append(ids.shape[1]) or hidden(ids, **kw))
    again = greedy(gen, follow_up, 5)
    # The cache held `first` and all of `answer` but the last token, which was never fed back.
    assert fed[0] == 3 and all(n == 1 for n in fed[1:])
    monkeypatch.undo()
    assert again == greedy(Generator(model), follow_up, 5)


def test_the_cache_grows_and_keeps_what_it_holds(tiny_models):
    model = tiny_models()
    gen = Generator(model, context=1024)
    prompt = list(range(10, 40))
    answer = greedy(gen, prompt, 10)
    assert gen.cache.max_len == 256
    long_prompt = prompt + answer + [3 + i % 100 for i in range(300)]  # the tiny vocabulary has 128 tokens
    again = greedy(gen, long_prompt, 4)
    assert gen.cache.max_len >= len(long_prompt) + 4
    assert again == greedy(Generator(model, context=1024), long_prompt, 4)


def test_the_context_caps_prompt_and_answer(tiny_models):
    gen = Generator(tiny_models(), context=20)
    assert len(greedy(gen, list(range(1, 16)), 100)) <= 5
    with pytest.raises(DataError, match="context holds 20"):
        greedy(gen, list(range(1, 21)), 1)
    with pytest.raises(DataError, match="empty"):
        greedy(gen, [], 1)
