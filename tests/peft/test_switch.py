"""`adapters_disabled`: inside it a LoRA/DoRA model computes its base model's logits exactly (DPO's
reference); outside it the adapters are back."""

from __future__ import annotations

import pytest
import torch

from support.models import make_hf_model_folder
from tunelib.checkpoint import from_pretrained
from tunelib.errors import ConfigError
from tunelib.peft import adapters_disabled, apply_peft, initialize_adapters


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_hf_model_folder(tmp_path_factory.mktemp("m") / "llama3_2", "llama3_2")


def adapted(folder, **keywords):
    model = apply_peft(from_pretrained(folder, dtype=torch.float32), **keywords)
    initialize_adapters(model, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_A" in name or "magnitude" in name:
                p.add_(torch.randn_like(p) * 0.1)  # B (and A for embeddings) start at 0: make them count
    return model.eval()


@pytest.mark.parametrize("use_dora", [False, True])
def test_switched_off_adapters_give_the_base_logits(folder, use_dora):
    ids = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(0))
    base = from_pretrained(folder, dtype=torch.float32).eval()
    model = adapted(folder, lora_attn_modules=["q_proj", "v_proj", "o_proj"], apply_lora_to_mlp=True,
                    apply_lora_to_embeddings=not use_dora, use_dora=use_dora)
    with torch.no_grad():
        want, adapted_logits = base(ids), model(ids)
        with adapters_disabled(model):
            off = model(ids)
        back = model(ids)
    assert (adapted_logits - want).abs().max() > 1e-3
    torch.testing.assert_close(off, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(back, adapted_logits)


def test_a_llama_adapter_cannot_be_switched_off(folder):
    model = adapted(folder, adapter="v1", adapter_prompt_length=2, adapter_start_layer=0)
    with pytest.raises(ConfigError, match="LLaMA-Adapter"):
        with adapters_disabled(model):
            pass
