"""Separate q/k/v (or gate/up) LoRAs map exactly onto one LoRA on the fused projection, and back."""

from __future__ import annotations

import math

import pytest
import torch

from tunelib.peft import LoraWeights, fuse_adapter_state_dict, fuse_lora, split_adapter_state_dict, split_fused_lora

IN, SIZES = 16, (16, 8, 8)  # q, k, v rows of a grouped-query attention


def _part(out: int, rank: int, alpha: float, seed: int, dora: bool = False) -> LoraWeights:
    gen = torch.Generator().manual_seed(seed)
    magnitude = torch.rand(out, generator=gen) + 1 if dora else None
    return LoraWeights(torch.randn(rank, IN, generator=gen), torch.randn(out, rank, generator=gen), alpha, magnitude)


def _delta(w: LoraWeights, use_rslora: bool) -> torch.Tensor:
    return w.scaling(use_rslora) * w.B @ w.A


def _dora_weight(base: torch.Tensor, w: LoraWeights, use_rslora: bool) -> torch.Tensor:
    updated = base + _delta(w, use_rslora)
    return (w.magnitude / updated.norm(dim=1)).view(-1, 1) * updated


@pytest.mark.parametrize("use_rslora", [False, True])
def test_fused_lora_has_the_same_delta_rows_even_with_different_ranks_and_alphas(use_rslora):
    parts = [_part(16, 4, 8.0, 0), _part(8, 2, 16.0, 1), _part(8, 4, 4.0, 2)]
    fused = fuse_lora(parts, use_rslora=use_rslora)
    assert fused.rank == 10 and fused.A.shape == (10, IN) and fused.B.shape == (32, 10)
    expected = torch.cat([_delta(p, use_rslora) for p in parts])
    torch.testing.assert_close(_delta(fused, use_rslora), expected)
    first_scale = 8.0 / (math.sqrt(4) if use_rslora else 4)
    assert fused.scaling(use_rslora) == pytest.approx(first_scale)


def test_dora_magnitudes_concatenate():
    parts = [_part(size, 4, 8.0, seed, dora=True) for seed, size in enumerate(SIZES)]
    base = torch.randn(sum(SIZES), IN)
    fused = fuse_lora(parts)
    expected = torch.cat([_dora_weight(b, p, False) for b, p in zip(base.split(SIZES), parts)])
    torch.testing.assert_close(_dora_weight(base, fused, False), expected)


def test_split_gives_back_the_parts_deltas():
    parts = [_part(size, 4, 8.0, seed) for seed, size in enumerate(SIZES)]
    fused = fuse_lora(parts)
    for part, back in zip(parts, split_fused_lora(fused, SIZES)):
        assert back.rank == 12
        torch.testing.assert_close(_delta(back, False), _delta(part, False))
    with pytest.raises(ValueError, match="add up to 30, not the fused size 32"):
        split_fused_lora(fused, (16, 8, 6))


def test_state_dict_round_trip_with_peft_prefixes():
    prefix = "base_model.model.model.layers.0.self_attn"
    state = {}
    for seed, (name, size) in enumerate(zip(("q_proj", "k_proj", "v_proj"), SIZES)):
        part = _part(size, 4, 8.0, seed)
        state[f"{prefix}.{name}.lora_A.weight"], state[f"{prefix}.{name}.lora_B.weight"] = part.A, part.B
    state["base_model.model.lm_head.lora_A.weight"] = torch.ones(4, IN)
    fused, rank_pattern, alpha_pattern = fuse_adapter_state_dict(
        state, parts=("q_proj", "k_proj", "v_proj"), fused="qkv_proj", alpha=8.0)
    assert set(fused) == {f"{prefix}.qkv_proj.lora_A.weight", f"{prefix}.qkv_proj.lora_B.weight",
                          "base_model.model.lm_head.lora_A.weight"}
    assert rank_pattern == {"model.layers.0.self_attn.qkv_proj": 12}
    assert alpha_pattern == {"model.layers.0.self_attn.qkv_proj": 24.0}
    back = split_adapter_state_dict(fused, fused="qkv_proj", parts=("q_proj", "k_proj", "v_proj"),
                                    sizes=SIZES, alpha=alpha_pattern["model.layers.0.self_attn.qkv_proj"])
    for name in ("q_proj", "k_proj", "v_proj"):
        original = LoraWeights(state[f"{prefix}.{name}.lora_A.weight"], state[f"{prefix}.{name}.lora_B.weight"], 8.0)
        again = LoraWeights(back[f"{prefix}.{name}.lora_A.weight"], back[f"{prefix}.{name}.lora_B.weight"], 24.0)
        torch.testing.assert_close(_delta(again, False), _delta(original, False))


# ------------------------------------------- Phi-3: our separate q/k/v against PEFT's qkv_proj


def _phi3_and_split_llama():
    """A tiny Phi-3 and the same network as a Llama with q/k/v and gate/up kept apart."""
    import transformers

    sizes = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    phi3 = transformers.Phi3ForCausalLM(transformers.Phi3Config(**sizes, pad_token_id=0, bos_token_id=1,
                                                                eos_token_id=2)).eval()
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes, rms_norm_eps=phi3.config.rms_norm_eps))
    weights = {}
    for key, value in phi3.state_dict().items():
        if ".qkv_proj." in key:
            for part, rows in zip(("q_proj", "k_proj", "v_proj"), value.split([64, 32, 32])):
                weights[key.replace("qkv_proj", part)] = rows
        elif ".gate_up_proj." in key:
            for part, rows in zip(("gate_proj", "up_proj"), value.chunk(2)):
                weights[key.replace("gate_up_proj", part)] = rows
        else:
            weights[key] = value
    llama.load_state_dict(weights)
    return phi3, llama.eval()


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("use_dora", [False, True])
def test_separate_adapters_save_as_a_fused_peft_adapter_for_phi3(tiny, tokens, tmp_path, use_dora):
    import peft

    from tunelib.peft import PHI3_FUSED_PROJECTIONS, LoraSpec, add_adapters, apply_peft, save_peft_adapter

    phi3, llama = _phi3_and_split_llama()
    # q and v but not k, one gate but no up: the absent parts join with rank 0.
    model = apply_peft(llama, lora_attn_modules=["q_proj", "v_proj", "o_proj"], use_dora=use_dora, lora_rank=4,
                       lora_alpha=8.0)
    add_adapters(model, {"model.layers.1.mlp.gate_proj": LoraSpec(2, 8.0, use_dora=use_dora)})
    tiny.randomize(model)
    save_peft_adapter(model, tmp_path, fused_projections=PHI3_FUSED_PROJECTIONS)
    with_peft = peft.PeftModel.from_pretrained(phi3, tmp_path).eval()
    layers = with_peft.base_model.model.model.layers
    assert layers[0].self_attn.qkv_proj.r["default"] == 8 and layers[1].mlp.gate_up_proj.r["default"] == 2
    torch.testing.assert_close(with_peft(tokens).logits, model(tokens).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("use_dora", [False, True])
def test_a_fused_phi3_peft_adapter_loads_onto_separate_projections(tiny, tokens, tmp_path, use_dora):
    import peft

    from tunelib.peft import PHI3_FUSED_PROJECTIONS, load_peft_adapter

    phi3, llama = _phi3_and_split_llama()
    config = peft.LoraConfig(task_type="CAUSAL_LM", target_modules=["qkv_proj", "gate_up_proj", "o_proj"], r=4,
                             lora_alpha=8, use_dora=use_dora)
    theirs = peft.get_peft_model(phi3, config).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape) * 0.1 + ("magnitude" in name))
    theirs.save_pretrained(tmp_path)
    model = load_peft_adapter(llama, tmp_path, fused_projections=PHI3_FUSED_PROJECTIONS)
    assert model.model.layers[0].mlp.up_proj.lora_A.weight.shape == (4, 64)
    torch.testing.assert_close(model(tokens).logits, theirs(tokens).logits, rtol=1e-5, atol=1e-5)
