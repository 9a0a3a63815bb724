"""Qwen3 mixture-of-experts models (30B-A3B, 235B-A22B) and `Qwen3MoeForCausalLM`.

Qwen3's attention (RMSNorm on each q and k head, head_dim 128) with a mixture-of-experts
MLP in every layer: 128 experts, 8 chosen per token, their probabilities renormalised to sum
to 1 (`norm_topk_prob`). Checkpoints store each expert apart
(`model.layers.N.mlp.experts.E.gate_proj.weight`, the router as `mlp.gate.weight`); we stack
them per layer (see tunelib.models.moe). Layers named in `mlp_only_layers` keep a dense MLP.
"""

from __future__ import annotations

from tunelib.models.build import add_builders
from tunelib.models.config import DecoderConfig
from tunelib.models.hf_format import HFFormat, read_common, write_common
from tunelib.models.moe import ExpertKeys, expert_key_mapping
from tunelib.models.qwen2 import read_sliding, write_sliding

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Qwen3-MoE",
    "architecture": "Qwen3MoeForCausalLM",
    "model_type": "qwen3_moe",
    "tokenizer": "qwen3_tokenizer",
    "chat_format": "qwen3",
    "tokenizer_file": "",
    "configs": {"30B-A3B": ("30b_a3b", "Qwen/Qwen3-30B-A3B"), "235B-A22B": ("235b_a22b", "Qwen/Qwen3-235B-A22B")},
    # DoRA, LLaMA-Adapter and QAT do not reach stacked experts (DoRA and QAT refuse them).
    "methods": ("full", "lora", "qlora", "lora_dpo", "full_dpo"),
}
ARCHITECTURE = FAMILY["architecture"]
# Qwen3MoeConfig's defaults, for keys a config.json leaves out.
DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu",
            "max_position_embeddings": 32768, "num_experts": 128, "num_experts_per_tok": 8,
            "moe_intermediate_size": 768, "norm_topk_prob": False, "decoder_sparse_step": 1,
            "router_aux_loss_coef": 0.001}


def read_experts(hf: dict, defaults: dict) -> dict:
    """The DecoderConfig keywords of a MoE config.json (transformers 5 may write num_local_experts)."""
    def get(key):
        return hf[key] if hf.get(key) is not None else defaults.get(key)

    return dict(num_experts=hf.get("num_experts") or hf.get("num_local_experts") or defaults.get("num_experts"),
                num_experts_per_tok=get("num_experts_per_tok"), moe_intermediate_size=get("moe_intermediate_size"),
                norm_topk_prob=bool(get("norm_topk_prob")), mlp_only_layers=tuple(hf.get("mlp_only_layers") or ()),
                decoder_sparse_step=get("decoder_sparse_step"), router_aux_loss_coef=float(get("router_aux_loss_coef")))


def read(hf: dict) -> DecoderConfig:
    """This architecture's config.json -> DecoderConfig (ValueError for values we cannot run)."""
    bias = bool(hf.get("attention_bias", False))
    return DecoderConfig(**read_common(hf, ARCHITECTURE, DEFAULTS), qk_norm=True, qkv_bias=bias, o_bias=bias,
                         **read_sliding(hf), **read_experts(hf, DEFAULTS))


def write(c: DecoderConfig) -> dict:
    """DecoderConfig -> config.json, for a folder saved without a source config."""
    return {**write_common(c, "qwen3_moe"), "attention_bias": c.qkv_bias, **write_sliding(c),
            "num_experts": c.num_experts, "num_experts_per_tok": c.num_experts_per_tok,
            "moe_intermediate_size": c.moe_intermediate_size, "norm_topk_prob": c.norm_topk_prob,
            "mlp_only_layers": list(c.mlp_only_layers), "decoder_sparse_step": c.decoder_sparse_step,
            "router_aux_loss_coef": c.router_aux_loss_coef}


EXPERT_KEYS = ExpertKeys()  # mlp.experts.E.{gate,up,down}_proj.weight
HF_FORMAT = HFFormat(ARCHITECTURE, "qwen3_moe", read, write, **expert_key_mapping(EXPERT_KEYS))


def _size(**numbers):
    return DecoderConfig(architecture=ARCHITECTURE, vocab_size=151936, head_dim=128, num_key_value_heads=4,
                         qk_norm=True, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=40960,
                         num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, router_aux_loss_coef=0.001,
                         **numbers)


SIZES = {
    "30b_a3b": _size(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
                     num_attention_heads=32),
    "235b_a22b": _size(hidden_size=4096, intermediate_size=12288, moe_intermediate_size=1536, num_hidden_layers=94,
                       num_attention_heads=64),
}
BUILDERS = add_builders(globals(), "qwen3_moe", FAMILY["title"], SIZES)
