"""`tune run generate` as a user runs it: greedy output equal to transformers', sampling settings,
every folder a fine-tune leaves (merged, full, a run's final/, LoRA/DoRA and LLaMA-Adapter
folders on their base), and one-line errors."""

from __future__ import annotations

import re

import pytest
import torch

from support.recipes import tiny_model_folder
from tunelib.generation.prompt import conversation, encode_request

transformers = pytest.importorskip("transformers")

PROMPT = "Tell me a story about a cat."
STEPS = 8  # new tokens per comparison: enough to pass a few cache steps, cheap to recompute uncached


def generate(tune, folder, *overrides):
    """`tune run generate --config generation checkpoint_dir=FOLDER ...`, greedy, fp32 on CPU."""
    return tune("run", "generate", "--config", "generation", f"checkpoint_dir={folder}", "device=cpu", "dtype=fp32",
                "temperature=0", f"max_new_tokens={STEPS}", *overrides)


def tokenizer_of(folder):
    from tunelib.tokenizers import from_pretrained

    return from_pretrained(folder)


def greedy_reference(logits_of, ids: list[int], steps: int, stop: list[int]) -> list[int]:
    """Greedy decoding without a cache: the whole sequence through `logits_of` for each token."""
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(logits_of(torch.tensor([ids + out]))[0, -1].argmax())
            if token in stop:
                break
            out.append(token)
    return out


def answer(out: str) -> str:
    assert out.endswith("\n")
    return out[:-1]


@pytest.mark.parametrize("family", ["llama3_2", "qwen2_5", "gemma2"])
def test_greedy_output_equals_transformers_generate(tune, tmp_path, family):
    # qwen2_5 and gemma2 have sliding windows shorter than the prompt; gemma2 soft-caps.
    folder = tiny_model_folder(tmp_path, family)
    tokenizer = tokenizer_of(folder)
    ids = encode_request(tokenizer, conversation(PROMPT))  # the family's chat format
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        hf = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            do_sample=False, max_new_tokens=STEPS, eos_token_id=tokenizer.stop_tokens,
                            pad_token_id=tokenizer.stop_tokens[0])[0, len(ids):].tolist()
    hf = [t for t in hf if t not in tokenizer.stop_tokens]
    assert len(hf) >= 4  # a few tokens at least, or the comparison would prove little

    code, out, err = generate(tune, folder, f"prompt={PROMPT}")
    assert code == 0, err
    assert answer(out) == tokenizer.decode(hf, skip_special_tokens=True)
    assert re.search(rf"prompt: {len(ids)} tokens", err)
    assert f"{len(hf)} tokens in" in err


def test_chat_false_continues_plain_text(tune, trained):
    tokenizer = tokenizer_of(trained.base)
    ids = tokenizer.encode("Once upon a time", add_bos=True, add_eos=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(trained.base).eval()
    expected = greedy_reference(lambda x: model(x).logits, ids, STEPS, tokenizer.stop_tokens)
    code, out, err = generate(tune, trained.base, "chat=false", "prompt=Once upon a time")
    assert code == 0, err
    assert answer(out) == tokenizer.decode(expected, skip_special_tokens=True)


def test_system_message_and_earlier_turns_are_in_the_chat_format(tune, trained):
    tokenizer = tokenizer_of(trained.base)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    ids = encode_request(tokenizer, conversation("And now?", "Be brief.", messages))
    model = transformers.AutoModelForCausalLM.from_pretrained(trained.base).eval()
    expected = greedy_reference(lambda x: model(x).logits, ids, STEPS, tokenizer.stop_tokens)
    code, out, err = generate(tune, trained.base, "prompt=And now?", "system=Be brief.",
                              "messages=[{role: user, content: Hi}, {role: assistant, content: Hello!}]")
    assert code == 0, err
    assert f"prompt: {len(ids)} tokens" in err
    assert answer(out) == tokenizer.decode(expected, skip_special_tokens=True)


def test_a_seed_repeats_a_sampled_answer(tune, trained):
    sampled = ("temperature=1.5", "top_k=200", "top_p=0.99", "max_new_tokens=16")
    first = generate(tune, trained.base, f"prompt={PROMPT}", *sampled, "seed=3")
    again = generate(tune, trained.base, f"prompt={PROMPT}", *sampled, "seed=3")
    other = generate(tune, trained.base, f"prompt={PROMPT}", *sampled, "seed=4")
    assert first[0] == again[0] == other[0] == 0
    assert first[1] == again[1] != other[1]
    assert "seed 3" in first[2]
    greedy = generate(tune, trained.base, f"prompt={PROMPT}", "max_new_tokens=16")[1]
    assert first[1] != greedy
    # top_k=1 and a tiny top_p each leave only the most likely token: greedy, whatever the seed.
    assert generate(tune, trained.base, f"prompt={PROMPT}", "temperature=1.5", "top_k=1", "max_new_tokens=16",
                    "seed=5")[1] == greedy
    assert generate(tune, trained.base, f"prompt={PROMPT}", "temperature=1.5", "top_p=0.000001",
                    "max_new_tokens=16", "seed=5")[1] == greedy


def test_max_new_tokens_is_honoured(tune, trained):
    code, out, err = generate(tune, trained.base, f"prompt={PROMPT}", "max_new_tokens=3")
    assert code == 0, err
    assert "3 tokens in" in err and "ended by max_new_tokens" in err


def _reference_for(trained, which: str, ids: list[int], stop: list[int]):
    """(greedy tokens, logits) from an implementation other than `tune run generate`."""
    from support.models import load_hf_model

    if which in ("merged", "run folder", "full"):
        folder = {"merged": trained.lora / "merged", "run folder": trained.lora / "merged", "full": trained.full}[which]
        model = load_hf_model(folder)
        return greedy_reference(lambda x: model(x).logits, ids, STEPS, stop), model(torch.tensor([ids])).logits
    if which in ("lora", "dora"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_hf_model(trained.base), str(getattr(trained, which) / "adapter")).eval()
        return greedy_reference(lambda x: model(x).logits, ids, STEPS, stop), model(torch.tensor([ids])).logits
    # LLaMA-Adapter has no PEFT format: tunelib's own model, without a KV cache.
    import tunelib.checkpoint
    from tunelib.peft import load_llama_adapter

    model = load_llama_adapter(tunelib.checkpoint.from_pretrained(trained.base, dtype=torch.float32),
                               trained.adapter_v2).eval()
    return greedy_reference(model, ids, STEPS, stop), model(torch.tensor([ids]))


@pytest.mark.parametrize("which", ["merged", "run folder", "full", "lora", "dora", "adapter_v2"])
def test_every_fine_tune_output_generates_like_its_reference(tune, trained, which):
    where = {"merged": [f"checkpoint_dir={trained.lora / 'merged'}"],
             "run folder": [f"checkpoint_dir={trained.lora.parent}"],  # the run's output_dir: its final model
             "full": [f"checkpoint_dir={trained.full}"],
             "lora": [f"adapter_dir={trained.lora / 'adapter'}"],
             "dora": [f"adapter_dir={trained.dora}"],  # a run's final/ finds its adapter/
             "adapter_v2": [f"adapter_dir={trained.adapter_v2}"]}[which]
    tokenizer = tokenizer_of(trained.base)
    ids = encode_request(tokenizer, conversation(PROMPT))
    with torch.no_grad():
        expected, logits = _reference_for(trained, which, ids, tokenizer.stop_tokens)
        base = transformers.AutoModelForCausalLM.from_pretrained(trained.base).eval()(torch.tensor([ids])).logits
    assert (logits - base).abs().max() > 1e-3  # the fine-tune changed the model, so this test can fail
    code, out, err = generate(tune, trained.base, f"prompt={PROMPT}", *where)
    assert code == 0, err
    assert answer(out) == tokenizer.decode(expected, skip_special_tokens=True)


def test_the_llama_adapter_keeps_its_prompts_through_the_kv_cache(trained):
    """Greedy with the cache equals greedy without it, for a model whose attention has prompts."""
    from tunelib.generation import Generator, Sampling, load_model

    model = load_model(trained.base, adapter_dir=trained.adapter_v2, dtype="fp32", device="cpu").model
    prompt = [5, 17, 42, 9, 88, 300, 7]
    cached = list(Generator(model).stream(prompt, max_new_tokens=10, sampling=Sampling()))
    assert cached == greedy_reference(model, prompt, 10, [])


def test_a_lora_adapter_is_folded_for_generation_and_kept_for_merging(trained):
    from tunelib.generation import load_model
    from tunelib.peft import lora_modules

    folded = load_model(trained.base, adapter_dir=trained.dora, dtype="fp32", device="cpu").model
    kept = load_model(trained.base, adapter_dir=trained.dora, dtype="fp32", device="cpu", merge_adapter=False).model
    assert not lora_modules(folded) and lora_modules(kept)
    ids = torch.randint(0, 700, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(folded(ids), kept(ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (["checkpoint_dir={lora}/adapter", "prompt=Hi"], "is an adapter, not a model: pass the base model as checkpoint_dir"),
    (["checkpoint_dir={tmp}/missing", "prompt=Hi"], "does not exist"),
    (["adapter_dir={tmp}", "prompt=Hi"], "holds no adapter"),
    (["temperature=-1", "prompt=Hi"], "temperature=-1"),
    (["top_p=2", "prompt=Hi"], "top_p=2"),
    (["max_new_tokens=0", "prompt=Hi"], "max_new_tokens=0"),
    ([], "nothing to answer"),
    (["chat=false", "system=Be brief.", "prompt=Hi"], "need chat=true"),
    (["prompt=Hi", "temprature=0.5"], "did you mean 'temperature'"),
])
def test_bad_input_is_one_line_and_exit_2(tune, trained, tmp_path, overrides, message):
    overrides = [o.format(lora=trained.lora, tmp=tmp_path) for o in overrides]
    code, out, err = tune("run", "generate", "--config", "generation", f"checkpoint_dir={trained.base}",
                          "device=cpu", *overrides)
    assert code == 2
    assert err.startswith("tune: error: ") and err.count("\n") == 1 and message in err, err
    assert out == ""
