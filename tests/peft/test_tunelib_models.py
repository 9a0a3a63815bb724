"""The adapter transformations on tunelib's own decoder, loaded from a tiny Hugging Face folder.

The path a recipe takes: builder with adapter settings (meta device) -> streaming load with
the NF4 transform -> initialize_adapters -> train -> PEFT folder and merged weights, each
checked against transformers and PEFT.
"""

from __future__ import annotations

import peft
import pytest
import torch
import transformers

from tunelib.peft import (
    adapter_params,
    apply_peft,
    initialize_adapters,
    is_adapter_key,
    load_peft_adapter,
    merged_state_dict,
    nf4_transform,
    save_peft_adapter,
    set_trainable,
)
from tunelib.quantization import is_nf4

models = pytest.importorskip("tunelib.models")
checkpoint = pytest.importorskip("tunelib.checkpoint")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def _hf_folder(tiny, tmp_path, hidden=64, tie=False):
    folder = tmp_path / "base"
    tiny.llama(hidden, tie=tie).save_pretrained(folder)
    return folder


def _ours(folder, **settings):
    model = apply_peft(models.from_hf_config(folder, **settings))
    checkpoint.load_hf_weights(model, folder, dtype=torch.float32, transform=nf4_transform(model),
                               ignore_missing=is_adapter_key)
    torch.manual_seed(0)
    initialize_adapters(model, "cpu", torch.float32)
    return model.eval()


def _hf(folder, **config_updates):
    return transformers.LlamaForCausalLM.from_pretrained(folder, **config_updates).eval()


SETTINGS = {"lora_attn_modules": ["q_proj", "output_proj"], "apply_lora_to_mlp": True, "apply_lora_to_output": True,
            "apply_lora_to_embeddings": True, "lora_rank": 4, "lora_alpha": 8.0}


@pytest.mark.parametrize("method", ["lora", "dora", "rslora"])
def test_tunelib_model_adapters_round_trip_through_peft_and_merge(tiny, tokens, tmp_path, method):
    folder = _hf_folder(tiny, tmp_path)
    settings = {**SETTINGS, "use_dora": method == "dora", "use_rslora": method == "rslora"}
    model = _ours(folder, **settings)
    torch.testing.assert_close(model(tokens), _hf(folder)(tokens).logits, rtol=1e-5, atol=1e-5)  # step 0
    tiny.randomize(model)
    logits = model(tokens)

    save_peft_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(folder))
    with_peft = peft.PeftModel.from_pretrained(_hf(folder), tmp_path / "adapter").eval()
    torch.testing.assert_close(with_peft(tokens).logits, logits, rtol=1e-5, atol=1e-5)

    weights, config_updates = merged_state_dict(model)
    assert config_updates == {}
    merged = _hf(folder)
    merged.load_state_dict(weights)
    torch.testing.assert_close(merged(tokens).logits, logits, rtol=1e-5, atol=1e-5)


def test_a_peft_adapter_loads_into_a_tunelib_model(tiny, tokens, tmp_path):
    folder = _hf_folder(tiny, tmp_path)
    config = peft.LoraConfig(task_type="CAUSAL_LM", target_modules=["k_proj", "down_proj", "embed_tokens"],
                             r=4, use_dora=True)
    theirs = peft.get_peft_model(_hf(folder), config).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape) * 0.1 + ("magnitude" in name))
    theirs.save_pretrained(tmp_path / "adapter")
    model = load_peft_adapter(_ours(folder), tmp_path / "adapter")
    torch.testing.assert_close(model(tokens), theirs(tokens).logits, rtol=1e-5, atol=1e-5)


def test_lora_on_the_tied_output_of_a_tunelib_model_merges_untied(tiny, tokens, tmp_path):
    folder = _hf_folder(tiny, tmp_path, tie=True)
    model = _ours(folder, lora_attn_modules=["v_proj"], apply_lora_to_output=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tiny.randomize(model)
    weights, config_updates = merged_state_dict(model)
    assert config_updates == {"tie_word_embeddings": False}
    merged = _hf(folder, tie_word_embeddings=False)
    merged.load_state_dict(weights)
    torch.testing.assert_close(merged(tokens).logits, model(tokens), rtol=1e-5, atol=1e-5)


def test_qlora_through_the_streaming_loader(tiny, tokens, tmp_path):
    folder = _hf_folder(tiny, tmp_path, hidden=128)
    model = _ours(folder, lora_attn_modules=["q_proj", "v_proj"], quantize_base=True, use_dora=True)
    layer = model.model.layers[0]
    assert is_nf4(layer.self_attn.q_proj.weight) and is_nf4(layer.mlp.gate_proj.weight)
    assert not is_nf4(model.lm_head.weight)
    assert not layer.self_attn.q_proj.weight.requires_grad and not layer.mlp.gate_proj.weight.requires_grad
    r, hidden = 8, 128
    assert set_trainable(model) == 2 * 2 * (r * (hidden + hidden) + hidden)  # layers × (q, v) × (A, B, m)
    # Step 0 is the base model with dequantised weights.
    dequantized = _hf(folder)
    dequantized.load_state_dict(merged_state_dict(model)[0])
    torch.testing.assert_close(model(tokens), dequantized(tokens).logits, rtol=1e-5, atol=1e-5)
    model.train()
    model(tokens).square().mean().backward()
    assert all(p.grad is not None for p in adapter_params(model).values())
    assert all(p.grad is None for n, p in model.named_parameters() if not is_adapter_key(n))
