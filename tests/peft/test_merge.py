"""Merged weights: a plain transformers model loading them gives the adapter model's logits."""

from __future__ import annotations

import pytest
import torch
import transformers

from tunelib.peft import apply_peft, merged_state_dict

ALL_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]

CASES = {
    "lora": {"lora_attn_modules": ["q_proj", "v_proj"], "apply_lora_to_mlp": True},
    "dora": {"lora_attn_modules": ALL_ATTENTION, "apply_lora_to_mlp": True, "use_dora": True},
    "output_embeddings_dora": {"apply_lora_to_output": True, "apply_lora_to_embeddings": True, "use_dora": True},
    "rslora_output": {"lora_attn_modules": ["k_proj"], "apply_lora_to_output": True, "use_rslora": True},
}


def _fresh_model(config, state_dict):
    model = transformers.LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"} and (not missing or config.tie_word_embeddings)
    model.tie_weights()
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_merged_weights_give_the_adapter_logits(tiny, tokens, case):
    model = apply_peft(tiny.llama(), **CASES[case])
    tiny.randomize(model)
    weights, config_updates = merged_state_dict(model)
    assert config_updates == {}
    assert not any("lora_" in k for k in weights)
    assert set(weights) == set(tiny.llama().state_dict())
    merged = _fresh_model(tiny.config(), weights)
    torch.testing.assert_close(merged(tokens).logits, model(tokens).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("settings", [{"apply_lora_to_output": True}, {"apply_lora_to_embeddings": True}])
def test_an_adapter_on_a_tied_embedding_unties_it(tiny, tokens, settings):
    model = apply_peft(tiny.llama(tie=True), lora_attn_modules=["q_proj"], **settings)
    tiny.randomize(model)
    weights, config_updates = merged_state_dict(model)
    assert config_updates == {"tie_word_embeddings": False}
    assert not torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])
    merged = _fresh_model(tiny.config(tie=False), weights)
    torch.testing.assert_close(merged(tokens).logits, model(tokens).logits, rtol=1e-5, atol=1e-5)
    # Loaded as tied (the config left unchanged), the output layer would be wrong.
    wrong = _fresh_model(tiny.config(tie=True), weights)
    assert (wrong(tokens).logits - model(tokens).logits).abs().max() > 1e-3


def test_a_tied_model_without_adapters_on_the_tie_stays_tied(tiny, tokens):
    model = apply_peft(tiny.llama(tie=True), lora_attn_modules=["v_proj"])
    tiny.randomize(model)
    weights, config_updates = merged_state_dict(model)
    assert config_updates == {} and "lm_head.weight" not in weights
    merged = _fresh_model(tiny.config(tie=True), weights)
    torch.testing.assert_close(merged(tokens).logits, model(tokens).logits, rtol=1e-5, atol=1e-5)


def test_bf16_merge_is_computed_in_fp32_and_cast_back(tiny):
    model = apply_peft(tiny.llama().to(torch.bfloat16), lora_attn_modules=["q_proj"], use_dora=True)
    tiny.randomize(model)
    q = model.model.layers[0].self_attn.q_proj
    weights, _ = merged_state_dict(model)
    merged = weights["model.layers.0.self_attn.q_proj.weight"]
    assert merged.dtype == torch.bfloat16
    updated = q.weight.float() + q.scaling * q.lora_B.weight.float() @ q.lora_A.weight.float()
    expected = (q.lora_magnitude_vector.float() / updated.norm(dim=1)).view(-1, 1) * updated
    torch.testing.assert_close(merged, expected.to(torch.bfloat16), rtol=0, atol=0)
