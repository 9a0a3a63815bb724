"""Our LoRA/DoRA/rsLoRA layers compute what Hugging Face PEFT computes with the same adapter values."""

from __future__ import annotations

import pytest
import torch

from tunelib.peft import apply_peft

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

ALL_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]

CASES = {
    "lora_qv": ({"lora_attn_modules": ["q_proj", "v_proj"]},
                {"target_modules": ["q_proj", "v_proj"]}),
    "rslora_attention_mlp": ({"lora_attn_modules": ALL_ATTENTION, "apply_lora_to_mlp": True, "use_rslora": True,
                              "lora_rank": 4, "lora_alpha": 8.0},
                             {"target_modules": [*ALL_ATTENTION, "gate_proj", "up_proj", "down_proj"],
                              "use_rslora": True, "r": 4, "lora_alpha": 8}),
    "dora_everything": ({"lora_attn_modules": ALL_ATTENTION, "apply_lora_to_mlp": True, "apply_lora_to_output": True,
                         "apply_lora_to_embeddings": True, "use_dora": True},
                        {"target_modules": [*ALL_ATTENTION, "gate_proj", "up_proj", "down_proj", "lm_head",
                                            "embed_tokens"], "use_dora": True}),
    "lora_output_embeddings": ({"apply_lora_to_output": True, "apply_lora_to_embeddings": True, "lora_alpha": 4.0},
                               {"target_modules": ["lm_head", "embed_tokens"], "lora_alpha": 4}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_equal_peft_with_the_same_adapter_values(tiny, tokens, case):
    ours, theirs = CASES[case]
    model = apply_peft(tiny.llama(), **ours)
    tiny.randomize(model)
    twin = tiny.twin(tiny.llama(), model, **theirs)
    base = tiny.llama()(tokens).logits
    logits = model(tokens).logits
    assert (logits - base).abs().max() > 1e-2  # the adapters matter
    torch.testing.assert_close(logits, twin(tokens).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_dora", [False, True])
def test_training_mode_with_dropout_equals_peft_and_gradients_agree(tiny, tokens, use_dora):
    model = apply_peft(tiny.llama(), lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_mlp=True,
                       lora_dropout=0.25, use_dora=use_dora)
    tiny.randomize(model)
    twin = tiny.twin(tiny.llama(), model, target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
                     lora_dropout=0.25, use_dora=use_dora)
    model.train()
    twin.train()
    torch.manual_seed(11)
    ours = model(tokens).logits
    torch.manual_seed(11)
    theirs = twin(tokens).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    ours.square().mean().backward()
    theirs.square().mean().backward()
    name = "model.layers.1.self_attn.v_proj"
    ours_grad = model.get_submodule(name).lora_A.weight.grad
    theirs_grad = twin.base_model.model.get_submodule(name).lora_A["default"].weight.grad
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-4, atol=1e-6)
    if use_dora:
        ours_grad = model.get_submodule(name).lora_magnitude_vector.grad
        theirs_grad = twin.base_model.model.get_submodule(name).lora_magnitude_vector["default"].weight.grad
        torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-4, atol=1e-6)
