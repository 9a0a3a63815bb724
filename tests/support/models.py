"""Tiny random Hugging Face model folders, one per tunelib family, made with transformers.

    folder = make_hf_model_folder(tmp_path / "llama", "llama3_1")          # 2 layers, hidden 64
    folder = make_hf_model_folder(tmp_path / "q", "qwen2", vocab_size=300)  # any config override

Each family's numbers keep what makes the family different (biases, tied embeddings, q/k
norms, head_dim != hidden/heads, RoPE scaling, sliding windows shorter than the test
sequences, soft-caps small enough to bend the scores), so a test on this model fails when
that feature breaks. Weights are random from a fixed seed; norm weights and biases get noise
too, so a wrong norm offset or a dropped bias changes the logits.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1, bos_token_id=1, eos_token_id=2)


def _llama3_rope(factor: float) -> dict:
    # Context 64 with head_dim 16 and base 5e5 puts one frequency in each regime of the
    # scaling (kept, blended, slowed), so all three branches are exercised.
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}


# family -> (transformers config class, config numbers on top of TINY)
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama2": ("LlamaConfig", dict(num_key_value_heads=4, rms_norm_eps=1e-5)),
    "llama3": ("LlamaConfig", dict(rope_theta=500000.0, rms_norm_eps=1e-5)),
    "llama3_1": ("LlamaConfig", dict(rope_theta=500000.0, rope_scaling=_llama3_rope(8.0))),
    "llama3_2": ("LlamaConfig", dict(rope_theta=500000.0, rope_scaling=_llama3_rope(32.0), head_dim=32,
                                     tie_word_embeddings=True)),
    "llama3_3": ("LlamaConfig", dict(rope_theta=500000.0, rope_scaling=_llama3_rope(8.0))),
    "qwen2": ("Qwen2Config", dict(rope_theta=1e6, tie_word_embeddings=True)),
    "qwen2_5": ("Qwen2Config", dict(rope_theta=1e6, use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    "qwen3": ("Qwen3Config", dict(rope_theta=1e6, head_dim=32, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(sliding_window=4)),
    "gemma": ("GemmaConfig", dict(head_dim=32, num_key_value_heads=1)),
    "gemma2": ("Gemma2Config", dict(head_dim=32, sliding_window=4, query_pre_attn_scalar=24,
                                    attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    # Both layer types (a window of 4 on the first, global on the second), each with its own RoPE
    # base, linear scaling on the global one (4B and up), a final soft-cap, q/k norms.
    "gemma3": ("Gemma3TextConfig", dict(head_dim=32, sliding_window=4, query_pre_attn_scalar=24,
                                        layer_types=["sliding_attention", "full_attention"],
                                        rope_theta=50000.0, rope_local_base_freq=500.0,
                                        rope_scaling={"rope_type": "linear", "factor": 8.0},
                                        final_logit_softcapping=3.0)),
    "phi3": ("Phi3Config", dict(num_key_value_heads=4, sliding_window=6, pad_token_id=0)),
    "phi4": ("Phi3Config", dict(rope_theta=250000.0, pad_token_id=0)),
    # Layer 1 of the Qwen3-MoE keeps a dense MLP; its top-k probabilities are used as they are.
    "qwen3_moe": ("Qwen3MoeConfig", dict(rope_theta=1e6, head_dim=32, num_experts=4, num_experts_per_tok=2,
                                         moe_intermediate_size=32, norm_topk_prob=False, mlp_only_layers=[1])),
    "mixtral": ("MixtralConfig", dict(sliding_window=4, num_local_experts=4, num_experts_per_tok=2)),
}


def hf_config(family: str, **overrides):
    """The transformers config of `family`'s tiny model."""
    import transformers

    cls, numbers = FAMILIES[family]
    return getattr(transformers, cls)(**{**TINY, **numbers, **overrides})


def make_hf_model(family: str, *, seed: int = 0, **overrides):
    """A tiny random transformers model of `family` (fp32, eval mode)."""
    import transformers

    config = hf_config(family, **overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norm weights and biases start constant; make them matter
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def make_hf_model_folder(path: str | Path, family: str, *, seed: int = 0, **config_overrides) -> Path:
    """Save a tiny random `family` model as an HF folder at `path` (config + safetensors) and return it."""
    path = Path(path)
    make_hf_model(family, seed=seed, **config_overrides).save_pretrained(path)
    return path


def load_hf_model(folder: str | Path):
    """transformers' model from `folder`, asserting it found every weight and no extra one."""
    import transformers

    model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    assert not problems, f"transformers loading {folder}: {problems}"
    return model.eval()
