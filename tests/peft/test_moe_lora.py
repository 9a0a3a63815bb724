"""LoRA on mixture-of-experts models: per-expert adapters, PEFT folders PEFT loads, merge, QLoRA.

The reference is transformers' model of the same tiny folder (which stores experts fused in
memory, as transformers 5 does) with our adapter folder loaded by PEFT.
"""

from __future__ import annotations

import json

import pytest
import torch

from support.models import load_hf_model, make_hf_model_folder
from tunelib.checkpoint import from_pretrained, load_hf_weights, save_hf_folder
from tunelib.errors import ConfigError
from tunelib.models import from_hf_config
from tunelib.models.moe import router_aux_loss
from tunelib.peft import (
    apply_peft,
    initialize_adapters,
    is_adapter_key,
    load_peft_adapter,
    lora_modules,
    merged_state_dict,
    nf4_transform,
    save_peft_adapter,
    set_trainable,
)
from tunelib.peft.experts import LoRAGroupedLinear

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")



@pytest.fixture
def token_ids():
    """Two rows of 12 token ids of the tiny models' 128-token vocabulary."""
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def moe_folder(tmp_path_factory):
    """moe_folder(family) -> a tiny transformers folder whose every layer is MoE.

    (PEFT 0.21 maps gate_proj/up_proj/down_proj targets of a Qwen3-MoE onto its fused experts
    and drops them from the dense MLPs of `mlp_only_layers`, which no published size has.)
    """
    made = {}

    def get(family):
        if family not in made:
            extra = {"mlp_only_layers": []} if family == "qwen3_moe" else {}
            made[family] = make_hf_model_folder(tmp_path_factory.mktemp(family), family, **extra)
        return made[family]

    return get


EXPERT_KEYS = {"qwen3_moe": "mlp.experts.{e}.{p}", "mixtral": "block_sparse_moe.experts.{e}.{p}"}
PROJECTIONS = {"qwen3_moe": ("gate_proj", "up_proj", "down_proj"), "mixtral": ("w1", "w3", "w2")}


def lora_model(folder, **options):
    """Our model of `folder` with LoRA on q, v and every expert, adapters drawn at random."""
    model = from_pretrained(folder)
    apply_peft(model, lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_mlp=True, lora_rank=4, lora_alpha=8.0,
               **options)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_adapter_key(name):
                p.normal_(std=0.2)
    return model


def peft_logits(folder, adapter, token_ids):
    with torch.no_grad():
        return peft.PeftModel.from_pretrained(load_hf_model(folder), str(adapter)).eval()(token_ids).logits


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_adapter_folder_loads_in_peft_with_our_logits(family, moe_folder, token_ids, tmp_path):
    folder = moe_folder(family)
    model = lora_model(folder)
    experts = [name for name, m in lora_modules(model).items() if isinstance(m, LoRAGroupedLinear)]
    assert experts == [f"model.layers.{i}.mlp.experts.{p}" for i in (0, 1) for p in ("gate_proj", "up_proj", "down_proj")]
    assert not any("mlp.gate." in name for name, p in model.named_parameters() if is_adapter_key(name))
    with torch.no_grad():
        ours = model(token_ids)
    adapter = save_peft_adapter(model, tmp_path / "adapter")

    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(["q_proj", "v_proj", *PROJECTIONS[family]])
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        key = "base_model.model.model.layers.0." + EXPERT_KEYS[family].format(e=3, p=PROJECTIONS[family][2])
        assert f.get_tensor(key + ".lora_A.weight").shape == (4, model.config.moe_intermediate_size)
        assert f.get_tensor(key + ".lora_B.weight").shape == (64, 4)
    assert not any(".experts.gate_proj" in k or "mlp.gate." in k for k in keys)

    torch.testing.assert_close(peft_logits(folder, adapter, token_ids), ours, atol=1e-4, rtol=0)
    # And back: our loader stacks the per-expert adapters again.
    again = load_peft_adapter(from_pretrained(folder), adapter)
    with torch.no_grad():
        torch.testing.assert_close(again(token_ids), ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_merged_folder_loads_in_transformers_with_our_logits(family, moe_folder, token_ids, tmp_path):
    folder = moe_folder(family)
    model = lora_model(folder)
    with torch.no_grad():
        ours = model(token_ids)
    weights, updates = merged_state_dict(model)
    out = save_hf_folder(weights, tmp_path / "merged", source_dir=folder, config_updates=updates)
    with torch.no_grad():
        torch.testing.assert_close(load_hf_model(out)(token_ids).logits, ours, atol=1e-4, rtol=0)


def test_router_stays_frozen_and_every_expert_adapter_learns(moe_folder, token_ids):
    model = lora_model(moe_folder("mixtral"))
    set_trainable(model)
    logits = model(token_ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), token_ids[:, 1:].flatten())
    (loss + 0.02 * router_aux_loss(model)).backward()
    for name, p in model.named_parameters():
        if "mlp.gate." in name:
            assert not p.requires_grad and p.grad is None, name
        if is_adapter_key(name) and "experts" in name:
            assert p.requires_grad and (p.grad.flatten(1).abs().sum(1) > 0).all(), name  # each expert's slice


def test_expert_adapters_start_as_peft_starts_them(moe_folder):
    model = from_pretrained(moe_folder("mixtral"))
    apply_peft(model, apply_lora_to_mlp=True, lora_rank=4)
    module = model.get_submodule("model.layers.0.mlp.experts.down_proj")
    assert module.lora_B.weight.abs().sum() == 0  # starts as the base model
    bound = 1 / module.in_features ** 0.5  # kaiming-uniform(a=√5) over one expert's fan-in, as nn.Linear's
    assert 0.8 * bound < module.lora_A.weight.abs().max() <= bound


def test_dora_on_experts_is_refused_in_one_line(moe_folder):
    with pytest.raises(ConfigError, match="DoRA on mixture-of-experts"):
        apply_peft(from_pretrained(moe_folder("mixtral")), apply_lora_to_mlp=True, use_dora=True)


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_qlora_quantizes_experts_and_keeps_the_router(family, tmp_path, token_ids):
    # hidden 128 and experts of 128: every weight fits NF4's 16384-element blocks.
    sizes = dict(hidden_size=128, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4, head_dim=32)
    if family == "qwen3_moe":
        sizes["moe_intermediate_size"] = 128
    folder = make_hf_model_folder(tmp_path / family, family, **sizes)
    model = from_hf_config(folder, lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_mlp=True,
                           quantize_base=True, lora_rank=4)
    apply_peft(model)
    load_hf_weights(model, folder, dtype=torch.float32, transform=nf4_transform(model), ignore_missing=is_adapter_key)
    initialize_adapters(model, "cpu", torch.float32)
    set_trainable(model)
    experts = model.get_submodule("model.layers.0.mlp.experts.gate_proj")
    assert type(experts.weight).__name__ == "NF4Tensor" and not experts.weight.requires_grad
    assert type(model.get_submodule("model.layers.0.mlp.gate").weight).__name__ != "NF4Tensor"
    logits = model(token_ids[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), token_ids[:, 1:].flatten()).backward()
    assert experts.lora_B.weight.grad.abs().sum() > 0  # (A gets none while B starts at zero)
    # Merged: the dequantized experts plus adapters, one tensor per expert as the hub stores them;
    # transformers computes with them what our NF4 forward computes.
    weights, _ = merged_state_dict(model)
    out = save_hf_folder(weights, tmp_path / "merged", source_dir=folder)
    with torch.no_grad():
        torch.testing.assert_close(load_hf_model(out)(token_ids).logits, model(token_ids), atol=1e-4, rtol=0)
