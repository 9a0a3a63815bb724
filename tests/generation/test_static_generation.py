"""The static KV cache (fixed-size buffers, a mask over the slots) and the compiled one-token step:
the same greedy tokens and logits as the model's own cache, full forwards and transformers'
`generate`; prefix reuse, rewinding and growth in a chat; `compile=true` from the command line."""

from __future__ import annotations

import pytest
import torch

from tunelib.generation import Generator, Sampling
from tunelib.generation import static as static_module
from tunelib.generation.static import StaticRun

transformers = pytest.importorskip("transformers")

PROMPT = [5, 17, 42, 9, 88]


@pytest.fixture
def eager_static(monkeypatch):
    """`Generator(model, compile=True)` on the static cache, but without compiling: the fast way to
    test what the compiled step runs (the compiled graph itself is tested below, marked slow)."""
    monkeypatch.setattr(static_module, "_compiled", lambda forward, device: forward)


def greedy(gen: Generator, prompt: list[int], steps: int) -> list[int]:
    return list(gen.stream(prompt, max_new_tokens=steps, sampling=Sampling(temperature=0)))


def static_logits(model, ids: list[int], prompt_len: int) -> torch.Tensor:
    """Logits (len(ids) - prompt_len + 1, vocab): after the prompt as one forward, then one token at a time."""
    run = StaticRun(model, 64)
    with torch.inference_mode():
        rows = [run(torch.tensor([ids[:prompt_len]]), 0)]
        rows += [run(torch.tensor([[token]]), i) for i, token in enumerate(ids[prompt_len:], start=prompt_len)]
    return torch.stack(rows)


# llama3_2: tied embeddings, llama3 RoPE; gemma2: soft-capping, a sliding window of 4, scaled
# embeddings; qwen2_5: a window on one layer only. 12 new tokens pass every window.
@pytest.mark.parametrize("family", ["llama3_2", "gemma2", "gemma3", "qwen2_5"])
def test_static_cache_gives_full_forward_logits_and_transformers_greedy_tokens(hf_folder, family, eager_static):
    from support.models import load_hf_model
    from tunelib.checkpoint import from_pretrained

    model = from_pretrained(hf_folder(family), dtype="float32")
    hf = load_hf_model(hf_folder(family))
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        expected = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                               min_new_tokens=12, eos_token_id=None, pad_token_id=0)[0, len(PROMPT):].tolist()
    tokens = greedy(Generator(model, compile=True), PROMPT, 12)
    assert tokens == expected == greedy(Generator(model), PROMPT, 12)
    sequence = PROMPT + tokens
    with torch.no_grad():
        full = model(torch.tensor([sequence]))[0, len(PROMPT) - 1:].float()  # (13, vocab)
    torch.testing.assert_close(static_logits(model, sequence, len(PROMPT)), full, atol=2e-5, rtol=1e-5)


def test_the_generator_uses_the_static_cache_when_compiling(hf_folder, eager_static):
    from tunelib.checkpoint import from_pretrained

    model = from_pretrained(hf_folder("llama3_2"), dtype="float32")
    compiled, plain = Generator(model, compile=True), Generator(model)
    greedy(compiled, PROMPT, 3)
    greedy(plain, PROMPT, 3)
    assert isinstance(compiled.run, StaticRun) and not isinstance(plain.run, StaticRun)
    assert compiled.cache.keys[0].shape[2] == compiled.cache.max_len == 256  # (1, KV, slots, D): fixed


def test_a_chat_reuses_rewinds_and_grows_the_static_cache(hf_folder, eager_static, monkeypatch):
    from tunelib.checkpoint import from_pretrained

    model = from_pretrained(hf_folder("llama3_2"), dtype="float32")
    gen = Generator(model, context=1024, compile=True)
    first = greedy(gen, PROMPT, 6)
    # The next turn shares the prompt and the answer but the last token: only the rest is fed.
    lengths = []
    call = StaticRun.__call__
    monkeypatch.setattr(StaticRun, "__call__", lambda self, ids, start: lengths.append(ids.shape[1]) or
                        call(self, ids, start))
    follow_up = PROMPT + first + [60, 61]
    assert greedy(gen, follow_up, 5) == greedy(Generator(model), follow_up, 5)
    assert lengths[0] == 3 and set(lengths[1:]) == {1}
    # A prompt that leaves the cached one early: the slots after the split hold the old
    # conversation's keys until overwritten, and the mask must hide them.
    edited = PROMPT[:2] + [7, 7]
    assert greedy(gen, edited, 8) == greedy(Generator(model), edited, 8)
    # Longer than the 256 slots: the cache grows to the next power of two and keeps its tokens.
    long_prompt = edited + [3 + i % 100 for i in range(300)]
    assert greedy(gen, long_prompt, 4) == greedy(Generator(model, context=1024), long_prompt, 4)
    assert gen.cache.max_len == 512


def test_llama_adapter_prompts_work_on_the_static_cache(hf_folder, eager_static):
    from tunelib.checkpoint import from_pretrained
    from tunelib.peft.llama_adapter import LlamaAdapterSpec, add_llama_adapter

    model = from_pretrained(hf_folder("llama3_2"), dtype="float32")
    add_llama_adapter(model, LlamaAdapterSpec("v1", prompt_length=3, start_layer=1))
    with torch.no_grad():
        model.model.layers[1].self_attn.adapter_gate.fill_(0.5)  # 0 at init would hide the prompt
    model.eval()
    sequence = PROMPT + greedy(Generator(model), PROMPT, 8)
    assert greedy(Generator(model, compile=True), PROMPT, 8) == sequence[len(PROMPT):]
    with torch.no_grad():
        full = model(torch.tensor([sequence]))[0, len(PROMPT) - 1:].float()
    torch.testing.assert_close(static_logits(model, sequence, len(PROMPT)), full, atol=2e-5, rtol=1e-5)


@pytest.mark.slow  # torch.compile of a two-layer model: 10-40 s on two CPU cores
def test_the_compiled_step_gives_eager_tokens_in_one_graph(hf_folder):
    from torch._dynamo.utils import counters

    from tunelib.checkpoint import from_pretrained

    model = from_pretrained(hf_folder("llama3_2"), dtype="float32")
    counters.clear()
    compiled = Generator(model, compile=True)
    assert greedy(compiled, PROMPT, 12) == greedy(Generator(model), PROMPT, 12)
    sampled = Sampling(temperature=1.0, top_p=0.95)
    draws = [list(gen.stream(PROMPT, max_new_tokens=12, sampling=sampled, generator=torch.Generator().manual_seed(3)))
             for gen in (compiled, Generator(model))]
    assert draws[0] == draws[1]
    assert greedy(Generator(model, compile=True), PROMPT + [3], 4) == greedy(Generator(model), PROMPT + [3], 4)
    # Every step of both answers and of a second generator ran the one graph: no break, no recompile.
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


@pytest.mark.slow  # compiles, like the test above
def test_tune_run_generate_with_compile_true_answers_as_without(tune, tmp_path):
    from support.recipes import tiny_model_folder

    folder = tiny_model_folder(tmp_path, "llama3_2")
    common = ("run", "generate", "--config", "generation", f"checkpoint_dir={folder}", "device=cpu", "dtype=fp32",
              "temperature=0", "max_new_tokens=10", "prompt=Tell me a story about a cat.")
    plain, compiled = tune(*common), tune(*common, "compile=true")
    assert plain[0] == compiled[0] == 0, compiled[2]
    assert compiled[1] == plain[1] and len(plain[1]) > 1
    assert "compile=true: the first token waits for torch.compile" in compiled[2]
