"""QLoRA: frozen NF4 base weights inside the decoder layers, full-precision adapters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunelib.errors import ConfigError
from tunelib.peft import (
    adapter_params,
    apply_peft,
    initialize_adapters,
    merged_state_dict,
    nf4_transform,
    set_trainable,
)
from tunelib.quantization import NF4Linear, dequantize, is_nf4

HIDDEN = 128  # torchao's NF4 needs weights of a multiple of 16384 elements

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _qlora(tiny, **settings):
    settings = {"lora_attn_modules": ["q_proj", "v_proj"], "quantize_base": True, **settings}
    return apply_peft(tiny.llama(HIDDEN), **settings)


def _dequantized_copy(tiny, model):
    """A plain model holding the NF4 model's dequantised weights and the same adapters."""
    plain = apply_peft(tiny.llama(HIDDEN), lora_attn_modules=["q_proj", "v_proj"])
    weights = {k: dequantize(v) for k, v in model.state_dict().items()}
    plain.load_state_dict(weights)
    return plain.eval()


def test_every_decoder_linear_is_nf4_and_embedding_and_output_are_not(tiny):
    model = _qlora(tiny, apply_lora_to_output=True)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and ".layers." in name and "lora_" not in name:
            assert is_nf4(module.weight), name
            assert not module.weight.requires_grad
    assert isinstance(model.model.layers[0].mlp.up_proj, NF4Linear)  # not adapted, still NF4
    assert not is_nf4(model.lm_head.weight) and not is_nf4(model.model.embed_tokens.weight)
    assert not is_nf4(model.model.layers[0].self_attn.q_proj.lora_A.weight)


def test_nf4_forward_equals_a_forward_with_the_dequantized_weights(tiny, tokens):
    model = _qlora(tiny)
    tiny.randomize(model)
    plain = _dequantized_copy(tiny, model)
    assert torch.equal(model(tokens).logits, plain(tokens).logits)
    # ...and quantization really changed the weights.
    assert (plain(tokens).logits - tiny.llama(HIDDEN)(tokens).logits).abs().max() > 0


@pytest.mark.parametrize("use_dora", [False, True])
def test_gradients_reach_only_adapter_parameters(tiny, tokens, use_dora):
    model = _qlora(tiny, apply_lora_to_mlp=True, use_dora=use_dora)
    tiny.randomize(model)
    set_trainable(model)
    model.train()
    model(tokens).logits.square().mean().backward()
    adapters = adapter_params(model)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters.values())
    others = [n for n, p in model.named_parameters() if n not in adapters]
    assert others and all(model.get_parameter(n).grad is None for n in others)


def test_dora_magnitude_starts_at_the_norm_of_the_dequantized_weight(tiny, tokens):
    model = _qlora(tiny, use_dora=True)
    q = model.model.layers[0].self_attn.q_proj
    torch.testing.assert_close(q.lora_magnitude_vector, dequantize(q.weight).norm(dim=1), rtol=0, atol=0)
    # Step 0 equals the NF4 base model.
    base = _dequantized_copy(tiny, _qlora(tiny))
    torch.testing.assert_close(model(tokens).logits, base(tokens).logits, rtol=1e-6, atol=1e-6)


def test_meta_build_with_the_loader_transform_equals_quantizing_loaded_weights(tiny, tokens):
    settings = {"lora_attn_modules": ["q_proj", "v_proj"], "quantize_base": True, "use_dora": True}
    direct = apply_peft(tiny.llama(HIDDEN), **settings)
    model = apply_peft(tiny.meta_llama(HIDDEN), **settings)
    transform = nf4_transform(model)
    assert transform("model.embed_tokens.weight", torch.ones(3)) is not None
    tiny.load_base(model, tiny.llama(HIDDEN), transform=transform)
    assert is_nf4(model.model.layers[1].mlp.down_proj.weight)
    torch.manual_seed(0)
    initialize_adapters(model, "cpu", torch.float32)
    with torch.no_grad():
        for name, p in direct.named_parameters():
            if "lora_" in name:
                p.copy_(model.get_parameter(name))
    assert torch.equal(model(tokens).logits, direct(tokens).logits)


def test_nf4_transform_is_none_without_quantized_modules(tiny):
    assert nf4_transform(apply_peft(tiny.llama(), lora_attn_modules=["q_proj"])) is None


def test_merged_state_dict_dequantizes(tiny, tokens):
    model = _qlora(tiny)
    tiny.randomize(model)
    weights, _ = merged_state_dict(model)
    assert not any(is_nf4(v) for v in weights.values())
    plain = tiny.llama(HIDDEN)
    plain.load_state_dict(weights)
    torch.testing.assert_close(plain(tokens).logits, model(tokens).logits, rtol=1e-5, atol=1e-5)


def test_a_weight_nf4_cannot_hold_is_named_with_its_shape(tiny):
    with pytest.raises(ConfigError, match=r"quantize_base: model.layers.0.self_attn.q_proj.weight has shape "
                                          r"\(64, 64\) \(4096 elements\).*multiple of 16384"):
        apply_peft(tiny.meta_llama(64), lora_attn_modules=["q_proj"], quantize_base=True)
