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
