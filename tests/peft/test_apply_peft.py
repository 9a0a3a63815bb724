"""apply_peft: which modules change, their parameter names, their math, and the errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunelib.errors import ConfigError
from tunelib.peft import (
    DoRALinear,
    LoRAEmbedding,
    LoRALinear,
    LoraSpec,
    adapter_state_dict,
    apply_peft,
    initialize_adapters,
    is_adapter_key,
    set_trainable,
)


def test_parameter_names_are_hf_base_names_plus_peft_adapter_names(tiny):
    model = apply_peft(tiny.llama(), lora_attn_modules=["q_proj", "output_proj"], apply_lora_to_mlp=True,
                       apply_lora_to_output=True, apply_lora_to_embeddings=True, use_dora=True, lora_rank=4)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    q = "model.layers.0.self_attn.q_proj"
    assert shapes[f"{q}.weight"] == (64, 64) and shapes[f"{q}.bias"] == (64,)
    assert shapes[f"{q}.lora_A.weight"] == (4, 64)
    assert shapes[f"{q}.lora_B.weight"] == (64, 4)
    assert shapes[f"{q}.lora_magnitude_vector"] == (64,)
    assert shapes["model.layers.1.self_attn.o_proj.lora_B.weight"] == (64, 4)  # output_proj alias
    assert shapes["model.layers.1.mlp.down_proj.lora_A.weight"] == (4, 128)
    assert shapes["lm_head.lora_B.weight"] == (96, 4)
    assert shapes["model.embed_tokens.lora_embedding_A"] == (4, 96)
    assert shapes["model.embed_tokens.lora_embedding_B"] == (64, 4)
    assert "model.layers.0.self_attn.k_proj.lora_A.weight" not in shapes
    # Every non-adapter key is exactly a key of the untouched Hugging Face model.
    assert {k for k in shapes if not is_adapter_key(k)} == set(tiny.llama().state_dict())


def test_lora_linear_computes_base_plus_scaled_low_rank_update():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    for use_rslora, scale in ((False, 12 / 4), (True, 12 / math.sqrt(4))):
        layer = LoRALinear.from_linear(base, LoraSpec(rank=4, alpha=12, use_rslora=use_rslora))
        layer.reset_adapter_parameters("cpu", torch.float32)
        nn.init.normal_(layer.lora_B.weight)
        x = torch.randn(3, 6)
        expected = x @ base.weight.T + base.bias + scale * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
        torch.testing.assert_close(layer(x), expected)


def test_dropout_applies_to_the_lora_input_only():
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    layer = LoRALinear.from_linear(base, LoraSpec(rank=2, alpha=2, dropout=0.5))
    layer.reset_adapter_parameters("cpu", torch.float32)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 8)
    torch.manual_seed(3)
    out = layer.train()(x)
    torch.manual_seed(3)
    dropped = F.dropout(x, 0.5, training=True)
    torch.testing.assert_close(out, base(x) + layer.lora_B(layer.lora_A(dropped)))
    torch.testing.assert_close(layer.eval()(x), base(x) + layer.lora_B(layer.lora_A(x)))


def test_embedding_lora_has_no_dropout_and_peft_init(tiny):
    model = apply_peft(tiny.llama(), apply_lora_to_embeddings=True, lora_dropout=0.3)
    emb = model.model.embed_tokens
    assert isinstance(emb, LoRAEmbedding)
    assert torch.count_nonzero(emb.lora_embedding_A) == 0
    assert 0.8 < emb.lora_embedding_B.std() < 1.2
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        emb.lora_embedding_A.normal_()
    emb.train()
    torch.testing.assert_close(emb(ids), emb(ids))  # no randomness in training mode


def test_tied_output_keeps_sharing_the_embedding_weight(tiny):
    model = apply_peft(tiny.llama(tie=True), apply_lora_to_output=True)
    assert isinstance(model.lm_head, LoRALinear)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.lora_A.weight" in adapter_state_dict(model)


@pytest.mark.parametrize("use_dora", [False, True])
def test_step_zero_equals_base_model_after_meta_build_and_load(tiny, tokens, use_dora):
    reference = tiny.llama()
    expected = reference(tokens).logits
    model = apply_peft(tiny.meta_llama(), lora_attn_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                       apply_lora_to_mlp=True, apply_lora_to_output=True, apply_lora_to_embeddings=True,
                       use_dora=use_dora)
    assert model.model.layers[0].self_attn.q_proj.lora_A.weight.is_meta
    tiny.load_base(model, reference)
    initialize_adapters(model, "cpu", torch.float32)
    model.eval()
    torch.testing.assert_close(model(tokens).logits, expected, rtol=0, atol=1e-5)
    if use_dora:
        q = model.model.layers[0].self_attn.q_proj
        base_q = reference.model.layers[0].self_attn.q_proj
        torch.testing.assert_close(q.lora_magnitude_vector, base_q.weight.norm(dim=1))


def test_initialize_adapters_is_deterministic_under_the_seed(tiny):
    def build(seed):
        model = apply_peft(tiny.meta_llama(), lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_embeddings=True)
        torch.manual_seed(seed)
        initialize_adapters(model, "cpu", torch.float32)
        return adapter_state_dict(model)

    first, again, other = build(5), build(5), build(6)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    a = first["model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert not torch.equal(a, other["model.layers.0.self_attn.q_proj.lora_A.weight"])
    assert a.abs().max() <= 1 / math.sqrt(64)  # kaiming-uniform(a=√5) bound is 1/√fan_in
    assert torch.count_nonzero(first["model.layers.0.self_attn.q_proj.lora_B.weight"]) == 0


def test_trainable_parameter_count_matches_the_formula(tiny):
    model = apply_peft(tiny.llama(), lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_mlp=True,
                       apply_lora_to_output=True, apply_lora_to_embeddings=True, use_dora=True, lora_rank=4)
    r, hidden, kv, inter, vocab, layers = 4, 64, 32, 128, 96, 2
    per_layer = (r * (hidden + hidden) + hidden  # q: A, B, magnitude
                 + r * (hidden + kv) + kv  # v
                 + 2 * (r * (hidden + inter) + inter)  # gate, up
                 + r * (inter + hidden) + hidden)  # down
    expected = layers * per_layer + r * (hidden + vocab) + vocab + r * (vocab + hidden) + hidden
    assert set_trainable(model) == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter_key(n) for n in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_is_adapter_key():
    assert is_adapter_key("model.layers.0.self_attn.q_proj.lora_A.weight")
    assert is_adapter_key("model.layers.0.mlp.up_proj.lora_magnitude_vector")
    assert is_adapter_key("model.embed_tokens.lora_embedding_B")
    assert not is_adapter_key("model.layers.0.self_attn.q_proj.weight")
    assert not is_adapter_key("model.flora_A.weight")


def test_bad_attention_module_name_suggests_the_right_one(tiny):
    with pytest.raises(ConfigError, match=r"unknown module 'q_prj' \(did you mean 'q_proj'\?\)"):
        apply_peft(tiny.llama(), lora_attn_modules=["q_prj"])
    with pytest.raises(ConfigError, match="must be a list"):
        apply_peft(tiny.llama(), lora_attn_modules="q_proj")


@pytest.mark.parametrize("settings, message", [
    ({"use_dora": True}, "use_dora=True needs LoRA targets"),
    ({"quantize_base": True}, "quantize_base=True needs LoRA targets"),
    ({"lora_attn_modules": ["q_proj"], "lora_rank": 0}, "lora_rank must be a positive integer"),
    ({"lora_attn_modules": ["q_proj"], "lora_dropout": 1.0}, r"lora_dropout must be a number in \[0, 1\)"),
])
def test_bad_settings_are_config_errors(tiny, settings, message):
    with pytest.raises(ConfigError, match=message):
        apply_peft(tiny.llama(), **settings)


def test_no_settings_leave_the_model_untouched(tiny):
    model = tiny.llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert apply_peft(model) is model
    assert model.state_dict().keys() == before.keys()


def test_a_module_that_is_not_plain_linear_is_refused(tiny):
    class ScaledEmbedding(nn.Embedding):
        def forward(self, x):
            return super().forward(x) * 2

    model = tiny.llama()
    model.model.embed_tokens = ScaledEmbedding(96, 64)
    with pytest.raises(ConfigError, match="cannot put a LoRA adapter on model.embed_tokens: it is a ScaledEmbedding"):
        apply_peft(model, apply_lora_to_embeddings=True)


def test_applying_twice_is_refused(tiny):
    model = apply_peft(tiny.llama(), lora_attn_modules=["q_proj"])
    with pytest.raises(ConfigError, match="already has a LoRA adapter"):
        apply_peft(model, lora_attn_modules=["q_proj"])


def test_dora_module_type(tiny):
    model = apply_peft(tiny.llama(), lora_attn_modules=["v_proj"], use_dora=True)
    assert isinstance(model.model.layers[1].self_attn.v_proj, DoRALinear)
